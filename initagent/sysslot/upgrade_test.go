package sysslot

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// withRollbackTarget gives the test node's slot b a previous, good
// installation: entry, kernel, initramfs, and a system image.
func withRollbackTarget(t *testing.T, m *Manager) []byte {
	t.Helper()
	dir := filepath.Join(m.ESP, "ballast", "b")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"vmlinuz": "kernel-old-b", "initramfs.img": "initrd-old-b"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeEntry(m.ESP, NewEntry("b", "ballast old (slot b)", 0, []string{"console=ttyS0"})); err != nil {
		t.Fatal(err)
	}
	old := bytes.Repeat([]byte("old system b "), 90000) // ~1 MiB, the whole partition
	old = old[:1<<20]
	if err := os.WriteFile(m.Systems["b"], old, 0o600); err != nil {
		t.Fatal(err)
	}
	return old
}

// espTree is every file and directory under the ESP with its content.
func espTree(t *testing.T, esp string) map[string]string {
	t.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(esp, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(esp, p)
		if d.IsDir() {
			tree[rel+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(p)
		tree[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// TestUpgradeFailureKeepsRollbackTarget: an upgrade body that is garbage,
// truncated anywhere, or does not match the manifest or the request's
// sha256 changes nothing: the ESP (entries, kernels, no stray files), the
// inactive SYSTEM partition and the rollback to it stay as they were, and
// no spool file is left.
func TestUpgradeFailureKeepsRollbackTarget(t *testing.T) {
	files := upgradeFiles{kernel: []byte("kernel-2"), initrd: []byte("initrd-2"), system: bytes.Repeat([]byte("new system "), 40000)}
	good, goodSum := upgradeTar(t, files, nil)
	badSystem, badSystemSum := upgradeTar(t, files, func(u *UpgradeInfo) { u.Files[2].SHA256 = strings.Repeat("5", 64) })
	sysOff := bytes.Index(good, files.system[:64])
	kernelOff := bytes.Index(good, files.kernel)
	for _, tc := range []struct {
		name string
		body []byte
		sum  string
		want string
	}{
		{"garbage", bytes.Repeat([]byte("garbage!"), 4096), goodSum, "not a tar"},
		{"truncated in the manifest", good[:700], goodSum, "manifest"},
		{"truncated in the kernel", good[:kernelOff+4], goodSum, "vmlinuz"},
		{"truncated in the system image", good[:sysOff+100000], goodSum, "truncated upload"},
		{"trailer missing", good[:len(good)-1024], goodSum, "the request said"},
		{"wrong request sha256", good, strings.Repeat("0", 64), "the request said"},
		{"system image does not match its manifest", badSystem, badSystemSum, "system.sqfs sha256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testNode(t, "a")
			oldSystem := withRollbackTarget(t, m)
			before := espTree(t, m.ESP)
			_, err := m.Upgrade(context.Background(), bytes.NewReader(tc.body), tc.sum)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Upgrade error = %v, want it to mention %q", err, tc.want)
			}
			after := espTree(t, m.ESP)
			for k, v := range before {
				if after[k] != v {
					t.Errorf("ESP %s changed: %q → %q", k, v, after[k])
				}
			}
			for k := range after {
				if _, ok := before[k]; !ok {
					t.Errorf("ESP has a new file %s", k)
				}
			}
			if got, _ := os.ReadFile(m.Systems["b"]); !bytes.Equal(got, oldSystem) {
				t.Error("SYSTEM-B, the rollback target's system image, was overwritten")
			}
			if des, _ := os.ReadDir(m.Spool); len(des) != 0 {
				t.Errorf("spool files left: %v", des)
			}
			if to, err := m.Rollback(); err != nil || to != "b" {
				t.Errorf("rollback --system after the failed upgrade = %q, %v; want slot b", to, err)
			}
		})
	}
	// The same node then takes the good image.
	m := testNode(t, "a")
	withRollbackTarget(t, m)
	if slot, err := m.Upgrade(context.Background(), bytes.NewReader(good), goodSum); err != nil || slot != "b" {
		t.Fatalf("Upgrade = %q, %v", slot, err)
	}
	after := espTree(t, m.ESP)
	if after["ballast/b/vmlinuz"] != "kernel-2" || after["ballast/b/initramfs.img"] != "initrd-2" {
		t.Errorf("slot b files after the upgrade: %v", after)
	}
	for k := range after {
		if strings.HasSuffix(k, ".new") || strings.HasSuffix(k, ".tmp") {
			t.Errorf("stray file %s on the ESP", k)
		}
	}
	if part, _ := os.ReadFile(m.Systems["b"]); !bytes.HasPrefix(part, files.system) {
		t.Error("SYSTEM-B does not hold the new system image")
	}
	if des, _ := os.ReadDir(m.Spool); len(des) != 0 {
		t.Errorf("spool files left: %v", des)
	}
}

// TestUpgradeSpoolTooSmall: with too little room to check the image first,
// the upgrade is refused up front with a message saying where space is
// missing, and nothing changes.
func TestUpgradeSpoolTooSmall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	m := testNode(t, "a")
	oldSystem := withRollbackTarget(t, m)
	before := espTree(t, m.ESP)
	m.Spool = t.TempDir()
	if err := unix.Mount("tmpfs", m.Spool, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(m.Spool, unix.MNT_DETACH) })
	img, sum := upgradeTar(t, upgradeFiles{kernel: []byte("k"), initrd: []byte("i"), system: make([]byte, 900<<10)}, nil)
	_, err := m.Upgrade(context.Background(), bytes.NewReader(img), sum)
	if err == nil || !strings.Contains(err.Error(), "MiB free") || !strings.Contains(err.Error(), m.Spool) {
		t.Fatalf("upgrade with a full spool: %v", err)
	}
	if after := espTree(t, m.ESP); len(after) != len(before) || after["loader/entries/ballast-b.conf"] != before["loader/entries/ballast-b.conf"] {
		t.Errorf("ESP changed: %v", after)
	}
	if got, _ := os.ReadFile(m.Systems["b"]); !bytes.Equal(got, oldSystem) {
		t.Error("SYSTEM-B changed")
	}
}
