package source

// A read-only FAT12/16/32 reader, enough to find a volume label and read a
// small file by path. Layout from Microsoft's "FAT: General Overview of
// On-Disk Format" (fatgen103); long names from the VFAT LFN scheme.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"unicode/utf16"
)

// maxDirSize caps how much of one directory is read; config drives have a
// handful of entries.
const maxDirSize = 1 << 20

type fatFS struct {
	r            io.ReaderAt
	bits         int // 12, 16 or 32
	clusterSize  int64
	fatOffset    int64
	rootOffset   int64 // FAT12/16: the fixed root directory
	rootSize     int64
	rootCluster  uint32 // FAT32: first cluster of the root directory
	dataOffset   int64  // cluster 2 starts here
	clusterCount uint32
	bootLabel    string // from the extended BPB, if any
}

var errNotFAT = errors.New("not a FAT filesystem")

// openFAT reads and checks the boot sector (fatgen103 "Boot Sector and BPB").
func openFAT(r io.ReaderAt) (*fatFS, error) {
	bs := make([]byte, 512)
	if _, err := r.ReadAt(bs, 0); err != nil {
		return nil, err
	}
	if bs[510] != 0x55 || bs[511] != 0xAA || (bs[0] != 0xEB && bs[0] != 0xE9) {
		return nil, errNotFAT
	}
	le16 := func(o int) uint64 { return uint64(binary.LittleEndian.Uint16(bs[o:])) }
	le32 := func(o int) uint64 { return uint64(binary.LittleEndian.Uint32(bs[o:])) }
	bps := le16(11)       // BPB_BytsPerSec
	spc := uint64(bs[13]) // BPB_SecPerClus
	reserved := le16(14)  // BPB_RsvdSecCnt
	nFATs := uint64(bs[16])
	rootEntries := le16(17)
	total := le16(19) // BPB_TotSec16, else BPB_TotSec32
	if total == 0 {
		total = le32(32)
	}
	fatSize := le16(22) // BPB_FATSz16, else FAT32's BPB_FATSz32
	fat32 := fatSize == 0
	if fat32 {
		fatSize = le32(36)
	}
	switch bps {
	case 512, 1024, 2048, 4096:
	default:
		return nil, errNotFAT
	}
	if spc == 0 || spc&(spc-1) != 0 || reserved == 0 || nFATs == 0 || fatSize == 0 {
		return nil, errNotFAT
	}
	rootSectors := (rootEntries*32 + bps - 1) / bps
	meta := reserved + nFATs*fatSize + rootSectors
	if total <= meta {
		return nil, errNotFAT
	}
	f := &fatFS{
		r:            r,
		clusterSize:  int64(bps * spc),
		fatOffset:    int64(reserved * bps),
		rootOffset:   int64((reserved + nFATs*fatSize) * bps),
		rootSize:     int64(rootEntries * 32),
		dataOffset:   int64(meta * bps),
		clusterCount: uint32((total - meta) / spc),
	}
	// The FAT type is decided by the cluster count alone (fatgen103 "FAT Type Determination").
	switch {
	case f.clusterCount < 4085:
		f.bits = 12
	case f.clusterCount < 65525:
		f.bits = 16
	default:
		f.bits = 32
	}
	if fat32 != (f.bits == 32) {
		return nil, fmt.Errorf("%w: BPB says FAT32=%v but %d clusters", errNotFAT, fat32, f.clusterCount)
	}
	// Extended boot signature 0x29, then the 11-byte label (BS_VolLab).
	sigAt, labelAt := 38, 43
	if fat32 {
		sigAt, labelAt = 66, 71
		f.rootCluster = uint32(le32(44))
	}
	if bs[sigAt] == 0x29 {
		f.bootLabel = fatLabel(bs[labelAt : labelAt+11])
	}
	return f, nil
}

// fatLabel trims a space-padded label; "NO NAME" is mkfs's "no label".
func fatLabel(b []byte) string {
	s := strings.TrimRight(string(b), " \x00")
	if s == "NO NAME" {
		return ""
	}
	return s
}

// Label returns the volume label. The root directory's label entry wins
// over the boot sector's, as with blkid and Windows: tools that relabel a
// mounted filesystem update only the entry.
func (f *fatFS) Label() (string, error) {
	root, err := f.readRoot()
	if err != nil {
		return "", err
	}
	if _, label := parseFATDir(root); label != "" {
		return label, nil
	}
	return f.bootLabel, nil
}

func (f *fatFS) readRoot() ([]byte, error) {
	if f.bits == 32 {
		return f.readChain(f.rootCluster, maxDirSize)
	}
	if f.rootSize > maxDirSize {
		return nil, fmt.Errorf("FAT root directory of %d bytes is implausible", f.rootSize)
	}
	b := make([]byte, f.rootSize)
	if _, err := f.r.ReadAt(b, f.rootOffset); err != nil {
		return nil, fmt.Errorf("read FAT root directory: %w", err)
	}
	return b, nil
}

// next returns the cluster after c in its chain, and false at the end.
func (f *fatFS) next(c uint32) (uint32, bool, error) {
	var b [4]byte
	var v, eoc uint32
	switch f.bits {
	case 12:
		if _, err := f.r.ReadAt(b[:2], f.fatOffset+int64(c)+int64(c/2)); err != nil {
			return 0, false, err
		}
		v = uint32(binary.LittleEndian.Uint16(b[:]))
		if c%2 == 1 {
			v >>= 4
		}
		v, eoc = v&0xFFF, 0xFF8
	case 16:
		if _, err := f.r.ReadAt(b[:2], f.fatOffset+2*int64(c)); err != nil {
			return 0, false, err
		}
		v, eoc = uint32(binary.LittleEndian.Uint16(b[:])), 0xFFF8
	default:
		if _, err := f.r.ReadAt(b[:], f.fatOffset+4*int64(c)); err != nil {
			return 0, false, err
		}
		v, eoc = binary.LittleEndian.Uint32(b[:])&0x0FFFFFFF, 0x0FFFFFF8
	}
	return v, v < eoc, nil
}

