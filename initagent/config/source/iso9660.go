package source

// A read-only ISO 9660 reader, enough to read a small file by path. Names
// come from Joliet (UCS-2) if the image has it, else from Rock Ridge NM
// entries, else from the plain ISO name without its ";1" version. Every
// tool that makes config drives (genisoimage -J -r, cloud-localds, nova)
// writes Joliet and Rock Ridge, so lower-case names like user-data survive.
// Layout: ECMA-119 (ISO 9660) §8.4 (volume descriptors), §9.1 (directory
// records); IEEE P1282 (Rock Ridge) on SUSP (IEEE P1281); Joliet spec 1995.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"unicode/utf16"
)

const (
	isoSector    = 2048
	isoFirstVD   = 16 // volume descriptors start at sector 16 (ECMA-119 §6.2.1)
	isoMaxVDs    = 32 // stop looking for the terminator after this many
	isoLabelOff  = isoFirstVD*isoSector + 40
	isoDirRecOff = 156 // root directory record within a volume descriptor
)

var errNotISO = errors.New("not an ISO 9660 filesystem")

type isoFS struct {
	r         io.ReaderAt
	blockSize int64
	root      isoRecord
	joliet    bool
	label     string // primary volume identifier
}

type isoRecord struct {
	extent uint32 // first logical block
	size   uint32
	dir    bool
	name   string
}

func openISO(r io.ReaderAt) (*isoFS, error) {
	f := &isoFS{r: r}
	var havePrimary bool
	vd := make([]byte, isoSector)
	for i := int64(0); i < isoMaxVDs; i++ {
		if _, err := r.ReadAt(vd, (isoFirstVD+i)*isoSector); err != nil {
			if havePrimary {
				break
			}
			return nil, errNotISO
		}
		if string(vd[1:6]) != "CD001" {
			break
		}
		switch vd[0] {
		case 1: // primary
			if havePrimary {
				continue
			}
			havePrimary = true
			f.label = strings.TrimRight(string(vd[40:72]), " \x00")
			f.blockSize = int64(binary.LittleEndian.Uint16(vd[128:])) // both-endian field, LE half
			rec, ok := parseISORecord(vd[isoDirRecOff:isoDirRecOff+34], false)
			if !ok || f.blockSize < 512 || f.blockSize&(f.blockSize-1) != 0 {
				return nil, fmt.Errorf("%w: bad primary volume descriptor", errNotISO)
			}
			if !f.joliet {
				f.root = rec
			}
		case 2: // supplementary; Joliet if its escape sequence names UCS-2 level 1, 2 or 3
			esc := string(vd[88:91])
			if esc == "%/@" || esc == "%/C" || esc == "%/E" {
				if rec, ok := parseISORecord(vd[isoDirRecOff:isoDirRecOff+34], true); ok {
					f.root, f.joliet = rec, true
				}
			}
		case 255: // terminator
			i = isoMaxVDs
		}
	}
	if !havePrimary {
		return nil, errNotISO
	}
	return f, nil
}

// Label returns the primary volume identifier.
func (f *isoFS) Label() string { return f.label }

// parseISORecord decodes one directory record (ECMA-119 §9.1), taking the
// name from Joliet, Rock Ridge or the ISO identifier. ok is false if the
// record is malformed.
func parseISORecord(b []byte, joliet bool) (rec isoRecord, ok bool) {
	if len(b) < 34 || int(b[0]) < 34 || int(b[0]) > len(b) {
		return rec, false
	}
	b = b[:b[0]]
	nameLen := int(b[32])
	if 33+nameLen > len(b) {
		return rec, false
	}
	rec.extent = binary.LittleEndian.Uint32(b[2:])
	rec.size = binary.LittleEndian.Uint32(b[10:])
	rec.dir = b[25]&0x02 != 0
	id := b[33 : 33+nameLen]
	switch {
	case nameLen == 1 && id[0] == 0:
		rec.name = "."
	case nameLen == 1 && id[0] == 1:
		rec.name = ".."
	case joliet:
		u := make([]uint16, nameLen/2)
		for i := range u {
			u[i] = binary.BigEndian.Uint16(id[2*i:])
		}
		rec.name = isoTrimVersion(string(utf16.Decode(u)))
	default:
		// System Use area: after the identifier, padded to an even offset.
		if su := 33 + nameLen + (nameLen+1)%2; su <= len(b) {
			rec.name = rockRidgeName(b[su:])
		}
		if rec.name == "" {
			rec.name = isoTrimVersion(string(id))
		}
	}
	return rec, true
}

// isoTrimVersion turns the identifier "USER_DAT.;1" into "USER_DAT".
func isoTrimVersion(s string) string {
	if i := strings.LastIndexByte(s, ';'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSuffix(s, ".")
}

// rockRidgeName returns the name from the NM entries in a System Use area
// (SUSP entries: 2-byte signature, length, version, data), or "".
func rockRidgeName(su []byte) string {
	var name strings.Builder
	for len(su) >= 4 {
		l := int(su[2])
		if l < 4 || l > len(su) {
			break
		}
		if string(su[:2]) == "NM" && l >= 5 {
			flags := su[4]
			if flags&0x06 != 0 { // CURRENT or PARENT
				return ""
			}
			name.Write(su[5:l])
		}
		su = su[l:]
	}
	return name.String()
}

// readDir reads the records of a directory extent. Records do not cross
// sector boundaries; a zero length byte means "go to the next sector".
func (f *isoFS) readDir(d isoRecord) ([]isoRecord, error) {
	if d.size > maxDirSize {
		return nil, fmt.Errorf("ISO 9660 directory of %d bytes is implausible", d.size)
	}
	b := make([]byte, d.size)
	if _, err := f.r.ReadAt(b, int64(d.extent)*f.blockSize); err != nil {
		return nil, fmt.Errorf("read ISO 9660 directory at block %d: %w", d.extent, err)
	}
	var out []isoRecord
	for off := 0; off < len(b); {
		l := int(b[off])
		if l == 0 {
			off = (off/isoSector + 1) * isoSector
			continue
		}
		rec, ok := parseISORecord(b[off:], f.joliet)
		if !ok {
			return nil, fmt.Errorf("ISO 9660 directory at block %d has a malformed record at byte %d", d.extent, off)
		}
		if rec.name != "." && rec.name != ".." {
			out = append(out, rec)
		}
		off += l
	}
	return out, nil
}

// ReadFile reads the file at path (slash-separated, matched without regard
// to case), at most max bytes.
func (f *isoFS) ReadFile(path string, max int64) ([]byte, error) {
	cur := f.root
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, part := range parts {
		entries, err := f.readDir(cur)
		if err != nil {
			return nil, err
		}
		var found *isoRecord
		for j := range entries {
			if strings.EqualFold(entries[j].name, part) {
				found = &entries[j]
				break
			}
		}
		last := i == len(parts)-1
		if found == nil || found.dir == last {
			return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
		}
		cur = *found
	}
	if int64(cur.size) > max {
		return nil, fmt.Errorf("%s: %d bytes is %w", path, cur.size, ErrTooLarge)
	}
	data := make([]byte, cur.size)
	if _, err := f.r.ReadAt(data, int64(cur.extent)*f.blockSize); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}
