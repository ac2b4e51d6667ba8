package sysslot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Layout is where the partitions of a ballast disk are.
type Layout struct {
	Disk  string            // whole-disk device, "/dev/vda"
	Parts map[string]string // GPT partition name → device, "ESP" → "/dev/vda1"
	Index map[string]int    // GPT partition name → partition number
}

// FindLayout looks through root/sys/class/block for the disk whose GPT
// has ESP, SYSTEM-A and SYSTEM-B partitions. With several such disks the
// first by name wins.
func FindLayout(root string) (*Layout, error) {
	uevents, _ := filepath.Glob(filepath.Join(root, "sys/class/block/*/uevent"))
	disks := map[string]*Layout{}
	for _, u := range uevents {
		kv := readUevent(u)
		if kv["DEVTYPE"] != "partition" || kv["PARTNAME"] == "" {
			continue
		}
		part := filepath.Dir(u)
		if r, err := filepath.EvalSymlinks(part); err == nil {
			part = r
		}
		disk := filepath.Base(filepath.Dir(part))
		l := disks[disk]
		if l == nil {
			l = &Layout{Disk: filepath.Join(root, "dev", disk), Parts: map[string]string{}, Index: map[string]int{}}
			disks[disk] = l
		}
		l.Parts[kv["PARTNAME"]] = filepath.Join(root, "dev", kv["DEVNAME"])
		l.Index[kv["PARTNAME"]], _ = strconv.Atoi(kv["PARTN"])
	}
	var names []string
	for n, l := range disks {
		if l.Parts[PartESP] != "" && l.Parts[PartSystemA] != "" && l.Parts[PartSystemB] != "" {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, ErrNoDisk
	}
	sort.Strings(names)
	return disks[names[0]], nil
}

// ErrNoDisk means no disk with ballast's layout was found.
var ErrNoDisk = errors.New("no disk with ESP, SYSTEM-A and SYSTEM-B partitions")

func readUevent(path string) map[string]string {
	data, _ := os.ReadFile(path)
	kv := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

// GPT header fields (UEFI 2.10 §5.3.2).
const (
	hdrCRC        = 16
	hdrMyLBA      = 24
	hdrAltLBA     = 32
	hdrLastUsable = 48
	hdrEntriesLBA = 72
	hdrNumEntries = 80
	hdrEntrySize  = 84
	hdrEntriesCRC = 88
)

// GrowGPT moves the backup GPT to the end of the disk at path (after an
// image was written to a larger disk) and extends the partition named
// last, when it is the last one, up to the last usable LBA. It returns the
// partition's new extent in bytes, and whether anything changed. Both
// copies are written with fresh CRCs, the backup first.
func GrowGPT(path, last string) (start, length int64, changed bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, false, err
	}
	defer f.Close()
	lss := int64(512)
	if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeDevice != 0 {
		n, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
		if err != nil {
			return 0, 0, false, fmt.Errorf("sector size of %s: %w", path, err)
		}
		lss = int64(n)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, 0, false, err
	}
	sectors := uint64(size / lss)
	hdr := make([]byte, lss)
	if _, err := f.ReadAt(hdr, lss); err != nil {
		return 0, 0, false, fmt.Errorf("read GPT of %s: %w", path, err)
	}
	if string(hdr[:8]) != "EFI PART" {
		return 0, 0, false, fmt.Errorf("%s has no GPT", path)
	}
	hs := binary.LittleEndian.Uint32(hdr[12:])
	if hs < 92 || int64(hs) > lss || gptHeaderCRC(hdr[:hs]) != binary.LittleEndian.Uint32(hdr[hdrCRC:]) {
		return 0, 0, false, fmt.Errorf("primary GPT header of %s does not verify", path)
	}
	num, esz := binary.LittleEndian.Uint32(hdr[hdrNumEntries:]), binary.LittleEndian.Uint32(hdr[hdrEntrySize:])
	if esz < 128 || uint64(num)*uint64(esz) > 1<<20 {
		return 0, 0, false, fmt.Errorf("GPT of %s: unusable entry array", path)
	}
	entries := make([]byte, int(num)*int(esz))
	if _, err := f.ReadAt(entries, int64(binary.LittleEndian.Uint64(hdr[hdrEntriesLBA:]))*lss); err != nil {
		return 0, 0, false, err
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(hdr[hdrEntriesCRC:]) {
		return 0, 0, false, fmt.Errorf("GPT entries of %s do not verify", path)
	}
	arraySectors := (uint64(len(entries)) + uint64(lss) - 1) / uint64(lss)
	newAlt := sectors - 1
	newLastUsable := newAlt - arraySectors - 1
	oldAlt := binary.LittleEndian.Uint64(hdr[hdrAltLBA:])

	idx, maxEnd := -1, uint64(0)
	for i := 0; i < int(num); i++ {
		e := entries[i*int(esz) : (i+1)*int(esz)]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		end := binary.LittleEndian.Uint64(e[40:])
		maxEnd = max(maxEnd, end)
		if entryName(e) == last {
			idx = i
		}
	}
	if idx < 0 {
		return 0, 0, false, fmt.Errorf("GPT of %s has no partition %s", path, last)
	}
	e := entries[idx*int(esz) : (idx+1)*int(esz)]
	first, end := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])
	if newAlt < oldAlt {
		return 0, 0, false, fmt.Errorf("%s is smaller than its GPT says (backup at LBA %d, disk ends at %d): write the image to a disk at least as large", path, oldAlt, newAlt)
	}
	// STATE ends on a MiB boundary, like the image builder places it.
	align := uint64(1<<20) / uint64(lss)
	newEnd := (newLastUsable+1)/align*align - 1
	grow := end == maxEnd && newEnd > end
	if oldAlt == newAlt && !grow {
		return int64(first) * lss, int64(end-first+1) * lss, false, nil
	}
	if grow {
		end = newEnd
		binary.LittleEndian.PutUint64(e[40:], end)
	}
	ecrc := crc32.ChecksumIEEE(entries)

	primary := bytes.Clone(hdr)
	binary.LittleEndian.PutUint64(primary[hdrAltLBA:], newAlt)
	binary.LittleEndian.PutUint64(primary[hdrLastUsable:], newLastUsable)
	binary.LittleEndian.PutUint32(primary[hdrEntriesCRC:], ecrc)
	setHeaderCRC(primary[:hs])
	backup := bytes.Clone(primary)
	binary.LittleEndian.PutUint64(backup[hdrMyLBA:], newAlt)
	binary.LittleEndian.PutUint64(backup[hdrAltLBA:], 1)
	binary.LittleEndian.PutUint64(backup[hdrEntriesLBA:], newAlt-arraySectors)
	setHeaderCRC(backup[:hs])

	writes := []struct {
		b   []byte
		off int64
	}{
		{entries, int64(newAlt-arraySectors) * lss},
		{backup, int64(newAlt) * lss},
		{nil, 0}, // sync point
		{entries, int64(binary.LittleEndian.Uint64(hdr[hdrEntriesLBA:])) * lss},
		{primary, lss},
		{nil, 0},
		{make([]byte, lss), int64(oldAlt) * lss}, // the stale backup header
		{nil, 0},
	}
	for _, w := range writes {
		if w.b == nil {
			if err := f.Sync(); err != nil {
				return 0, 0, false, err
			}
			continue
		}
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			return 0, 0, false, fmt.Errorf("rewrite GPT of %s: %w", path, err)
		}
	}
	// The protective MBR's partition covers the disk (or 2 TiB at most).
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err == nil && mbr[446+4] == 0xEE {
		binary.LittleEndian.PutUint32(mbr[446+12:], uint32(min(sectors-1, 0xFFFFFFFF)))
		if _, err := f.WriteAt(mbr[446:462], 446); err != nil {
			return 0, 0, false, err
		}
		_ = f.Sync()
	}
	return int64(first) * lss, int64(end-first+1) * lss, true, nil
}

