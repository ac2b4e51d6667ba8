package sysslot

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEntryNamesRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name       string
		counting   bool
		left, done int
		state      string
	}{
		{"ballast-a.conf", false, 0, 0, "good"},
		{"ballast-b+3.conf", true, 3, 0, "trying"},
		{"ballast-b+2-1.conf", true, 2, 1, "trying"},
		{"ballast-b+0-3.conf", true, 0, 3, "bad"},
	} {
		e, err := ParseEntry(tc.name, []byte("title x\nversion 7\nlinux /ballast/b/vmlinuz\noptions a=b ballast.slot=b\n"))
		if err != nil {
			t.Fatal(err)
		}
		if e.Counting != tc.counting || e.TriesLeft != tc.left || e.TriesDone != tc.done || e.State() != tc.state || e.Version != 7 {
			t.Errorf("%s parsed as %+v (state %s)", tc.name, e, e.State())
		}
		if e.FileName() != tc.name {
			t.Errorf("%s renders back as %s", tc.name, e.FileName())
		}
	}
	for _, bad := range []string{"ballast-c.conf", "ballast-a+x.conf", "other.conf", "ballast-a+1-.conf"} {
		if _, err := ParseEntry(bad, nil); err == nil {
			t.Errorf("ParseEntry(%q) accepted a name that is not a ballast entry", bad)
		}
	}
	if _, err := ParseEntry("ballast-a.conf", []byte("version soon\n")); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("a non-numeric version: err = %v", err)
	}
}

func TestBootOrderPutsBadEntriesLast(t *testing.T) {
	good := Entry{Slot: "a", Version: 1}
	trying := Entry{Slot: "b", Version: 2, Counting: true, TriesLeft: 2, TriesDone: 1}
	if o := BootOrder(map[string]Entry{"a": good, "b": trying}); o[0].Slot != "b" {
		t.Errorf("newer slot on trial is not first: %v", o)
	}
	trying.TriesLeft, trying.TriesDone = 0, 3
	if o := BootOrder(map[string]Entry{"a": good, "b": trying}); o[0].Slot != "a" {
		t.Errorf("slot without tries left is still first: %v", o)
	}
}

// testNode is an ESP directory with slot A's entry and two system
// "partitions" as files.
func testNode(t *testing.T, running string) *Manager {
	t.Helper()
	dir := t.TempDir()
	esp := filepath.Join(dir, "esp")
	m := &Manager{ESP: esp, Running: running, Spool: filepath.Join(dir, "spool"), Systems: map[string]string{}}
	for _, s := range []string{"a", "b"} {
		p := filepath.Join(dir, "system-"+s)
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		m.Systems[s] = p
	}
	if err := writeEntry(esp, NewEntry("a", "ballast t (slot a)", 1, []string{"console=ttyS0"})); err != nil {
		t.Fatal(err)
	}
	return m
}

type upgradeFiles struct{ kernel, initrd, system []byte }

func upgradeTar(t *testing.T, f upgradeFiles, mutate func(*UpgradeInfo)) ([]byte, string) {
	t.Helper()
	info := UpgradeInfo{Format: UpgradeFormat, Recipe: "t", Title: "ballast t", Cmdline: []string{"console=ttyS0", "quiet"}}
	contents := [][]byte{f.kernel, f.initrd, f.system}
	for i, n := range []string{UpgradeKernel, UpgradeInitrd, UpgradeSystem} {
		sum := sha256.Sum256(contents[i])
		info.Files = append(info.Files, UpgradeFile{Name: n, Size: int64(len(contents[i])), SHA256: hex.EncodeToString(sum[:])})
	}
	if mutate != nil {
		mutate(&info)
	}
	manifest, _ := json.Marshal(info)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Size: int64(len(data)), Mode: 0o644, ModTime: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	add(UpgradeManifest, manifest)
	for i, f := range info.Files {
		add(f.Name, contents[i])
	}
	tw.Close()
	sum := sha256.Sum256(buf.Bytes())
	return buf.Bytes(), hex.EncodeToString(sum[:])
}

