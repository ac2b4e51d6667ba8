package sysslot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGrubEnvBlock(t *testing.T) {
	b, err := GrubEnvBlock(map[string]string{"ballast_trial": "b-2", "ballast_left": "xx"})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 1024 || !strings.HasPrefix(string(b), "# GRUB Environment Block\n") {
		t.Fatalf("block of %d bytes starting %.30q: GRUB needs 1024 bytes after its signature line", len(b), b)
	}
	if v := ParseGrubEnv(b); len(v) != 2 || v["ballast_trial"] != "b-2" || v["ballast_left"] != "xx" {
		t.Errorf("parsed back %v", v)
	}
	if _, err := GrubEnvBlock(map[string]string{"x": strings.Repeat("y", 1024)}); err == nil {
		t.Error("a block over 1024 bytes was rendered")
	}
}

// grubNode is testNode with the BIOS boot path on its ESP and slot b on
// trial (3 tries), as an upgrade leaves it.
func grubNode(t *testing.T) *Manager {
	t.Helper()
	m := testNode(t, "a")
	if err := os.MkdirAll(filepath.Join(m.ESP, GrubDir), 0o755); err != nil {
		t.Fatal(err)
	}
	env, _ := GrubEnvBlock(nil)
	if err := os.WriteFile(filepath.Join(m.ESP, GrubEnv), env, 0o644); err != nil {
		t.Fatal(err)
	}
	e := NewEntry("b", "ballast t (slot b)", 2, []string{"console=ttyS0"})
	e.Counting, e.TriesLeft = true, DefaultTries
	if err := writeEntry(m.ESP, e); err != nil {
		t.Fatal(err)
	}
	if err := writeGrubConfig(m.ESP); err != nil {
		t.Fatal(err)
	}
	return m
}