// readChain reads the cluster chain from start, at most limit bytes
// (rounded up to a cluster).
func (f *fatFS) readChain(start uint32, limit int64) ([]byte, error) {
	var out []byte
	c := start
	for {
		if c < 2 || c-2 >= f.clusterCount {
			return nil, fmt.Errorf("FAT chain from cluster %d reaches invalid cluster %d: filesystem corrupt (run fsck.vfat)", start, c)
		}
		if int64(len(out)) >= limit {
			return out, nil
		}
		b := make([]byte, f.clusterSize)
		if _, err := f.r.ReadAt(b, f.dataOffset+int64(c-2)*f.clusterSize); err != nil {
			return nil, fmt.Errorf("read FAT cluster %d: %w", c, err)
		}
		out = append(out, b...)
		n, more, err := f.next(c)
		if err != nil {
			return nil, fmt.Errorf("read FAT entry %d: %w", c, err)
		}
		if !more {
			return out, nil
		}
		c = n
	}
}

type fatEntry struct {
	name    string
	dir     bool
	cluster uint32
	size    uint32
}

// parseFATDir decodes directory entries (fatgen103 "FAT Directory
// Structure"), joining long names, and returns the volume label entry.
func parseFATDir(b []byte) (entries []fatEntry, label string) {
	var (
		lfn    []uint16 // long name being collected, 13 UTF-16 units per entry
		lfnSum byte     // checksum of the short name it belongs to
		lfnSeq int      // sequence number expected next; 0 = none
	)
	for off := 0; off+32 <= len(b); off += 32 {
		e := b[off : off+32]
		attr := e[11]
		switch {
		case e[0] == 0x00: // end of directory
			return entries, label
		case e[0] == 0xE5: // deleted
			lfnSeq = 0
			continue
		case attr&0x3F == 0x0F: // long-name entry
			seq := int(e[0] & 0x1F)
			if e[0]&0x40 != 0 { // last part comes first
				lfn, lfnSum, lfnSeq = make([]uint16, 13*seq), e[13], seq
			}
			if seq == 0 || seq != lfnSeq || e[13] != lfnSum {
				lfnSeq = 0
				continue
			}
			for i, o := range [13]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30} {
				lfn[(seq-1)*13+i] = binary.LittleEndian.Uint16(e[o:])
			}
			lfnSeq--
			if lfnSeq == 0 {
				lfnSeq = -1 // complete; the short entry comes next
			}
			continue
		case attr&0x18 == 0x08: // volume label
			label, lfnSeq = fatLabel(e[:11]), 0
			continue
		}
		short := e[:11]
		name := ""
		if lfnSeq == -1 && fatChecksum(short) == lfnSum {
			name = decodeLFN(lfn)
		} else {
			name = shortName(short)
		}
		lfnSeq = 0
		if name == "." || name == ".." {
			continue
		}
		entries = append(entries, fatEntry{
			name:    name,
			dir:     attr&0x10 != 0,
			cluster: uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:])),
			size:    binary.LittleEndian.Uint32(e[28:]),
		})
	}
	return entries, label
}

// fatChecksum is the short-name checksum stored in each LFN entry.
func fatChecksum(short []byte) byte {
	var sum byte
	for _, c := range short {
		sum = (sum&1)<<7 + sum>>1 + c
	}
	return sum
}

func decodeLFN(u []uint16) string {
	for i, c := range u {
		if c == 0 || c == 0xFFFF {
			u = u[:i]
			break
		}
	}
	return string(utf16.Decode(u))
}

func shortName(e []byte) string {
	base := []byte(strings.TrimRight(string(e[:8]), " "))
	if len(base) > 0 && base[0] == 0x05 { // 0xE5 as the first byte is stored as 0x05
		base[0] = 0xE5
	}
	if ext := strings.TrimRight(string(e[8:11]), " "); ext != "" {
		return string(base) + "." + ext
	}
	return string(base)
}

// ReadFile reads the file at path (slash-separated, matched without regard
// to case as FAT does), at most max bytes.
func (f *fatFS) ReadFile(path string, max int64) ([]byte, error) {
	dir, err := f.readRoot()
	if err != nil {
		return nil, err
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, part := range parts {
		entries, _ := parseFATDir(dir)
		var found *fatEntry
		for j := range entries {
			if strings.EqualFold(entries[j].name, part) {
				found = &entries[j]
				break
			}
		}
		if found == nil {
			return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
		}
		last := i == len(parts)-1
		if found.dir == last {
			return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
		}
		if !last {
			if dir, err = f.readChain(found.cluster, maxDirSize); err != nil {
				return nil, err
			}
			continue
		}
		if int64(found.size) > max {
			return nil, fmt.Errorf("%s: %d bytes is %w", path, found.size, ErrTooLarge)
		}
		if found.size == 0 {
			return []byte{}, nil
		}
		data, err := f.readChain(found.cluster, int64(found.size))
		if err != nil {
			return nil, err
		}
		if int64(len(data)) < int64(found.size) {
			return nil, fmt.Errorf("%s: cluster chain shorter than the file's %d bytes: filesystem corrupt (run fsck.vfat)", path, found.size)
		}
		return data[:found.size], nil
	}
	return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}