func TestUpgradeBlessRollback(t *testing.T) {
	m := testNode(t, "a")
	files := upgradeFiles{kernel: []byte("kernel-2"), initrd: []byte("initrd-2"), system: bytes.Repeat([]byte("sqfs"), 1000)}
	img, sum := upgradeTar(t, files, nil)

	if _, err := m.Rollback(); !errors.Is(err, ErrNoRollback) || !strings.Contains(err.Error(), "slot b is empty") {
		t.Fatalf("rollback with an empty slot b: %v", err)
	}
	slot, err := m.Upgrade(context.Background(), bytes.NewReader(img), sum)
	if err != nil || slot != "b" {
		t.Fatalf("Upgrade = %q, %v", slot, err)
	}
	entries, err := ReadEntries(m.ESP)
	if err != nil {
		t.Fatal(err)
	}
	b := entries["b"]
	if b.File != "ballast-b+3.conf" || b.Version != 2 || b.Options != "console=ttyS0 quiet ballast.slot=b" || b.Linux != "/ballast/b/vmlinuz" {
		t.Errorf("slot b entry: %+v", b)
	}
	if got, _ := os.ReadFile(filepath.Join(m.ESP, KernelPath("b"))); string(got) != "kernel-2" {
		t.Errorf("slot b kernel = %q", got)
	}
	part, _ := os.ReadFile(m.Systems["b"])
	if !bytes.HasPrefix(part, files.system) {
		t.Error("SYSTEM-B does not start with the new system image")
	}
	if st := m.Status(); st.Default != "b" || st.Slots[1].State != "trying" || st.Slots[1].TriesLeft != 3 {
		t.Errorf("status after upgrade: %+v", st)
	}
	// Slot b is not good yet: no rollback to it from a (it is not the other good slot).
	if _, err := m.Rollback(); !errors.Is(err, ErrNoRollback) {
		t.Errorf("rollback to a slot on trial: %v", err)
	}

	// systemd-boot tried b once; the agent there blesses it.
	if err := os.Rename(filepath.Join(m.ESP, EntriesDir, "ballast-b+3.conf"), filepath.Join(m.ESP, EntriesDir, "ballast-b+2-1.conf")); err != nil {
		t.Fatal(err)
	}
	onB := &Manager{ESP: m.ESP, Running: "b", Systems: m.Systems}
	if _, err := onB.Upgrade(context.Background(), bytes.NewReader(img), sum); err == nil || !strings.Contains(err.Error(), "still on trial") {
		t.Fatalf("upgrade from a slot on trial: %v", err)
	}
	if ok, err := onB.Bless(); !ok || err != nil {
		t.Fatalf("Bless = %v, %v", ok, err)
	}
	if ok, err := onB.Bless(); ok || err != nil {
		t.Errorf("second Bless = %v, %v; want nothing to do", ok, err)
	}
	if _, err := os.Stat(filepath.Join(m.ESP, EntriesDir, "ballast-b.conf")); err != nil {
		t.Fatal(err)
	}
	// Back to a, which is good.
	to, err := onB.Rollback()
	if err != nil || to != "a" {
		t.Fatalf("Rollback = %q, %v", to, err)
	}
	if st := onB.Status(); st.Default != "a" {
		t.Errorf("default after rollback = %q, want a", st.Default)
	}
}

func TestUpgradeRefusesBadImages(t *testing.T) {
	files := upgradeFiles{kernel: []byte("k"), initrd: []byte("i"), system: []byte("s")}
	for _, tc := range []struct {
		name   string
		mutate func(*UpgradeInfo)
		sum    func(string) string
		want   string
	}{
		{"wrong request sum", nil, func(string) string { return strings.Repeat("0", 64) }, "the request said"},
		{"file does not match manifest", func(u *UpgradeInfo) { u.Files[1].SHA256 = strings.Repeat("1", 64) }, nil, "initramfs.img sha256"},
		{"format", func(u *UpgradeInfo) { u.Format = "v0" }, nil, `format "v0"`},
		{"slot on cmdline", func(u *UpgradeInfo) { u.Cmdline = append(u.Cmdline, "ballast.slot=a") }, nil, "ballast.slot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testNode(t, "a")
			img, sum := upgradeTar(t, files, tc.mutate)
			if tc.sum != nil {
				sum = tc.sum(sum)
			}
			_, err := m.Upgrade(context.Background(), bytes.NewReader(img), sum)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Upgrade error = %v, want it to mention %q", err, tc.want)
			}
			entries, _ := ReadEntries(m.ESP)
			if _, ok := entries["b"]; ok {
				t.Error("a refused upgrade left a boot entry for slot b")
			}
			if _, ok := entries["a"]; !ok {
				t.Error("a refused upgrade removed the running slot's entry")
			}
		})
	}
	m := testNode(t, "a")
	big := upgradeFiles{kernel: []byte("k"), initrd: []byte("i"), system: make([]byte, 2<<20)}
	img, sum := upgradeTar(t, big, nil)
	if _, err := m.Upgrade(context.Background(), bytes.NewReader(img), sum); err == nil || !strings.Contains(err.Error(), "systemMiB") {
		t.Errorf("system image larger than the partition: %v", err)
	}
	if _, err := m.Upgrade(context.Background(), strings.NewReader("not a tar"), strings.Repeat("a", 64)); err == nil || !strings.Contains(err.Error(), "not a tar") {
		t.Errorf("garbage upload: %v", err)
	}
}

func TestStatusReportsFailedSlot(t *testing.T) {
	m := testNode(t, "a")
	e := NewEntry("b", "x", 5, nil)
	e.Counting, e.TriesLeft, e.TriesDone = true, 0, 3
	if err := writeEntry(m.ESP, e); err != nil {
		t.Fatal(err)
	}
	st := m.Status()
	if st.Default != "a" || st.Slots[1].State != "bad" || !strings.Contains(st.Message, "slot b failed its 3 boot tries") {
		t.Errorf("status: %+v", st)
	}
	if _, err := m.Rollback(); !errors.Is(err, ErrNoRollback) || !strings.Contains(err.Error(), "slot b is bad") {
		t.Errorf("rollback to a failed slot: %v", err)
	}
}