func readGrubCfg(t *testing.T, m *Manager) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(m.ESP, GrubCfg))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// spendGrubTries writes the environment block GRUB leaves after booting
// the trial entry with left tries remaining.
func spendGrubTries(t *testing.T, m *Manager, trial string, left int) {
	t.Helper()
	env, err := GrubEnvBlock(map[string]string{"ballast_trial": trial, "ballast_left": strings.Repeat("x", left)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.ESP, GrubEnv), env, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGrubConfigFollowsTheEntries: grub.cfg boots what systemd-boot would
// (the slot on trial, spending a try, else the good one), and the tries
// GRUB spent end up in the entry's name, down to a bad slot.
func TestGrubConfigFollowsTheEntries(t *testing.T) {
	m := grubNode(t)
	cfg := readGrubCfg(t, m)
	for _, want := range []string{
		"set default=ballast-b\n",
		`if [ "$ballast_trial" != b-2 ]; then` + "\n  set ballast_trial=b-2\n  set ballast_left=xxx\n",
		"if regexp --set=1:ballast_left '^x(x*)$' \"$ballast_left\"; then\n  save_env --file $prefix/grubenv ballast_trial ballast_left\nelse\n  set default=ballast-a\nfi\n",
		"menuentry 'ballast t (slot b)' --id ballast-b {\n  linux /ballast/b/vmlinuz console=ttyS0 ballast.slot=b\n  initrd /ballast/b/initramfs.img\n}\n",
		"menuentry 'ballast t (slot a)' --id ballast-a {\n",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("grub.cfg lacks\n%s\n--- grub.cfg:\n%s", want, cfg)
		}
	}
	if strings.Index(cfg, "--id ballast-b") > strings.Index(cfg, "--id ballast-a") {
		t.Error("the slot on trial is not the first menu entry")
	}

	// One BIOS boot of b that did not come up healthy: one try spent.
	spendGrubTries(t, m, "b-2", 2)
	if changed, err := m.ReconcileGrub(); err != nil || !changed {
		t.Fatalf("ReconcileGrub = %v, %v; want a change", changed, err)
	}
	entries, err := ReadEntries(m.ESP)
	if err != nil {
		t.Fatal(err)
	}
	if e := entries["b"]; e.File != "ballast-b+2-1.conf" {
		t.Errorf("after one try the entry is %s, want ballast-b+2-1.conf", e.File)
	}
	if cfg := readGrubCfg(t, m); !strings.Contains(cfg, "set ballast_left=xx\n") {
		t.Errorf("grub.cfg does not start from the 2 tries left:\n%s", cfg)
	}
	if changed, err := m.ReconcileGrub(); err != nil || changed {
		t.Errorf("a second ReconcileGrub = %v, %v; want no change", changed, err)
	}

	// Tries used up (GRUB then booted a): b is bad, a is the default.
	spendGrubTries(t, m, "b-2", 0)
	if _, err := m.ReconcileGrub(); err != nil {
		t.Fatal(err)
	}
	entries, _ = ReadEntries(m.ESP)
	if e := entries["b"]; !e.Bad() || e.File != "ballast-b+0-3.conf" {
		t.Errorf("after all tries the entry is %s (%s), want ballast-b+0-3.conf, bad", e.File, e.State())
	}
	cfg = readGrubCfg(t, m)
	if !strings.Contains(cfg, "set default=ballast-a\n") || strings.Contains(cfg, "save_env") {
		t.Errorf("with b bad grub.cfg must boot a without counting:\n%s", cfg)
	}
}

// TestGrubConfigAfterBlessAndRollback: the manager's changes reach grub.cfg.
func TestGrubConfigAfterBlessAndRollback(t *testing.T) {
	m := grubNode(t)
	m.Running = "b"
	if _, err := m.Bless(); err != nil {
		t.Fatal(err)
	}
	cfg := readGrubCfg(t, m)
	if !strings.Contains(cfg, "set default=ballast-b\n") || strings.Contains(cfg, "save_env") {
		t.Errorf("after blessing b grub.cfg must boot b without counting:\n%s", cfg)
	}
	if _, err := m.Rollback(); err != nil {
		t.Fatal(err)
	}
	if cfg := readGrubCfg(t, m); !strings.Contains(cfg, "set default=ballast-a\n") {
		t.Errorf("after a rollback to a grub.cfg must boot a:\n%s", cfg)
	}
}

// TestGrubLeftAloneWithoutBIOSPath: an ESP from before the BIOS path (no
// grub directory) gets no grub.cfg.
func TestGrubLeftAloneWithoutBIOSPath(t *testing.T) {
	m := testNode(t, "a")
	if changed, err := m.ReconcileGrub(); err != nil || changed {
		t.Errorf("ReconcileGrub = %v, %v", changed, err)
	}
	if _, err := m.Rollback(); err == nil {
		t.Error("rollback without a slot b succeeded")
	}
	if _, err := os.Stat(filepath.Join(m.ESP, GrubDir)); !os.IsNotExist(err) {
		t.Errorf("a grub directory appeared: %v", err)
	}
}

// TestGrubNewTrialAfterAFailedOne: the next upgrade of a slot that failed
// its tries under GRUB is a new trial (a higher version, the counter
// cleared), not the old one with no tries left.
func TestGrubNewTrialAfterAFailedOne(t *testing.T) {
	m := grubNode(t)
	spendGrubTries(t, m, "b-2", 0)
	if _, err := m.ReconcileGrub(); err != nil {
		t.Fatal(err)
	}
	tar, sum := upgradeTar(t, upgradeFiles{kernel: []byte("k2"), initrd: []byte("i2"), system: []byte("s2")}, nil)
	if _, err := m.Upgrade(context.Background(), bytes.NewReader(tar), sum); err != nil {
		t.Fatal(err)
	}
	if changed, err := m.ReconcileGrub(); err != nil || changed {
		t.Fatalf("ReconcileGrub after the upgrade = %v, %v: the new trial was counted as the old one", changed, err)
	}
	entries, _ := ReadEntries(m.ESP)
	if e := entries["b"]; e.File != "ballast-b+3.conf" || e.Version <= 2 {
		t.Errorf("new trial entry %s version %d, want ballast-b+3.conf above version 2", e.File, e.Version)
	}
	env, _ := os.ReadFile(filepath.Join(m.ESP, GrubEnv))
	if v := ParseGrubEnv(env); len(env) != 1024 || len(v) != 0 {
		t.Errorf("grubenv after the upgrade: %d bytes, %v; want an empty 1024-byte block", len(env), v)
	}
	if cfg := readGrubCfg(t, m); !strings.Contains(cfg, "set ballast_left=xxx\n") || !strings.Contains(cfg, "set default=ballast-b\n") {
		t.Errorf("grub.cfg does not start the new trial:\n%s", cfg)
	}
}
