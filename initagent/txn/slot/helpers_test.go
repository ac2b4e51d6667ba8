package slot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf16"
)

const testImageSize = 8 << 20

// storeKind makes a fresh store and can open it again, as a restarted agent
// would.
type storeKind struct {
	name string
	// create returns where the store lives.
	create func(t *testing.T) string
	open   func(t *testing.T, where string) Store
	// payloadAt returns the file and offset of a slot's payload byte 0.
	payloadAt func(where, name string) (string, int64)
}

func storeKinds() []storeKind {
	return []storeKind{
		{
			name: "gpt",
			create: func(t *testing.T) string {
				p := filepath.Join(t.TempDir(), "disk.img")
				if err := CreateImage(p, testImageSize); err != nil {
					t.Fatal(err)
				}
				return p
			},
			open: func(t *testing.T, where string) Store {
				g, err := NewGPT(where)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { g.Close() })
				return g
			},
			payloadAt: func(where, name string) (string, int64) {
				i, _ := index(name)
				return where, int64(1<<20+i*ImagePartitionSize) + PayloadOffset
			},
		},
		{
			name:   "dir",
			create: func(t *testing.T) string { return filepath.Join(t.TempDir(), "slots") },
			open: func(t *testing.T, where string) Store {
				d, err := NewDir(where)
				if err != nil {
					t.Fatal(err)
				}
				return d
			},
			payloadAt: func(where, name string) (string, int64) {
				return filepath.Join(where, name), PayloadOffset
			},
		},
	}
}

// flipByte inverts one byte of a file.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func selectors(t *testing.T, s Store) [2]Selector {
	t.Helper()
	slots, err := s.Slots()
	if err != nil {
		t.Fatalf("Slots() = %v", err)
	}
	return [2]Selector{slots[0].Selector, slots[1].Selector}
}

func wantSelectors(t *testing.T, s Store, a, b Selector) {
	t.Helper()
	if got := selectors(t, s); got != [2]Selector{a, b} {
		t.Fatalf("selectors = A %+v B %+v, want A %+v B %+v", got[0], got[1], a, b)
	}
}

func mustBegin(t *testing.T, s Store, data string) string {
	t.Helper()
	name, err := Begin(s, Header{}, []byte(data))
	if err != nil {
		t.Fatalf("Begin(%q) = %v", data, err)
	}
	return name
}

func mustCommit(t *testing.T, s Store, name string) {
	t.Helper()
	if err := Commit(s, name); err != nil {
		t.Fatalf("Commit(%q) = %v", name, err)
	}
}

func wantBoot(t *testing.T, s Store, name, data string, sel Selector) {
	t.Helper()
	sl, got, err := Boot(s)
	if err != nil {
		t.Fatalf("Boot() = %v, want slot %s", err, name)
	}
	if sl.Name != name || string(got) != data || sl.Selector != sel {
		t.Fatalf("Boot() = slot %s %+v data %q, want %s %+v %q", sl.Name, sl.Selector, got, name, sel, data)
	}
}

// rawGPT is one GPT copy parsed by the test itself, independently of the
// package's reader.
type rawGPT struct {
	myLBA, altLBA uint64
	attrs         map[string]uint64 // by partition name
	entries       []byte
}

// parseRawGPT checks the GPT header at lba and its entry array: signature,
// header CRC, self LBA, entries CRC.
func parseRawGPT(img []byte, lba uint64) (rawGPT, error) {
	const lss = 512
	var g rawGPT
	h := img[lba*lss : (lba+1)*lss]
	if string(h[:8]) != "EFI PART" {
		return g, fmt.Errorf("LBA %d: signature %q", lba, h[:8])
	}
	hs := binary.LittleEndian.Uint32(h[12:])
	c := bytes.Clone(h[:hs])
	clear(c[16:20])
	if got, want := crc32.ChecksumIEEE(c), binary.LittleEndian.Uint32(h[16:]); got != want {
		return g, fmt.Errorf("LBA %d: header CRC %08x, stored %08x", lba, got, want)
	}
	g.myLBA = binary.LittleEndian.Uint64(h[24:])
	g.altLBA = binary.LittleEndian.Uint64(h[32:])
	if g.myLBA != lba {
		return g, fmt.Errorf("LBA %d: header says my LBA %d", lba, g.myLBA)
	}
	elba := binary.LittleEndian.Uint64(h[72:])
	n := binary.LittleEndian.Uint32(h[80:])
	es := binary.LittleEndian.Uint32(h[84:])
	g.entries = img[elba*lss : elba*lss+uint64(n*es)]
	if got, want := crc32.ChecksumIEEE(g.entries), binary.LittleEndian.Uint32(h[88:]); got != want {
		return g, fmt.Errorf("LBA %d: entries CRC %08x, stored %08x", lba, got, want)
	}
	g.attrs = map[string]uint64{}
	for i := uint32(0); i < n; i++ {
		e := g.entries[i*es : (i+1)*es]
		var u []uint16
		for j := 56; j < 128; j += 2 {
			v := binary.LittleEndian.Uint16(e[j:])
			if v == 0 {
				break
			}
			u = append(u, v)
		}
		name := string(utf16.Decode(u))
		if name != "" {
			g.attrs[name] = binary.LittleEndian.Uint64(e[48:])
		}
	}
	return g, nil
}

// rawSelectors reads both GPT copies of an image file, requires both valid
// and pointing at each other, and returns the selectors in each.
func rawSelectors(t *testing.T, path string) (primary, backup [2]Selector) {
	t.Helper()
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	last := uint64(len(img)/512 - 1)
	p, err := parseRawGPT(img, 1)
	if err != nil {
		t.Fatalf("primary GPT: %v", err)
	}
	b, err := parseRawGPT(img, last)
	if err != nil {
		t.Fatalf("backup GPT: %v", err)
	}
	if p.altLBA != last || b.altLBA != 1 {
		t.Fatalf("primary alt LBA %d, backup alt LBA %d, want %d and 1", p.altLBA, b.altLBA, last)
	}
	for i, n := range []string{"CONFIG-A", "CONFIG-B"} {
		pa, ok1 := p.attrs[n]
		ba, ok2 := b.attrs[n]
		if !ok1 || !ok2 {
			t.Fatalf("partition %s missing from primary (%v) or backup (%v)", n, ok1, ok2)
		}
		primary[i] = rawSelector(pa)
		backup[i] = rawSelector(ba)
	}
	return primary, backup
}

// rawSelector decodes ChromeOS attribute bits without the package's helper.
func rawSelector(a uint64) Selector {
	return Selector{
		Priority:   uint8((a >> 48) & 15),
		Tries:      uint8((a >> 52) & 15),
		Successful: (a>>56)&1 == 1,
	}
}
