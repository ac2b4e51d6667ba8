package slot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// The GPT layout used here is UEFI 2.10 §5.3: a header at LBA 1 (primary) and
// at the last LBA (backup), each with its own partition entry array; both
// headers carry a CRC-32 of themselves and of their entry array.
const (
	gptSignature = "EFI PART"
	gptMinHeader = 92 // header size of revision 1.0

	// Offsets in the header.
	gptHdrSize    = 12
	gptHdrCRC     = 16
	gptMyLBA      = 24
	gptAltLBA     = 32
	gptFirstUsed  = 40
	gptLastUsed   = 48
	gptDiskGUID   = 56
	gptEntriesLBA = 72
	gptNumEntries = 80
	gptEntrySize  = 84
	gptEntriesCRC = 88

	// Offsets in a partition entry.
	gptEntryGUID  = 16 // unique partition GUID
	gptEntryFirst = 32
	gptEntryLast  = 40
	gptEntryAttrs = 48
	gptEntryName  = 56 // 36 UTF-16LE code units
	gptEntryMin   = 128

	maxEntryArray = 1 << 20 // sanity bound; the usual array is 16 KiB
)

// ChromeOS kernel partition attribute bits (cgpt, "GPT attributes" in the
// ChromiumOS disk format doc): priority 48–51, tries 52–55, successful 56.
const (
	attrPriorityShift = 48
	attrTriesShift    = 52
	attrSuccessfulBit = 56
	attrSelectorMask  = uint64(0x1ff) << attrPriorityShift
)

func selectorFromAttrs(a uint64) Selector {
	return Selector{
		Priority:   uint8(a >> attrPriorityShift & 0xf),
		Tries:      uint8(a >> attrTriesShift & 0xf),
		Successful: a>>attrSuccessfulBit&1 == 1,
	}
}

// attrsWithSelector replaces the selector bits of a and keeps all others
// (required, legacy-bootable, type-specific bits 60–63 …).
func attrsWithSelector(a uint64, s Selector) uint64 {
	a &^= attrSelectorMask
	a |= uint64(s.Priority&0xf) << attrPriorityShift
	a |= uint64(s.Tries&0xf) << attrTriesShift
	if s.Successful {
		a |= 1 << attrSuccessfulBit
	}
	return a
}

// gptCopy is one copy (primary or backup) of the GPT.
type gptCopy struct {
	sector     []byte // the whole header sector as read
	entries    []byte // the entry array, numEntries*entrySize bytes
	myLBA      uint64
	altLBA     uint64
	firstUsed  uint64
	lastUsed   uint64
	entriesLBA uint64
	numEntries uint32
	entrySize  uint32
}

func (c *gptCopy) arraySectors(lss int) uint64 {
	return (uint64(len(c.entries)) + uint64(lss) - 1) / uint64(lss)
}

