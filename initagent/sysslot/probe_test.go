package sysslot

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestProbeDiskSignatures puts each known magic where its on-disk format
// has it (wipefs/blkid offsets) on a 64 MiB disk and expects ProbeDisk to
// name it at that offset; a disk of zeroes is empty, and anything else
// non-zero in the first or last MiB is reported as unrecognised.
func TestProbeDiskSignatures(t *testing.T) {
	const size = 64 << 20
	le32 := func(v uint32) []byte { b := make([]byte, 4); binary.LittleEndian.PutUint32(b, v); return b }
	le64 := func(v uint64) []byte { b := make([]byte, 8); binary.LittleEndian.PutUint64(b, v); return b }
	be64 := func(v uint64) []byte { b := make([]byte, 8); binary.BigEndian.PutUint64(b, v); return b }
	type w struct {
		off int64
		b   []byte
	}
	for _, tc := range []struct {
		name   string
		writes []w
		what   string
		off    int64
	}{
		{"ext4", []w{{1080, []byte{0x53, 0xef}}}, "ext2/3/4", 1080},
		{"xfs", []w{{0, []byte("XFSB")}}, "XFS", 0},
		{"btrfs", []w{{65600, []byte("_BHRfS_M")}}, "btrfs", 65600},
		{"fat32", []w{{82, []byte("FAT32   ")}, {510, []byte{0x55, 0xaa}}}, "FAT", 0},
		{"ntfs", []w{{3, []byte("NTFS    ")}, {510, []byte{0x55, 0xaa}}}, "NTFS", 3},
		{"swap", []w{{4086, []byte("SWAPSPACE2")}}, "swap", 4086},
		{"iso9660", []w{{32769, []byte("CD001")}}, "ISO 9660", 32769},
		{"squashfs", []w{{0, []byte("hsqs")}}, "squashfs", 0},
		{"lvm2 sector 1", []w{{512, []byte("LABEL_ONE")}, {536, []byte("LVM2 001")}}, "LVM2", 512},
		{"lvm2 sector 3", []w{{1536, []byte("LABEL_ONE")}, {1560, []byte("LVM2 001")}}, "LVM2", 1536},
		{"md 0.90", []w{{size - 64<<10, le32(0xa92b4efc)}}, "md 0.90", size - 64<<10},
		{"md 1.0", []w{{size - 8<<10, le32(0xa92b4efc)}}, "md 1.0", size - 8<<10},
		{"md 1.1", []w{{0, le32(0xa92b4efc)}}, "md 1.1", 0},
		{"md 1.2", []w{{4096, le32(0xa92b4efc)}}, "md 1.2", 4096},
		{"zfs L0", []w{{128 << 10, le64(0x00bab10c)}}, "ZFS", 128 << 10},
		{"zfs L1 big-endian", []w{{256<<10 + 128<<10 + 5<<10, be64(0x00bab10c)}}, "ZFS", 256<<10 + 128<<10 + 5<<10},
		{"zfs L2", []w{{size - 512<<10 + 128<<10, le64(0x00bab10c)}}, "ZFS", size - 512<<10 + 128<<10},
		{"ceph bluestore", []w{{0, []byte("bluestore block device\n")}}, "BlueStore", 0},
		{"luks", []w{{0, []byte("LUKS\xba\xbe\x00\x02")}}, "LUKS", 0},
		{"luks2 secondary", []w{{0x4000, []byte("SKUL\xba\xbe")}}, "LUKS2", 0x4000},
		{"gpt", []w{{512, []byte("EFI PART")}}, "GPT partition table header", 512},
		{"backup gpt only", []w{{size - 512, []byte("EFI PART")}}, "backup GPT", size - 512},
		{"mbr", []w{{446 + 4, []byte{0x83}}, {510, []byte{0x55, 0xaa}}}, "MBR", 510},
		{"unknown data at the head", []w{{300000, []byte("x")}}, "no probe recognises", 300000},
		{"unknown data at the tail", []w{{size - 3, []byte("x")}}, "no probe recognises", size - 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := make([]byte, size)
			for _, w := range tc.writes {
				copy(disk[w.off:], w.b)
			}
			sigs, err := ProbeDisk(bytes.NewReader(disk), size)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range sigs {
				if strings.Contains(s.What, tc.what) && s.Offset == tc.off {
					return
				}
			}
			t.Errorf("ProbeDisk = %v, want %q at byte %d", sigs, tc.what, tc.off)
		})
	}
	if sigs, err := ProbeDisk(bytes.NewReader(make([]byte, size)), size); err != nil || len(sigs) != 0 {
		t.Errorf("a disk of zeroes: %v, %v", sigs, err)
	}
	// Data beyond the first and last MiB is not looked at.
	disk := make([]byte, size)
	disk[size/2] = 1
	if sigs, err := ProbeDisk(bytes.NewReader(disk), size); err != nil || len(sigs) != 0 {
		t.Errorf("data in the middle only: %v, %v", sigs, err)
	}
}

// TestProbeDiskRealFilesystems makes filesystems with the usual tools on
// whole-disk images and checks that ProbeDisk and blkid both see them.
func TestProbeDiskRealFilesystems(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "tree")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte("hello"), 0o644)
	for _, tc := range []struct {
		tool string
		args func(img string) []string
		what string
	}{
		{"mkfs.ext4", func(img string) []string { return []string{"-q", "-F", img} }, "ext2/3/4"},
		{"mkfs.vfat", func(img string) []string { return []string{img} }, "FAT"},
		{"mkswap", func(img string) []string { return []string{img} }, "swap"},
		{"mksquashfs", func(img string) []string { return []string{src, img, "-noappend", "-quiet"} }, "squashfs"},
		{"xorriso", func(img string) []string { return []string{"-outdev", img, "-map", src, "/", "-commit"} }, "ISO 9660"},
	} {
		t.Run(tc.tool, func(t *testing.T) {
			if _, err := exec.LookPath(tc.tool); err != nil {
				t.Skipf("%s missing", tc.tool)
			}
			img := filepath.Join(dir, tc.tool+".img")
			if tc.tool != "mksquashfs" && tc.tool != "xorriso" {
				if err := os.WriteFile(img, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(img, 64<<20); err != nil {
					t.Fatal(err)
				}
			}
			if out, err := exec.Command(tc.tool, tc.args(img)...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", tc.tool, err, out)
			}
			sigs, err := probePath(img)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(describe(sigs), tc.what) {
				t.Errorf("ProbeDisk = %v, want %s", sigs, tc.what)
			}
			if out, err := exec.Command("blkid", "-p", img).CombinedOutput(); err == nil && !strings.Contains(string(out), "TYPE=") {
				t.Errorf("blkid sees no filesystem: %s", out)
			}
		})
	}
}
