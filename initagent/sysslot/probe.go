package sysslot

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// Signature is something found on a disk: what, and the byte offset of its
// magic from the start of the disk.
type Signature struct {
	What   string
	Offset int64
	// Table is true for partition tables (MBR, GPT).
	Table bool
}

func (s Signature) String() string { return fmt.Sprintf("%s at byte %d", s.What, s.Offset) }

// ProbeSpan is how much of a disk's head and of its tail ProbeDisk reads.
const ProbeSpan = 1 << 20

// ProbeDisk looks for partition tables, filesystems, volume managers, RAID
// members, encrypted volumes and other users of a whole disk of size bytes,
// by their magic at the offsets blkid and wipefs know (the first and last
// MiB cover them all): MBR and GPT (primary and the backup at the end),
// ext2/3/4, XFS, btrfs, FAT, NTFS, swap, ISO 9660, squashfs, LVM2 physical
// volumes, Linux MD superblocks 0.90 (end), 1.0 (end), 1.1 (start) and 1.2
// (4 KiB), ZFS labels (uberblocks of the two labels at the start and the two
// at the end), Ceph BlueStore and LUKS 1/2. When none is found, any
// non-zero byte in the first or last MiB is reported as unrecognised data:
// only a disk that reads as zeroes there counts as empty. A read error is
// returned as is: the caller must treat the disk as not empty.
func ProbeDisk(r io.ReaderAt, size int64) ([]Signature, error) {
	headLen := min(size, ProbeSpan)
	head := make([]byte, headLen)
	if _, err := r.ReadAt(head, 0); err != nil {
		return nil, fmt.Errorf("read bytes 0–%d: %w", headLen, err)
	}
	tailStart := max(0, size-ProbeSpan)
	tail := make([]byte, size-tailStart)
	if _, err := r.ReadAt(tail, tailStart); err != nil {
		return nil, fmt.Errorf("read bytes %d–%d: %w", tailStart, size, err)
	}
	p := prober{head: head, tail: tail, tailStart: tailStart, size: size}
	p.run()
	if len(p.found) == 0 {
		if i := firstNonZero(head); i >= 0 {
			p.add("data no probe recognises (not zeroes)", int64(i), false)
		} else if i := firstNonZero(tail); i >= 0 {
			p.add("data no probe recognises (not zeroes)", tailStart+int64(i), false)
		}
	}
	return p.found, nil
}

type prober struct {
	head, tail []byte
	tailStart  int64
	size       int64
	found      []Signature
}

// at returns n bytes at off, or nil when they were not read.
func (p *prober) at(off, n int64) []byte {
	switch {
	case off < 0 || n < 0:
		return nil
	case off+n <= int64(len(p.head)):
		return p.head[off : off+n]
	case off >= p.tailStart && off+n <= p.size:
		return p.tail[off-p.tailStart : off-p.tailStart+n]
	}
	return nil
}

func (p *prober) is(off int64, magic string) bool {
	b := p.at(off, int64(len(magic)))
	return b != nil && string(b) == magic
}

func (p *prober) add(what string, off int64, table bool) {
	for _, s := range p.found {
		if s.Offset == off && s.What == what {
			return
		}
	}
	p.found = append(p.found, Signature{What: what, Offset: off, Table: table})
}

func (p *prober) magic(what string, off int64, magic string) {
	if p.is(off, magic) {
		p.add(what, off, false)
	}
}

const (
	mdMagic  = 0xa92b4efc
	zfsMagic = 0x00bab10c
)

