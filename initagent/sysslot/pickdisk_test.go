package sysslot

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeDisk lays out /sys/block/<name> and /dev/<name> under root.
func fakeDisk(t *testing.T, root, name string, mib int64, attrs map[string]string, table bool, parts ...string) {
	t.Helper()
	d := filepath.Join(root, "sys/block", name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	all := map[string]string{"size": itoa(mib * 2048), "removable": "0", "ro": "0"}
	for k, v := range attrs {
		all[k] = v
	}
	for k, v := range all {
		if err := os.WriteFile(filepath.Join(d, k), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range parts {
		if err := os.MkdirAll(filepath.Join(d, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	head := make([]byte, 1024)
	if table {
		copy(head[512:], "EFI PART")
	}
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "dev", name), head, 0o644); err != nil {
		t.Fatal(err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestPickDisk(t *testing.T) {
	const need = 2048 << 20
	root := t.TempDir()
	fakeDisk(t, root, "sr0", 70, nil, false)
	fakeDisk(t, root, "loop0", 4096, nil, false)
	fakeDisk(t, root, "sda", 8192, nil, true)                                  // an old install
	fakeDisk(t, root, "sdb", 8192, nil, false, "sdb1")                         // partitions seen by the kernel
	fakeDisk(t, root, "sdc", 1024, nil, false)                                 // too small
	fakeDisk(t, root, "sdd", 8192, map[string]string{"removable": "1"}, false) // the USB stick
	fakeDisk(t, root, "vda", 4096, nil, false)
	in := Installer{Root: root}
	got, err := in.PickDisk(need)
	if err != nil || got != "/dev/vda" {
		t.Fatalf("PickDisk = %q, %v; want /dev/vda", got, err)
	}
	fakeDisk(t, root, "vdb", 4096, nil, false)
	if _, err := in.PickDisk(need); err == nil || !strings.Contains(err.Error(), "several empty disks (vda, vdb)") {
		t.Errorf("two empty disks: %v", err)
	}
	root = t.TempDir()
	fakeDisk(t, root, "sda", 8192, nil, true)
	fakeDisk(t, root, "sdc", 1024, nil, false)
	_, err = Installer{Root: root}.PickDisk(need)
	if err == nil || !strings.Contains(err.Error(), "no empty disk (sda holds a partition table (GPT partition table header at byte 512); sdc is too small (1024 MiB, need 2048))") {
		t.Errorf("no candidate: %v", err)
	}
}
