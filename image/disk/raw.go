// Package disk writes ballast's bootable media: the raw GPT disk image
// (ESP with systemd-boot, SYSTEM-A/B, CONFIG-A/B, STATE), the hybrid ISO
// (El Torito BIOS + UEFI, isohybrid MBR for USB sticks) and the upgrade
// image nodes take through their API. Every output is reproducible: GUIDs
// come from a seed (the recipe hash), timestamps are fixed.
package disk

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/ballast-os/ballast/initagent/sysslot"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// Host files of Debian packages the media are made from.
const (
	SystemdBootEFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi" // systemd-boot-efi
	IsolinuxBin    = "/usr/lib/ISOLINUX/isolinux.bin"                // isolinux
	IsohybridMBR   = "/usr/lib/ISOLINUX/isohdpfx.bin"                // isolinux
	LdlinuxC32     = "/usr/lib/syslinux/modules/bios/ldlinux.c32"    // syslinux-common
	GrubPCDir      = "/usr/lib/grub/i386-pc"                         // grub-pc-bin; grub-mkimage is grub-common's
)

// Sizes of a raw image.
type Sizes struct {
	Disk   int64 // whole image; STATE takes what the others leave
	ESP    int64
	System int64 // each of SYSTEM-A and SYSTEM-B
}

// RawSpec is what goes into a raw image.
type RawSpec struct {
	Sizes
	Seed        string   // makes the GUIDs: the recipe's sha256
	Title       string   // boot menu title, "ballast control-plane"
	Kernel      string   // host path of vmlinuz
	Initramfs   string   // host path of initramfs.img
	SystemImage string   // host path of the squashfs for SYSTEM-A
	Cmdline     []string // kernel arguments; ballast.slot= is added
	BootEFI     string   // systemd-boot; empty means SystemdBootEFI
}

const (
	sector   = 512
	mib      = 1 << 20
	firstLBA = mib / sector // 1 MiB alignment, as partitioning tools do
	gptEnd   = 34           // protective MBR, GPT header and 128 entries
)

// Part is one partition of the layout.
type Part struct {
	Index      int
	Name, Type string
	Start, End uint64 // LBAs, inclusive
}

// Offset and Size in bytes.
func (p Part) Offset() int64 { return int64(p.Start) * sector }

// Size of the partition in bytes.
func (p Part) Size() int64 { return int64(p.End-p.Start+1) * sector }

// Layout places the partitions: ESP, SYSTEM-A, SYSTEM-B, CONFIG-A,
// CONFIG-B, then STATE up to the last usable LBA (it grows on first boot),
// and last in the table BIOS-BOOT, GRUB's core.img in the gap between the
// GPT and the first MiB.
func Layout(s Sizes) ([]Part, error) {
	for _, c := range []struct {
		name string
		v    int64
	}{{"disk.sizeMiB", s.Disk}, {"disk.espMiB", s.ESP}, {"disk.systemMiB", s.System}} {
		if c.v <= 0 || c.v%mib != 0 {
			return nil, fmt.Errorf("%s: %d bytes is not a positive number of MiB", c.name, c.v)
		}
	}
	if s.ESP < 64*mib {
		return nil, fmt.Errorf("disk.espMiB: %d MiB is too small: FAT32 needs at least 64 MiB", s.ESP/mib)
	}
	sizes := []struct {
		name, typ string
		size      int64
	}{
		{sysslot.PartESP, sysslot.TypeESP, s.ESP},
		{sysslot.PartSystemA, sysslot.TypeSystem, s.System},
		{sysslot.PartSystemB, sysslot.TypeSystem, s.System},
		{sysslot.PartConfigA, slot.PartitionType, slot.ImagePartitionSize},
		{sysslot.PartConfigB, slot.PartitionType, slot.ImagePartitionSize},
	}
	var parts []Part
	lba := uint64(firstLBA)
	for i, p := range sizes {
		n := uint64(p.size / sector)
		parts = append(parts, Part{Index: i + 1, Name: p.name, Type: p.typ, Start: lba, End: lba + n - 1})
		lba += n
	}
	// The backup GPT takes 33 sectors at the end; keep STATE MiB-aligned.
	last := uint64(s.Disk/sector) - 34
	last = (last+1)/(mib/sector)*(mib/sector) - 1
	if last < lba+16*mib/sector {
		return nil, fmt.Errorf("disk.sizeMiB: %d MiB leaves less than 16 MiB for STATE after ESP and both system slots: make the disk larger", s.Disk/mib)
	}
	parts = append(parts, Part{Index: len(parts) + 1, Name: sysslot.PartState, Type: sysslot.TypeState, Start: lba, End: last})
	parts = append(parts, Part{Index: len(parts) + 1, Name: sysslot.PartBIOSBoot, Type: sysslot.TypeBIOSBoot, Start: gptEnd, End: firstLBA - 1})
	return parts, nil
}