// readGPTCopy reads and validates the GPT header at lba and its entry array.
// When the header verifies but the array does not, it returns the copy and
// an error, so the caller can still use the header's alternate LBA.
func readGPTCopy(r io.ReaderAt, lss int, lba uint64) (*gptCopy, error) {
	sec := make([]byte, lss)
	if _, err := r.ReadAt(sec, int64(lba)*int64(lss)); err != nil {
		return nil, fmt.Errorf("read GPT header at LBA %d: %w", lba, err)
	}
	if string(sec[0:8]) != gptSignature {
		return nil, fmt.Errorf("no GPT header at LBA %d (signature %q)", lba, sec[0:8])
	}
	hs := binary.LittleEndian.Uint32(sec[gptHdrSize:])
	if hs < gptMinHeader || int(hs) > lss {
		return nil, fmt.Errorf("GPT header at LBA %d has size %d, want %d–%d", lba, hs, gptMinHeader, lss)
	}
	if got, want := headerCRC(sec[:hs]), binary.LittleEndian.Uint32(sec[gptHdrCRC:]); got != want {
		return nil, fmt.Errorf("GPT header at LBA %d: CRC %08x, stored %08x", lba, got, want)
	}
	c := &gptCopy{
		sector:     sec,
		myLBA:      binary.LittleEndian.Uint64(sec[gptMyLBA:]),
		altLBA:     binary.LittleEndian.Uint64(sec[gptAltLBA:]),
		firstUsed:  binary.LittleEndian.Uint64(sec[gptFirstUsed:]),
		lastUsed:   binary.LittleEndian.Uint64(sec[gptLastUsed:]),
		entriesLBA: binary.LittleEndian.Uint64(sec[gptEntriesLBA:]),
		numEntries: binary.LittleEndian.Uint32(sec[gptNumEntries:]),
		entrySize:  binary.LittleEndian.Uint32(sec[gptEntrySize:]),
	}
	if c.myLBA != lba {
		return nil, fmt.Errorf("GPT header at LBA %d says it is at LBA %d", lba, c.myLBA)
	}
	if c.entrySize < gptEntryMin || c.entrySize%8 != 0 || c.numEntries == 0 ||
		uint64(c.numEntries)*uint64(c.entrySize) > maxEntryArray {
		return nil, fmt.Errorf("GPT header at LBA %d: unusable entry array of %d entries of %d bytes", lba, c.numEntries, c.entrySize)
	}
	c.entries = make([]byte, int(c.numEntries)*int(c.entrySize))
	if _, err := r.ReadAt(c.entries, int64(c.entriesLBA)*int64(lss)); err != nil {
		return nil, fmt.Errorf("read GPT entries at LBA %d: %w", c.entriesLBA, err)
	}
	if got, want := crc32.ChecksumIEEE(c.entries), binary.LittleEndian.Uint32(sec[gptEntriesCRC:]); got != want {
		return c, fmt.Errorf("GPT entries at LBA %d: CRC %08x, stored %08x", c.entriesLBA, got, want)
	}
	return c, nil
}

// headerCRC is the CRC-32 of a GPT header with its CRC field taken as zero.
func headerCRC(hdr []byte) uint32 {
	c := bytes.Clone(hdr)
	clear(c[gptHdrCRC : gptHdrCRC+4])
	return crc32.ChecksumIEEE(c)
}

// gptTable is what was found on the disk: a valid copy is non-nil.
type gptTable struct {
	lss        int
	primary    *gptCopy
	backup     *gptCopy
	primaryErr error
	backupErr  error
}

// readGPT reads both copies. The backup is looked for where a verified
// primary header says, else at the last LBA of the disk.
func readGPT(r io.ReaderAt, lss int, diskSectors uint64) gptTable {
	t := gptTable{lss: lss}
	p, err := readGPTCopy(r, lss, 1)
	if err != nil {
		t.primaryErr = err
	} else {
		t.primary = p
	}
	backupLBA := diskSectors - 1
	if p != nil && p.altLBA > 1 && p.altLBA < diskSectors {
		backupLBA = p.altLBA
	}
	b, err := readGPTCopy(r, lss, backupLBA)
	if err != nil {
		t.backupErr = err
	} else {
		t.backup = b
	}
	return t
}

// current is the copy a reader trusts: the primary when it verifies, else the
// backup (UEFI 2.10 §5.3.2).
func (t gptTable) current() (*gptCopy, error) {
	if t.primary != nil {
		return t.primary, nil
	}
	if t.backup != nil {
		return t.backup, nil
	}
	return nil, fmt.Errorf("no valid GPT: primary: %v; backup: %v", t.primaryErr, t.backupErr)
}

// gptPart is a partition entry found by name.
type gptPart struct {
	index       int // 0-based entry index
	first, last uint64
	attrs       uint64
	guid        string // unique partition GUID
}

// diskGUID is the copy's disk GUID in text form.
func (c *gptCopy) diskGUID() string { return guidString(c.sector[gptDiskGUID : gptDiskGUID+16]) }

// guidString renders a GPT GUID (first three fields little-endian) as text.
func guidString(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", binary.LittleEndian.Uint32(b[0:4]),
		binary.LittleEndian.Uint16(b[4:6]), binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16])
}

var errNoPartition = errors.New("no partition")