func (p *prober) run() {
	// Partition tables: GPT at LBA 1 (512- or 4096-byte sectors) and its
	// backup at the last LBA; an MBR whose entries are not only the GPT's
	// protective one (FAT and NTFS boot sectors carry 55 AA as well).
	for _, lss := range []int64{512, 4096} {
		if p.is(lss, "EFI PART") {
			p.add("GPT partition table header", lss, true)
		}
		if p.size-lss > lss && p.is(p.size-lss, "EFI PART") {
			p.add("backup GPT partition table header", p.size-lss, true)
		}
	}
	if b := p.at(0, 512); b != nil && b[510] == 0x55 && b[511] == 0xAA {
		fat := strings.HasPrefix(string(b[54:62]), "FAT") || string(b[82:90]) == "FAT32   "
		ntfs := string(b[3:11]) == "NTFS    "
		switch {
		case fat:
			p.add("FAT filesystem (vfat)", 0, false)
		case ntfs:
		case b[446+4] == 0xEE:
			p.add("protective MBR of a GPT", 510, true)
		default:
			p.add("MBR partition table or boot sector (55 AA)", 510, true)
		}
	}
	p.magic("NTFS filesystem", 3, "NTFS    ")
	p.magic("XFS filesystem", 0, "XFSB")
	p.magic("squashfs filesystem", 0, "hsqs")
	p.magic("squashfs filesystem (big-endian)", 0, "sqsh")
	p.magic("ext2/3/4 filesystem", 1024+0x38, "\x53\xef")
	p.magic("btrfs filesystem", 65536+0x40, "_BHRfS_M")
	p.magic("ISO 9660 filesystem", 32769, "CD001")
	p.magic("Ceph BlueStore OSD", 0, "bluestore block device")
	p.magic("LUKS encrypted volume", 0, "LUKS\xba\xbe")
	for _, off := range []int64{0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000} {
		p.magic("LUKS2 encrypted volume (secondary header)", off, "SKUL\xba\xbe")
	}
	for _, ps := range []int64{4096, 8192, 16384, 65536} {
		p.magic("Linux swap", ps-10, "SWAPSPACE2")
		p.magic("Linux swap (old)", ps-10, "SWAP-SPACE")
	}
	for s := int64(0); s < 4; s++ {
		if p.is(s*512, "LABEL_ONE") && p.is(s*512+24, "LVM2 001") {
			p.add("LVM2 physical volume", s*512, false)
		}
	}
	// MD RAID superblocks: 1.1 at 0, 1.2 at 4 KiB, 1.0 8–12 KiB before the
	// end, 0.90 in the last 64 KiB-aligned 64 KiB (host byte order).
	p.md("Linux RAID member (md 1.1)", 0, false)
	p.md("Linux RAID member (md 1.2)", 4096, false)
	if sectors := p.size / 512; sectors > 16 {
		p.md("Linux RAID member (md 1.0)", ((sectors-16)&^7)*512, false)
	}
	if p.size >= 128<<10 {
		p.md("Linux RAID member (md 0.90)", p.size&^(64<<10-1)-64<<10, true)
	}
	// ZFS: four 256 KiB labels, two at the start, two at the end (of the
	// size rounded down to 256 KiB); each has its uberblock ring in its
	// second half, one uberblock per 1 KiB or more.
	const label = 256 << 10
	aligned := p.size &^ (label - 1)
	for _, l := range []int64{0, label, aligned - 2*label, aligned - label} {
		if l < 0 {
			continue
		}
		for off := l + label/2; off < l+label; off += 1024 {
			b := p.at(off, 8)
			if b != nil && (binary.LittleEndian.Uint64(b) == zfsMagic || binary.BigEndian.Uint64(b) == zfsMagic) {
				p.add("ZFS pool member (uberblock)", off, false)
				break
			}
		}
	}
}

func (p *prober) md(what string, off int64, bothEndians bool) {
	b := p.at(off, 4)
	if b == nil {
		return
	}
	if binary.LittleEndian.Uint32(b) == mdMagic || bothEndians && binary.BigEndian.Uint32(b) == mdMagic {
		p.add(what, off, false)
	}
}

func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

// describe renders what was found for an error message.
func describe(sigs []Signature) string {
	var parts []string
	for _, s := range sigs {
		parts = append(parts, s.String())
	}
	return strings.Join(parts, "; ")
}

// hasTable reports whether sigs include a partition table.
func hasTable(sigs []Signature) bool {
	for _, s := range sigs {
		if s.Table {
			return true
		}
	}
	return false
}