func entryName(e []byte) string {
	u := make([]uint16, 36)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(e[56+2*i:])
	}
	n := 0
	for n < len(u) && u[n] != 0 {
		n++
	}
	return string(utf16.Decode(u[:n]))
}

func gptHeaderCRC(h []byte) uint32 {
	c := bytes.Clone(h)
	clear(c[hdrCRC : hdrCRC+4])
	return crc32.ChecksumIEEE(c)
}

func setHeaderCRC(h []byte) {
	binary.LittleEndian.PutUint32(h[hdrCRC:], gptHeaderCRC(h))
}

const ioctlBLKPG = 0x1269

// resizePartition tells the kernel a partition of the disk grew, while it
// may be in use (BLKPG_RESIZE_PARTITION; BLKRRPART refuses on a busy disk).
func resizePartition(disk string, pno int, start, length int64) error {
	f, err := os.OpenFile(disk, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	p := unix.BlkpgPartition{Start: start, Length: length, Pno: int32(pno)}
	arg := unix.BlkpgIoctlArg{Op: unix.BLKPG_RESIZE_PARTITION, Datalen: int32(unsafe.Sizeof(p)), Data: (*byte)(unsafe.Pointer(&p))}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlBLKPG, uintptr(unsafe.Pointer(&arg)))
	if errno != 0 {
		return fmt.Errorf("BLKPG resize partition %d of %s: %w", pno, disk, errno)
	}
	return nil
}

// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64).
const ext4IocResizeFS = 0x40086610

// growExt4 grows the ext4 filesystem mounted at dir to blocks filesystem
// blocks (online resize, as resize2fs does for a mounted filesystem).
func growExt4(dir string, blocks uint64) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ext4IocResizeFS, uintptr(unsafe.Pointer(&blocks)))
	if errno != 0 {
		return fmt.Errorf("EXT4_IOC_RESIZE_FS to %d blocks: %w", blocks, errno)
	}
	return nil
}

// ext4Size reads an ext4 superblock: block size and block count.
func ext4Size(dev string) (blockSize int64, blocks uint64, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, 0, err
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, 0, fmt.Errorf("%s holds no ext4 filesystem", dev)
	}
	blockSize = 1024 << binary.LittleEndian.Uint32(sb[0x18:])
	blocks = uint64(binary.LittleEndian.Uint32(sb[0x4:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	return blockSize, blocks, nil
}

// sectorSize is the logical sector size of f: BLKSSZGET for a block
// device, 512 for an image file.
func sectorSize(f *os.File) (int64, error) {
	if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeDevice != 0 {
		n, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
		if err != nil {
			return 0, fmt.Errorf("sector size of %s: %w", f.Name(), err)
		}
		return int64(n), nil
	}
	return 512, nil
}

// readPrimaryGPT reads and verifies the primary GPT header and its entries.
func readPrimaryGPT(f *os.File, lss int64) (hdr, entries []byte, err error) {
	hdr = make([]byte, lss)
	if _, err := f.ReadAt(hdr, lss); err != nil {
		return nil, nil, fmt.Errorf("read GPT of %s: %w", f.Name(), err)
	}
	if string(hdr[:8]) != "EFI PART" {
		return nil, nil, fmt.Errorf("%s has no GPT", f.Name())
	}
	hs := binary.LittleEndian.Uint32(hdr[12:])
	if hs < 92 || int64(hs) > lss || gptHeaderCRC(hdr[:hs]) != binary.LittleEndian.Uint32(hdr[hdrCRC:]) {
		return nil, nil, fmt.Errorf("primary GPT header of %s does not verify", f.Name())
	}
	num, esz := binary.LittleEndian.Uint32(hdr[hdrNumEntries:]), binary.LittleEndian.Uint32(hdr[hdrEntrySize:])
	if esz < 128 || uint64(num)*uint64(esz) > 1<<20 {
		return nil, nil, fmt.Errorf("GPT of %s: unusable entry array", f.Name())
	}
	entries = make([]byte, int(num)*int(esz))
	if _, err := f.ReadAt(entries, int64(binary.LittleEndian.Uint64(hdr[hdrEntriesLBA:]))*lss); err != nil {
		return nil, nil, err
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(hdr[hdrEntriesCRC:]) {
		return nil, nil, fmt.Errorf("GPT entries of %s do not verify", f.Name())
	}
	return hdr, entries, nil
}

// extent is a partition's place on its disk, in bytes.
type extent struct{ off, size int64 }

// gptPartitions maps the GPT partition names of f to their extents.
func gptPartitions(f *os.File) (map[string]extent, error) {
	lss, err := sectorSize(f)
	if err != nil {
		return nil, err
	}
	hdr, entries, err := readPrimaryGPT(f, lss)
	if err != nil {
		return nil, err
	}
	esz := int(binary.LittleEndian.Uint32(hdr[hdrEntrySize:]))
	parts := map[string]extent{}
	for i := 0; i+esz <= len(entries); i += esz {
		e := entries[i : i+esz]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first, last := int64(binary.LittleEndian.Uint64(e[32:])), int64(binary.LittleEndian.Uint64(e[40:]))
		parts[entryName(e)] = extent{first * lss, (last - first + 1) * lss}
	}
	return parts, nil
}

// RelabelGPT gives the disk at path and each of its partitions a new
// random unique GUID (as sgdisk -G does), in both GPT copies with fresh
// CRCs, the backup first. Images carry GUIDs fixed at build time; an
// installed disk gets its own, and config slot records are bound to them,
// so a record an earlier installation left reads as empty.
func RelabelGPT(path string, rnd io.Reader) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	lss, err := sectorSize(f)
	if err != nil {
		return err
	}
	hdr, entries, err := readPrimaryGPT(f, lss)
	if err != nil {
		return err
	}
	newGUID := func(b []byte) error {
		if _, err := io.ReadFull(rnd, b[:16]); err != nil {
			return fmt.Errorf("random GUID: %w", err)
		}
		b[7] = b[7]&0x0f | 0x40 // version 4 (time_hi is little-endian on disk)
		b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
		return nil
	}
	esz := int(binary.LittleEndian.Uint32(hdr[hdrEntrySize:]))
	for i := 0; i+esz <= len(entries); i += esz {
		if e := entries[i : i+esz]; !bytes.Equal(e[:16], make([]byte, 16)) {
			if err := newGUID(e[16:32]); err != nil {
				return err
			}
		}
	}
	hs := binary.LittleEndian.Uint32(hdr[12:])
	primary := bytes.Clone(hdr)
	if err := newGUID(primary[56:72]); err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(primary[hdrEntriesCRC:], crc32.ChecksumIEEE(entries))
	setHeaderCRC(primary[:hs])

	alt := binary.LittleEndian.Uint64(hdr[hdrAltLBA:])
	arraySectors := (uint64(len(entries)) + uint64(lss) - 1) / uint64(lss)
	backupEntries := alt - arraySectors
	old := make([]byte, lss)
	if _, err := f.ReadAt(old, int64(alt)*lss); err == nil && string(old[:8]) == "EFI PART" &&
		binary.LittleEndian.Uint64(old[hdrMyLBA:]) == alt {
		backupEntries = binary.LittleEndian.Uint64(old[hdrEntriesLBA:])
	}
	if backupEntries <= binary.LittleEndian.Uint64(hdr[hdrLastUsable:]) || backupEntries+arraySectors > alt {
		return fmt.Errorf("backup GPT of %s at LBA %d overlaps its partitions", path, alt)
	}
	backup := bytes.Clone(primary)
	binary.LittleEndian.PutUint64(backup[hdrMyLBA:], alt)
	binary.LittleEndian.PutUint64(backup[hdrAltLBA:], 1)
	binary.LittleEndian.PutUint64(backup[hdrEntriesLBA:], backupEntries)
	setHeaderCRC(backup[:hs])
	for _, w := range []struct {
		b   []byte
		off int64
	}{
		{entries, int64(backupEntries) * lss},
		{backup, int64(alt) * lss},
		{nil, 0},
		{entries, int64(binary.LittleEndian.Uint64(hdr[hdrEntriesLBA:])) * lss},
		{primary, lss},
		{nil, 0},
	} {
		if w.b == nil {
			if err := f.Sync(); err != nil {
				return err
			}
			continue
		}
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			return fmt.Errorf("rewrite GPT of %s: %w", path, err)
		}
	}
	return nil
}