// GUID derives a version-4-shaped GUID from the seed and a name.
func GUID(seed, name string) string {
	h := sha256.Sum256([]byte(seed + "\x00" + name))
	h[6] = h[6]&0x0f | 0x40
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// LoaderConf is systemd-boot's loader.conf: no menu (hold a key to see
// it), no editor, no automatic firmware/Windows entries. No "default": the
// entries' sort-key and version decide, so a slot that used up its tries
// (sorted last) is passed over by itself.
const LoaderConf = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"

// ESPFiles lists the ESP of a fresh disk: systemd-boot, loader.conf, and
// slot A's kernel, initramfs and (good) entry.
func ESPFiles(spec RawSpec) []File {
	boot := spec.BootEFI
	if boot == "" {
		boot = SystemdBootEFI
	}
	e := sysslot.NewEntry("a", spec.Title+" (slot a)", 1, spec.Cmdline)
	env, _ := sysslot.GrubEnvBlock(nil) // an empty block always fits
	return []File{
		{Name: "/" + sysslot.GrubCfg, Data: sysslot.GrubConfig(map[string]sysslot.Entry{"a": e})},
		{Name: "/" + sysslot.GrubEnv, Data: env},
		{Name: "/EFI/BOOT/BOOTX64.EFI", Src: boot},
		{Name: "/EFI/systemd/systemd-bootx64.efi", Src: boot},
		{Name: "/loader/loader.conf", Data: []byte(LoaderConf)},
		{Name: "/" + sysslot.EntriesDir + "/" + e.FileName(), Data: e.Marshal()},
		{Name: "/" + sysslot.KernelPath("a"), Src: spec.Kernel},
		{Name: "/" + sysslot.InitrdPath("a"), Src: spec.Initramfs},
	}
}

// WriteRaw writes the raw disk image to out (an empty file; it is sized
// here and stays sparse where the image is zero).
func WriteRaw(ctx context.Context, out *os.File, spec RawSpec) error {
	parts, err := Layout(spec.Sizes)
	if err != nil {
		return err
	}
	if err := out.Truncate(spec.Disk); err != nil {
		return err
	}
	t := &gpt.Table{
		LogicalSectorSize:  sector,
		PhysicalSectorSize: sector,
		ProtectiveMBR:      true,
		GUID:               GUID(spec.Seed, "disk"),
	}
	for _, p := range parts {
		t.Partitions = append(t.Partitions, &gpt.Partition{
			Index: p.Index, Start: p.Start, End: p.End, Type: gpt.Type(p.Type), Name: p.Name, GUID: GUID(spec.Seed, p.Name),
		})
	}
	if err := t.Write(out, spec.Disk); err != nil {
		return fmt.Errorf("write GPT: %w", err)
	}
	byName := map[string]Part{}
	for _, p := range parts {
		byName[p.Name] = p
	}
	if err := writeBIOSBoot(ctx, out, byName[sysslot.PartBIOSBoot]); err != nil {
		return err
	}
	esp := byName[sysslot.PartESP]
	if err := writeFAT(out, esp.Offset(), esp.Size(), "ESP", ESPFiles(spec)); err != nil {
		return err
	}
	sysA := byName[sysslot.PartSystemA]
	if err := copyAt(out, sysA.Offset(), sysA.Size(), spec.SystemImage); err != nil {
		return fmt.Errorf("SYSTEM-A: %w", err)
	}
	st := byName[sysslot.PartState]
	if err := mkfsExt4(ctx, out.Name(), st.Offset(), st.Size(), GUID(spec.Seed, "STATE filesystem")); err != nil {
		return err
	}
	return out.Sync()
}

// copyAt copies the file src into out at off; it must fit in room bytes.
func copyAt(out *os.File, off, room int64, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > room {
		return fmt.Errorf("%s has %d bytes, the partition %d: raise disk.systemMiB in the recipe", src, fi.Size(), room)
	}
	_, err = io.Copy(io.NewOffsetWriter(out, off), in)
	return err
}

// mkfsExt4 makes STATE's ext4 inside the image with e2fsprogs, with a
// fixed UUID, hash seed and time so the bytes are reproducible. The node
// has no mkfs: it grows this filesystem online (EXT4_IOC_RESIZE_FS) when
// the disk is larger than the image. Inode tables and the journal are left
// unwritten (lazy init: the kernel zeroes the tables in the background, the
// journal is overwritten before it is replayed), so they stay holes in the
// image and the installer need not write them.
func mkfsExt4(ctx context.Context, image string, off, size int64, uuid string) error {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("mkfs.ext4 not found: install Debian's e2fsprogs")
	}
	uuid = strings.ToLower(uuid)
	cmd := exec.CommandContext(ctx, mkfs, "-q", "-F", "-L", "STATE", "-U", uuid, "-T", "default",
		"-E", fmt.Sprintf("offset=%d,root_owner=0:0,hash_seed=%s,nodiscard,lazy_itable_init=1,lazy_journal_init=1", off, uuid),
		image, fmt.Sprintf("%dk", size/1024))
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1", "SOURCE_DATE_EPOCH=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 for STATE: %w\n%s", err, b)
	}
	return nil
}

