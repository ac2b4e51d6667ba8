package sysslot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// needLoop skips unless the test may attach loop devices.
func needLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup missing (util-linux)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no /dev/loop-control: %v", err)
	}
}

// loopDisk makes a sparse file of mib MiB, lets prep write into it, and
// attaches it read-write as a loop device with partition scanning.
func loopDisk(t *testing.T, mib int64, prep func(f *os.File)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(mib << 20); err != nil {
		t.Fatal(err)
	}
	if prep != nil {
		prep(f)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", "--partscan", path).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func writeAt(t *testing.T, f *os.File, off int64, b []byte) {
	t.Helper()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

const (
	imgMiB   = 24
	mibLBA   = 1 << 20 / 512
	imgGUID  = "8C3F2D9E-6A1B-4C5D-9E8F-0A1B2C3D4E5F"
	stateOff = 12 << 20 // STATE starts at 12 MiB in the test image
)

// testMedia builds a small ballast-like raw image (GPT with ESP,
// SYSTEM-A/B, CONFIG-A/B and STATE, fixed GUIDs like imgbuild's, data in
// a few chunks, CONFIG and most of STATE left as holes), compresses it and
// writes install.json, as imgbuild's ISO has them.
func testMedia(t *testing.T) (string, *MediaInfo) {
	t.Helper()
	dir := t.TempDir()
	raw := make([]byte, imgMiB<<20)
	tbl := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: imgGUID,
		Partitions: []*gpt.Partition{
			{Index: 1, Start: 1 * mibLBA, End: 5*mibLBA - 1, Type: gpt.Type(TypeESP), Name: PartESP, GUID: "11111111-1111-4111-8111-111111111111"},
			{Index: 2, Start: 5 * mibLBA, End: 8*mibLBA - 1, Type: gpt.Type(TypeSystem), Name: PartSystemA, GUID: "22222222-2222-4222-8222-222222222222"},
			{Index: 3, Start: 8 * mibLBA, End: 10*mibLBA - 1, Type: gpt.Type(TypeSystem), Name: PartSystemB, GUID: "33333333-3333-4333-8333-333333333333"},
			{Index: 4, Start: 10 * mibLBA, End: 11*mibLBA - 1, Type: gpt.Type(slot.PartitionType), Name: PartConfigA, GUID: "44444444-4444-4444-8444-444444444444"},
			{Index: 5, Start: 11 * mibLBA, End: 12*mibLBA - 1, Type: gpt.Type(slot.PartitionType), Name: PartConfigB, GUID: "55555555-5555-4555-8555-555555555555"},
			{Index: 6, Start: 12 * mibLBA, End: imgMiB*mibLBA - 34, Type: gpt.Type(TypeState), Name: PartState, GUID: "66666666-6666-4666-8666-666666666666"},
		}}
	imgPath := filepath.Join(dir, "raw.img")
	f, err := os.Create(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(imgMiB << 20); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Write(f, imgMiB<<20); err != nil {
		t.Fatal(err)
	}
	writeAt(t, f, 1<<20, []byte("ESP: systemd-boot, slot a's kernel"))
	writeAt(t, f, 5<<20, []byte("hsqs SYSTEM-A"))
	writeAt(t, f, stateOff+1024, []byte("STATE superblock"))
	if _, err := f.ReadAt(raw, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	info := &MediaInfo{Disk: "ballast/disk.zst", Size: int64(len(raw))}
	for c := int64(0); c < int64(len(raw))/chunk; c++ {
		if firstNonZero(raw[c*chunk:(c+1)*chunk]) >= 0 {
			info.Chunks = append(info.Chunks, [2]int64{c, c})
		}
	}
	sum := sha256.Sum256(raw)
	info.SHA256 = hex.EncodeToString(sum[:])
	if err := os.MkdirAll(filepath.Join(dir, "ballast"), 0o755); err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	if err := os.WriteFile(filepath.Join(dir, info.Disk), enc.EncodeAll(raw, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(info)
	if err := os.WriteFile(filepath.Join(dir, MediaInfoFile), j, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, info
}

func install(t *testing.T, media string, info *MediaInfo, o InstallOptions) error {
	t.Helper()
	return Installer{Root: "/"}.installFrom(context.Background(), media, info, o)
}

// md090 puts an MD 0.90 superblock magic where the kernel looks for it:
// the last 64 KiB-aligned 64 KiB of the disk.
func md090(t *testing.T, f *os.File) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, 0xa92b4efc)
	writeAt(t, f, size&^(64<<10-1)-64<<10, b)
}

// TestInstallRefusesDisksInUseOrNotEmpty installs onto real loop devices:
// a disk whose only trace is an LVM label, an MD 0.90 superblock at its end
// or a ZFS label is not empty; a partition is never a target; a disk with
// something mounted from it (here the "live medium" holding a system image
// mounted through a second loop device) is never overwritten, not even with
// wipe. Every refusal names what was found where and how to go on.
func TestInstallRefusesDisksInUseOrNotEmpty(t *testing.T) {
	needLoop(t)
	media, info := testMedia(t)

	lvm := loopDisk(t, 64, func(f *os.File) {
		writeAt(t, f, 512, []byte("LABEL_ONE"))
		writeAt(t, f, 512+24, []byte("LVM2 001"))
	})
	err := install(t, media, info, InstallOptions{Target: lvm})
	if err == nil || !strings.Contains(err.Error(), "LVM2 physical volume at byte 512") || !strings.Contains(err.Error(), "ballast.install.wipe=true") {
		t.Errorf("install over an LVM PV: %v", err)
	}

	md := loopDisk(t, 64, func(f *os.File) { md090(t, f) })
	err = install(t, media, info, InstallOptions{Target: md})
	if err == nil || !strings.Contains(err.Error(), "md 0.90") || !strings.Contains(err.Error(), "ballast.install.wipe=true") {
		t.Errorf("install over an MD 0.90 member: %v", err)
	}

	zfs := loopDisk(t, 64, func(f *os.File) {
		b := make([]byte, 8)
		binary.LittleEndian.PutUint64(b, 0x00bab10c)
		writeAt(t, f, 64<<20-256<<10+128<<10+3<<10, b) // uberblock 3 of label L3
	})
	if err := install(t, media, info, InstallOptions{Target: zfs}); err == nil || !strings.Contains(err.Error(), "ZFS") {
		t.Errorf("install over a ZFS member: %v", err)
	}

	// A partitioned disk: its partition is refused even with wipe.
	parted := loopDisk(t, 64, func(f *os.File) {
		tbl := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true,
			Partitions: []*gpt.Partition{{Index: 1, Start: 2048, End: 40959, Type: gpt.LinuxFilesystem, Name: "data"}}}
		if err := tbl.Write(f, 64<<20); err != nil {
			t.Fatal(err)
		}
	})
	part := parted + "p1"
	if _, err := os.Stat("/sys/class/block/" + filepath.Base(part)); err != nil {
		// The kernel did not scan the table: add the partition as partx -a does.
		f, err := os.Open(parted)
		if err != nil {
			t.Fatal(err)
		}
		p := unix.BlkpgPartition{Start: 2048 * 512, Length: 38912 * 512, Pno: 1}
		arg := unix.BlkpgIoctlArg{Op: unix.BLKPG_ADD_PARTITION, Datalen: int32(unsafe.Sizeof(p)), Data: (*byte)(unsafe.Pointer(&p))}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlBLKPG, uintptr(unsafe.Pointer(&arg))); errno != 0 {
			t.Logf("BLKPG add partition: %v", errno)
		}
		f.Close()
	}
	if _, err := os.Stat(part); err != nil {
		if err := makeBlockNode(part, filepath.Base(part)); err == nil {
			t.Cleanup(func() { os.Remove(part) })
		}
	}
	if _, err := os.Stat(part); err != nil {
		t.Errorf("no %s (%v): cannot check that a partition is refused", part, err)
	} else {
		err = install(t, media, info, InstallOptions{Target: part, Wipe: true})
		if err == nil || !strings.Contains(err.Error(), "is partition 1 of "+parted) {
			t.Errorf("install to a partition: %v", err)
		}
	}
	err = install(t, media, info, InstallOptions{Target: parted})
	if err == nil || !strings.Contains(err.Error(), "holds a partition table") || !strings.Contains(err.Error(), "backup GPT partition table header at byte") {
		t.Errorf("install over a partitioned disk: %v", err)
	}

	// The live medium: an ext4 disk mounted, holding the system image,
	// itself loop-mounted from there. Both disks are in use, wipe or not.
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 missing")
	}
	medium := loopDisk(t, 64, nil)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", medium).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	mnt := t.TempDir()
	if err := unix.Mount(medium, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", medium, err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	sys := filepath.Join(mnt, "system.img")
	if err := os.WriteFile(sys, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", sys).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", sys).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	sysLoop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", sysLoop).Run() })
	sysMnt := t.TempDir()
	if err := unix.Mount(sysLoop, sysMnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("mount %s: %v", sysLoop, err)
	}
	// Unmount the medium's own mount: it stays in use through the system image.
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sysMnt, unix.MNT_DETACH) })
	err = install(t, media, info, InstallOptions{Target: medium, Wipe: true})
	if err == nil || !strings.Contains(err.Error(), "mounted at "+sysMnt) || !strings.Contains(err.Error(), "through "+filepath.Base(sysLoop)) {
		t.Errorf("install over the disk holding the running system image: %v", err)
	}
	if got, _ := probePath(medium); len(got) == 0 || !strings.Contains(got[0].What, "ext2/3/4") {
		t.Errorf("the medium was touched: %v", got)
	}
}

