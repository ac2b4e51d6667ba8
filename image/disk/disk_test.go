package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/ballast-os/ballast/initagent/sysslot"
)

func TestLayoutRefusesBadSizes(t *testing.T) {
	for _, tc := range []struct {
		s    Sizes
		want string
	}{
		{Sizes{Disk: 1 << 30, ESP: 32 << 20, System: 256 << 20}, "disk.espMiB"},
		{Sizes{Disk: 590 << 20, ESP: 64 << 20, System: 256 << 20}, "disk.sizeMiB"},
		{Sizes{Disk: 1<<30 + 1, ESP: 64 << 20, System: 256 << 20}, "disk.sizeMiB"},
	} {
		if _, err := Layout(tc.s); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Layout(%+v) = %v, want an error naming %s", tc.s, err, tc.want)
		}
	}
	parts, err := Layout(Sizes{Disk: 1 << 30, ESP: 64 << 20, System: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i, p := range parts {
		names = append(names, p.Name)
		if p.Name == sysslot.PartBIOSBoot {
			// In the gap between the GPT and the first MiB, last in the table.
			if p.Start != 34 || p.End != 2047 || i != len(parts)-1 {
				t.Errorf("%s is entry %d at LBAs %d–%d, want the last entry at 34–2047", p.Name, i+1, p.Start, p.End)
			}
			continue
		}
		if p.Start%2048 != 0 || (p.End+1)%2048 != 0 {
			t.Errorf("%s spans LBAs %d–%d, not MiB-aligned", p.Name, p.Start, p.End)
		}
		if i > 0 && p.Start != parts[i-1].End+1 {
			t.Errorf("%s does not follow %s", p.Name, parts[i-1].Name)
		}
	}
	if got := strings.Join(names, ","); got != "ESP,SYSTEM-A,SYSTEM-B,CONFIG-A,CONFIG-B,STATE,BIOS-BOOT" {
		t.Errorf("partition order %s", got)
	}
}

func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestWriteRaw writes a small raw image and reads it back with other
// readers: go-diskfs for the GPT and the ESP's files, dosfstools' fsck.fat
// for the ESP (clean, after fixFAT32), e2fsprogs' e2fsck for STATE.
func TestWriteRaw(t *testing.T) {
	if _, err := os.Stat(SystemdBootEFI); err != nil {
		t.Skip("systemd-boot missing: apt-get install -y systemd-boot-efi")
	}
	dir := t.TempDir()
	spec := RawSpec{
		Sizes: Sizes{Disk: 512 << 20, ESP: 64 << 20, System: 128 << 20}, Seed: "test", Title: "ballast t",
		Kernel:      writeTestFile(t, dir, "vmlinuz", bytes.Repeat([]byte("K"), 3<<20)),
		Initramfs:   writeTestFile(t, dir, "initrd", []byte("initrd")),
		SystemImage: writeTestFile(t, dir, "system.sqfs", []byte("hsqs-system")),
		Cmdline:     []string{"console=ttyS0"},
	}
	raw := filepath.Join(dir, "t.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := WriteRaw(context.Background(), f, spec); err != nil {
		t.Fatal(err)
	}
	tbl, err := gpt.Read(f, 512, 512)
	if err != nil {
		t.Fatal(err)
	}
	parts, _ := Layout(spec.Sizes)
	if len(tbl.Partitions) != len(parts) {
		t.Fatalf("GPT has %d partitions, want %d", len(tbl.Partitions), len(parts))
	}
	for i, p := range tbl.Partitions {
		if p.Name != parts[i].Name || p.Start != parts[i].Start || p.GUID != GUID("test", p.Name) {
			t.Errorf("partition %d: %s at %d guid %s", i+1, p.Name, p.Start, p.GUID)
		}
	}
	esp := parts[0]
	fs, err := fat32.Read(file.New(f, true), esp.Size(), esp.Offset(), 512)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := fs.ReadFile("/loader/entries/ballast-a.conf")
	if err != nil {
		t.Fatal(err)
	}
	e, err := sysslot.ParseEntry("ballast-a.conf", entry)
	if err != nil || e.Options != "console=ttyS0 ballast.slot=a" || e.Linux != "/ballast/a/vmlinuz" || !e.Good() {
		t.Errorf("slot a entry %+v, %v", e, err)
	}
	if cfg, err := fs.ReadFile("/" + sysslot.GrubCfg); err != nil || !strings.Contains(string(cfg), "linux /ballast/a/vmlinuz console=ttyS0 ballast.slot=a\n") {
		t.Errorf("grub.cfg on the ESP does not boot slot a (%v):\n%s", err, cfg)
	}
	if env, err := fs.ReadFile("/" + sysslot.GrubEnv); err != nil || len(env) != 1024 {
		t.Errorf("grubenv on the ESP: %d bytes, %v; GRUB writes only a 1024-byte block", len(env), err)
	}
	// BIOS: boot.img's code in the protective MBR (its partition table
	// kept) loads core.img from BIOS-BOOT, whose first sector's blocklist
	// loads the rest.
	mbr := make([]byte, 512)
	f.ReadAt(mbr, 0)
	bios := parts[len(parts)-1]
	if got := binary.LittleEndian.Uint64(mbr[0x5c:]); got != bios.Start || mbr[0x64] != 0xff || mbr[0x1be+4] != 0xEE || mbr[510] != 0x55 || mbr[511] != 0xAA {
		t.Errorf("MBR: core.img at LBA %d (want %d), boot drive %#x, partition type %#x, signature %x", got, bios.Start, mbr[0x64], mbr[0x1be+4], mbr[510:])
	}
	core := make([]byte, 512)
	f.ReadAt(core, bios.Offset())
	start, n := binary.LittleEndian.Uint64(core[0x1f4:]), binary.LittleEndian.Uint16(core[0x1fc:])
	if start != bios.Start+1 || n == 0 || uint64(n)+1 > bios.End-bios.Start+1 {
		t.Errorf("core.img blocklist: %d sectors at LBA %d, want the rest of core.img from LBA %d inside %s", n, start, bios.Start+1, bios.Name)
	}
	if k, err := fs.ReadFile("/ballast/a/vmlinuz"); err != nil || len(k) != 3<<20 {
		t.Errorf("kernel on the ESP: %d bytes, %v", len(k), err)
	}
	sys := make([]byte, 11)
	f.ReadAt(sys, parts[1].Offset())
	if string(sys) != "hsqs-system" {
		t.Errorf("SYSTEM-A starts with %q", sys)
	}

	extract := func(p Part) string {
		out := filepath.Join(dir, p.Name+".img")
		o, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		if _, err := io.Copy(o, io.NewSectionReader(f, p.Offset(), p.Size())); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if fsck, err := exec.LookPath("fsck.fat"); err == nil {
		if b, err := exec.Command(fsck, "-n", extract(esp)).CombinedOutput(); err != nil {
			t.Errorf("fsck.fat on the ESP: %v\n%s", err, b)
		}
	}
	if fsck, err := exec.LookPath("e2fsck"); err == nil {
		if b, err := exec.Command(fsck, "-fn", extract(parts[5])).CombinedOutput(); err != nil {
			t.Errorf("e2fsck on STATE: %v\n%s", err, b)
		}
	}
}

// TestWriteISO checks the hybrid ISO with xorriso (the reference tool):
// both El Torito entries, the boot info table, and the isohybrid MBR.
func TestWriteISO(t *testing.T) {
	for _, f := range []string{SystemdBootEFI, IsolinuxBin, IsohybridMBR, LdlinuxC32} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("%s missing: apt-get install -y systemd-boot-efi isolinux syslinux-common", f)
		}
	}
	xorriso, err := exec.LookPath("xorriso")
	if err != nil {
		t.Skip("xorriso missing: apt-get install -y xorriso")
	}
	dir := t.TempDir()
	raw := writeTestFile(t, dir, "t.raw", append(bytes.Repeat([]byte{0}, 4<<20), []byte("end")...))
	spec := ISOSpec{Volume: "t", Title: "ballast t", Kernel: writeTestFile(t, dir, "vmlinuz", []byte("kernel")),
		Initramfs: writeTestFile(t, dir, "initrd", []byte("initrd")), System: writeTestFile(t, dir, "sys", []byte("sys")),
		Raw: raw, Cmdline: []string{"console=ttyS0"}}
	iso := filepath.Join(dir, "t.iso")
	f, err := os.Create(iso)
	if err != nil {
		t.Fatal(err)
	}
	info, err := WriteISO(context.Background(), f, spec)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 4<<20+3 || len(info.Chunks) != 1 || info.Chunks[0] != [2]int64{0, 4} {
		t.Errorf("install info: size %d, chunks %v; want %d, [[0 4]]", info.Size, info.Chunks, 4<<20+3)
	}
	b, err := exec.Command(xorriso, "-indev", iso, "-report_el_torito", "plain", "-report_system_area", "plain",
		"-find", "/", "-exec", "lsdl").CombinedOutput()
	if err != nil {
		t.Fatalf("xorriso: %v\n%s", err, b)
	}
	out := string(b)
	for _, want := range []string{
		"El Torito img path :   1  /ISOLINUX/ISOLINUX.BIN",
		"El Torito img opts :   1  boot-info-table isohybrid-suitable",
		"El Torito img path :   2  /EFIBOOT.IMG",
		"System area summary: MBR isohybrid cyl-align-on",
		"MBR partition path :   2  /EFIBOOT.IMG",
		"/BALLAST/INSTALL.JSON",
		"/BALLAST/DISK.ZST",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("xorriso report lacks %q:\n%s", want, out)
		}
	}
	data, _ := os.ReadFile(iso)
	if len(data)%(1<<20) != 0 || binary.LittleEndian.Uint16(data[510:]) != 0xAA55 {
		t.Errorf("ISO of %d bytes: not padded to a MiB or no MBR signature", len(data))
	}
}