// find returns the entry whose GPT partition name is name; it must be unique.
func (c *gptCopy) find(name string) (gptPart, error) {
	var found []gptPart
	for i := 0; i < int(c.numEntries); i++ {
		e := c.entries[i*int(c.entrySize) : (i+1)*int(c.entrySize)]
		if allZero(e[0:16]) { // unused entry: type GUID zero
			continue
		}
		if entryName(e) != name {
			continue
		}
		found = append(found, gptPart{
			index: i,
			first: binary.LittleEndian.Uint64(e[gptEntryFirst:]),
			last:  binary.LittleEndian.Uint64(e[gptEntryLast:]),
			attrs: binary.LittleEndian.Uint64(e[gptEntryAttrs:]),
			guid:  guidString(e[gptEntryGUID : gptEntryGUID+16]),
		})
	}
	switch len(found) {
	case 0:
		return gptPart{}, fmt.Errorf("%w named %q", errNoPartition, name)
	case 1:
		return found[0], nil
	}
	return gptPart{}, fmt.Errorf("%d partitions named %q (entries %d and %d): rename all but one", len(found), name, found[0].index+1, found[1].index+1)
}

func entryName(e []byte) string {
	u := make([]uint16, 0, 36)
	for i := gptEntryName; i+1 < gptEntryMin; i += 2 {
		v := binary.LittleEndian.Uint16(e[i:])
		if v == 0 {
			break
		}
		u = append(u, v)
	}
	return string(utf16.Decode(u))
}

// gptWrite is one sector range to write.
type gptWrite struct {
	what string
	off  int64
	b    []byte
}

// setAttrs plans the rewrite of entry index's attributes in both copies, from
// the copy a reader trusts. The result is written in order: backup array and
// header, sync, primary array and header, sync. A crash before the backup
// header is complete leaves the old primary (valid) in charge; after it, a
// torn primary fails its CRC and readers take the new backup; the primary
// complete means both agree. The copy that was not trusted (corrupt, or left
// stale by a crash) is rebuilt from the trusted one, which repairs it.
func (t gptTable) setAttrs(index int, attrs uint64, diskSectors uint64) (backup, primary []gptWrite, err error) {
	src, err := t.current()
	if err != nil {
		return nil, nil, err
	}
	entries := bytes.Clone(src.entries)
	binary.LittleEndian.PutUint64(entries[index*int(src.entrySize)+gptEntryAttrs:], attrs)
	n := src.arraySectors(t.lss)

	// Where each copy lives, from the trusted header.
	var pEntries, bLBA, bEntries uint64
	if src == t.primary {
		pEntries, bLBA = src.entriesLBA, src.altLBA
		bEntries = bLBA - n
		if t.backup != nil && t.backup.myLBA == bLBA {
			bEntries = t.backup.entriesLBA
		}
	} else {
		bLBA, bEntries = src.myLBA, src.entriesLBA
		pEntries = 2 // the primary's array follows its header (UEFI 2.10 §5.3.1)
	}
	// Never let a header or array written here land on partition data.
	if bLBA >= diskSectors || bLBA <= src.lastUsed || bEntries <= src.lastUsed || bEntries+n > bLBA {
		return nil, nil, fmt.Errorf("BUG: backup GPT at LBA %d, entries at %d, overlaps usable LBAs %d–%d or the disk end %d",
			bLBA, bEntries, src.firstUsed, src.lastUsed, diskSectors)
	}
	if pEntries < 2 || pEntries+n > src.firstUsed {
		return nil, nil, fmt.Errorf("BUG: primary GPT entries at LBA %d overlap usable LBAs from %d", pEntries, src.firstUsed)
	}

	header := func(my, alt, entriesLBA uint64) []byte {
		h := bytes.Clone(src.sector)
		binary.LittleEndian.PutUint64(h[gptMyLBA:], my)
		binary.LittleEndian.PutUint64(h[gptAltLBA:], alt)
		binary.LittleEndian.PutUint64(h[gptEntriesLBA:], entriesLBA)
		binary.LittleEndian.PutUint32(h[gptEntriesCRC:], crc32.ChecksumIEEE(entries))
		hs := binary.LittleEndian.Uint32(h[gptHdrSize:])
		binary.LittleEndian.PutUint32(h[gptHdrCRC:], headerCRC(h[:hs]))
		return h
	}
	lss := int64(t.lss)
	backup = []gptWrite{
		{"backup GPT entries", int64(bEntries) * lss, entries},
		{"backup GPT header", int64(bLBA) * lss, header(bLBA, 1, bEntries)},
	}
	primary = []gptWrite{
		{"primary GPT entries", int64(pEntries) * lss, entries},
		{"primary GPT header", lss, header(1, bLBA, pEntries)},
	}
	return backup, primary, nil
}