// TestInstallFailsClosedOnReadErrors: a target that cannot be read is not
// empty, and auto does not count it.
func TestInstallFailsClosedOnReadErrors(t *testing.T) {
	root := t.TempDir()
	fakeDisk(t, root, "vda", 4096, nil, false)
	if err := os.Remove(filepath.Join(root, "dev/vda")); err != nil {
		t.Fatal(err)
	}
	// A directory where the device node should be: opening works, reading fails.
	if err := os.Mkdir(filepath.Join(root, "dev/vda"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Installer{Root: root}.PickDisk(1 << 20)
	if err == nil || !strings.Contains(err.Error(), "vda cannot be read") || !strings.Contains(err.Error(), "does not count as empty") {
		t.Errorf("PickDisk with an unreadable disk: %v", err)
	}
	_, err = Installer{Root: root}.checkTarget("/dev/vda", true)
	if err == nil || !strings.Contains(err.Error(), "cannot be read") {
		t.Errorf("checkTarget on an unreadable disk, wipe=true: %v", err)
	}
	if _, err := ProbeDisk(errReader{}, 8<<20); err == nil {
		t.Error("ProbeDisk hid a read error")
	}
}

type errReader struct{}

func (errReader) ReadAt([]byte, int64) (int, error) { return 0, errors.New("input/output error") }

// TestReinstallClearsOldInstallation installs twice onto one loop device:
// the second install (wipe) must not leave the first installation's
// committed configs in CONFIG-A/B (for boot or `nodectl rollback`) nor its
// STATE contents (journal) where the image has holes, nor the ZFS/MD
// signatures of an even earlier user at the disk's end; the disk gets GUIDs
// of its own.
func TestReinstallClearsOldInstallation(t *testing.T) {
	needLoop(t)
	media, info := testMedia(t)
	dev := loopDisk(t, 64, nil)

	if err := install(t, media, info, InstallOptions{Target: dev, Config: []byte("old machine, generation 1")}); err != nil {
		t.Fatalf("first install: %v", err)
	}
	// The old node commits a second config, so both slots hold one, and
	// writes its journal in STATE.
	store, err := slot.NewGPT(dev)
	if err != nil {
		t.Fatal(err)
	}
	name, err := slot.Begin(store, slot.Header{}, []byte("old machine, generation 2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := slot.Commit(store, name); err != nil {
		t.Fatal(err)
	}
	store.Close()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	journal := stateOff + 5<<20
	writeAt(t, f, int64(journal), bytes.Repeat([]byte("old jbd2 block "), 1000))
	md090(t, f)
	f.Sync()
	f.Close()

	if err := install(t, media, info, InstallOptions{Target: dev, Config: []byte("old machine, generation 3")}); err == nil ||
		!strings.Contains(err.Error(), "holds a partition table") {
		t.Fatalf("reinstall without wipe: %v", err)
	}
	if err := install(t, media, info, InstallOptions{Target: dev, Wipe: true, Config: []byte("new machine")}); err != nil {
		t.Fatalf("reinstall: %v", err)
	}
	store, err = slot.NewGPT(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	act, data, err := slot.Active(store)
	if err != nil || string(data) != "new machine" {
		t.Fatalf("active config after reinstall = %q, %v", data, err)
	}
	other := map[string]string{slot.A: slot.B, slot.B: slot.A}[act.Name]
	if h, data, err := store.Read(other); !errors.Is(err, slot.ErrEmpty) {
		t.Errorf("config slot %s after reinstall: %+v %q %v; want empty (nothing for rollback to apply)", other, h, data, err)
	}

	f, err = os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parts, err := gptPartitions(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{PartConfigA, PartConfigB} {
		p := parts[name]
		if name == PartitionNameOf(other) {
			b := make([]byte, p.size)
			f.ReadAt(b, p.off)
			if i := firstNonZero(b); i >= 0 {
				t.Errorf("%s holds old data at byte %d: %q", name, i, b[i:min(i+40, len(b))])
			}
		}
	}
	b := make([]byte, 15000)
	f.ReadAt(b, int64(journal))
	if firstNonZero(b) >= 0 {
		t.Error("STATE still holds the old installation's journal where the image has a hole")
	}
	sigs, err := ProbeDisk(f, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sigs {
		if !s.Table {
			t.Errorf("after reinstall the disk still shows %s", s)
		}
	}
	hdr := make([]byte, 512)
	f.ReadAt(hdr, 512)
	if g := guidText(hdr[56:72]); g == imgGUID {
		t.Errorf("installed disk keeps the image's disk GUID %s", g)
	}
}

// PartitionNameOf is the GPT name of config slot s.
func PartitionNameOf(s string) string { return slot.PartitionNamePrefix + s }

func guidText(b []byte) string {
	return strings.ToUpper(hex.EncodeToString([]byte{b[3], b[2], b[1], b[0]}) + "-" + hex.EncodeToString([]byte{b[5], b[4]}) + "-" +
		hex.EncodeToString([]byte{b[7], b[6]}) + "-" + hex.EncodeToString(b[8:10]) + "-" + hex.EncodeToString(b[10:16]))
}