// grubModules go into core.img: with them GRUB reads grub.cfg from the ESP
// and boots Linux without loading anything else from disk.
var grubModules = []string{"biosdisk", "part_gpt", "fat", "normal", "linux", "echo", "test", "regexp", "loadenv", "serial", "terminal"}

// GRUB's i386-pc boot sector and core.img fields (grub/i386/pc/boot.h).
const (
	grubKernelSector = 0x5c  // boot.img: LBA of core.img's first sector
	grubBootDrive    = 0x64  // boot.img: 0xff means the drive the BIOS booted
	grubDriveCheck   = 0x66  // boot.img: jump over the check, replaced by NOPs on disks
	mbrKeep          = 0x1b8 // disk signature, partition table and 0x55AA stay
	grubBlocklist    = 0x200 - 12
)

// writeBIOSBoot makes the disk boot on BIOS machines the way grub-install
// does with a BIOS boot partition: core.img (GRUB with grubModules, its
// prefix the ESP of the disk it booted from) into part, its first sector's
// blocklist pointing at the rest, and boot.img's code in the protective
// MBR pointing at core.img.
func writeBIOSBoot(ctx context.Context, out *os.File, part Part) error {
	mkimage, err := exec.LookPath("grub-mkimage")
	if err != nil {
		return fmt.Errorf("grub-mkimage not found: install Debian's grub-common and grub-pc-bin (tools/deps.sh build)")
	}
	bootImg, err := os.ReadFile(GrubPCDir + "/boot.img")
	if err != nil {
		return fmt.Errorf("GRUB boot.img: %w (install Debian's grub-pc-bin)", err)
	}
	if len(bootImg) != sector {
		return fmt.Errorf("GRUB boot.img has %d bytes, want %d", len(bootImg), sector)
	}
	tmp, err := os.CreateTemp("", "core-*.img")
	if err != nil {
		return err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	args := append([]string{"-O", "i386-pc", "-d", GrubPCDir, "-o", tmp.Name(), "-p", "(,gpt1)/" + sysslot.GrubDir}, grubModules...)
	if b, err := exec.CommandContext(ctx, mkimage, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("grub-mkimage: %w\n%s", err, b)
	}
	core, err := os.ReadFile(tmp.Name())
	if err != nil {
		return err
	}
	sectors := (int64(len(core)) + sector - 1) / sector
	if sectors*sector > part.Size() {
		return fmt.Errorf("GRUB core.img has %d bytes, %s holds %d", len(core), sysslot.PartBIOSBoot, part.Size())
	}
	core = append(core, make([]byte, sectors*sector-int64(len(core)))...)
	bl := core[grubBlocklist:]
	binary.LittleEndian.PutUint64(bl[0:], part.Start+1)
	binary.LittleEndian.PutUint16(bl[8:], uint16(sectors-1))
	if _, err := out.WriteAt(core, part.Offset()); err != nil {
		return fmt.Errorf("write core.img: %w", err)
	}
	mbr := make([]byte, sector)
	if _, err := out.ReadAt(mbr, 0); err != nil {
		return fmt.Errorf("read protective MBR: %w", err)
	}
	copy(mbr[:mbrKeep], bootImg[:mbrKeep])
	binary.LittleEndian.PutUint64(mbr[grubKernelSector:], part.Start)
	mbr[grubBootDrive] = 0xff
	mbr[grubDriveCheck], mbr[grubDriveCheck+1] = 0x90, 0x90
	if _, err := out.WriteAt(mbr, 0); err != nil {
		return fmt.Errorf("write MBR boot code: %w", err)
	}
	return nil
}
