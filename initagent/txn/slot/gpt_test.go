package slot

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

const lastLBA = testImageSize/512 - 1

func newImage(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := CreateImage(p, testImageSize); err != nil {
		t.Fatal(err)
	}
	return p
}

func openGPT(t *testing.T, path string) *GPT {
	t.Helper()
	g, err := NewGPT(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// TestGPTBothCopies: the selectors are in both GPT copies with valid CRCs, as
// parsed by the test itself and by go-diskfs.
func TestGPTBothCopies(t *testing.T) {
	p := newImage(t)
	g := openGPT(t, p)
	mustCommit(t, g, mustBegin(t, g, "cfg1"))
	mustBegin(t, g, "cfg2")
	want := [2]Selector{good, trying}
	primary, backup := rawSelectors(t, p)
	if primary != want || backup != want {
		t.Fatalf("raw selectors primary %+v backup %+v, want %+v", primary, backup, want)
	}

	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tbl, err := gpt.Read(f, 512, 512)
	if err != nil {
		t.Fatalf("go-diskfs reads the table: %v", err)
	}
	if tbl.RecoveredFromBackup {
		t.Fatal("go-diskfs fell back to the backup GPT")
	}
	for _, part := range tbl.Partitions {
		i, _ := index(strings.TrimPrefix(part.Name, PartitionNamePrefix))
		if got := rawSelector(part.Attributes); got != want[i] {
			t.Errorf("go-diskfs: %s attributes %#x = %+v, want %+v", part.Name, part.Attributes, got, want[i])
		}
	}
}

// TestGPTOnlyAttributesChange: a selector change touches the 8 attribute
// bytes of one entry and the CRCs in both copies, nothing else: not the
// protective MBR (boot code and CHS values as UEFI 2.10 Table 5.4 sets them),
// not other attribute bits, GUIDs or names.
func TestGPTOnlyAttributesChange(t *testing.T) {
	p := newImage(t)
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	copy(img[0:4], []byte{0xeb, 0x63, 0x90, 0x10}) // boot code
	copy(img[447:450], []byte{0x00, 0x02, 0x00})   // starting CHS
	copy(img[451:454], []byte{0xff, 0xff, 0xff})   // ending CHS
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	g := openGPT(t, p)
	// Required (bit 0) and type-specific bit 60 must survive.
	const otherBits = 1 | 1<<60
	setRawAttrs(t, p, 1, otherBits)
	before, _ := os.ReadFile(p)
	if err := g.SetSelector(B, Selector{Priority: 15, Tries: 15, Successful: true}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(p)

	entryB := uint64(1 * 128) // second entry
	allowed := map[int]bool{}
	for _, hdr := range []uint64{1, lastLBA} {
		for _, off := range []uint64{16, 17, 18, 19, 88, 89, 90, 91} { // header CRC, entries CRC
			allowed[int(hdr*512+off)] = true
		}
	}
	for _, arr := range []uint64{2, lastLBA - 32} {
		for i := uint64(48); i < 56; i++ {
			allowed[int(arr*512+entryB+i)] = true
		}
	}
	for i := range before {
		if before[i] != after[i] && !allowed[i] {
			t.Fatalf("byte %d (LBA %d offset %d) changed %#x → %#x", i, i/512, i%512, before[i], after[i])
		}
	}
	a := binary.LittleEndian.Uint64(after[2*512+entryB+48:])
	if want := uint64(otherBits) | 0x1ff<<48; a != want {
		t.Fatalf("attributes %#x, want %#x", a, want)
	}
	if pr, bk := rawSelectors(t, p); pr != bk || pr[1] != (Selector{15, 15, true}) {
		t.Fatalf("raw selectors %+v / %+v", pr, bk)
	}
}

// setRawAttrs sets the attributes of the entry at index in both copies, with
// CRCs, through the package's writer.
func setRawAttrs(t *testing.T, path string, index int, attrs uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bw, pw, err := readGPT(f, 512, lastLBA+1).setAttrs(index, attrs, lastLBA+1)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range append(bw, pw...) {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGPTCopyCorrupt: with one GPT copy corrupt the other is used, and the
// next selector change repairs the corrupt one.
func TestGPTCopyCorrupt(t *testing.T) {
	tests := []struct {
		name string
		off  int64
	}{
		{"primary header", 1*512 + 60},           // disk GUID
		{"primary header signature", 1 * 512},    // "EFI PART"
		{"primary entries", 2*512 + 128 + 60},    // CONFIG-B name
		{"backup header", lastLBA*512 + 60},      // disk GUID
		{"backup entries", (lastLBA-32)*512 + 3}, // CONFIG-A type
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newImage(t)
			g := openGPT(t, p)
			mustCommit(t, g, mustBegin(t, g, "cfg1"))
			mustBegin(t, g, "cfg2")
			flipByte(t, p, tc.off)
			wantSelectors(t, g, good, trying) // read from the good copy
			g.Close()

			g = openGPT(t, p) // repairs the damaged copy
			if pr, bk := rawSelectors(t, p); pr != bk || pr != [2]Selector{good, trying} {
				t.Fatalf("after repair: raw selectors %+v / %+v", pr, bk)
			}
			wantSelectors(t, g, good, trying)
			wantBoot(t, g, B, "cfg2", Selector{Priority: 2})
			if pr, bk := rawSelectors(t, p); pr != bk || pr != [2]Selector{good, {Priority: 2}} {
				t.Fatalf("after Boot: raw selectors %+v / %+v", pr, bk)
			}
		})
	}
	t.Run("both", func(t *testing.T) {
		p := newImage(t)
		flipByte(t, p, 1*512+60)
		flipByte(t, p, lastLBA*512+60)
		if _, err := NewGPT(p); err == nil || !strings.Contains(err.Error(), "no valid GPT") {
			t.Fatalf("NewGPT() = %v, want no valid GPT", err)
		}
	})
}

// TestGPTTornUpdate: a crash inside a selector change leaves some of its four
// writes (backup entries, backup header, primary entries, primary header) on
// disk. Every prefix must read as the old or the new selector.
func TestGPTTornUpdate(t *testing.T) {
	p := newImage(t)
	g := openGPT(t, p)
	mustCommit(t, g, mustBegin(t, g, "cfg1"))
	old, _ := os.ReadFile(p)
	if err := g.SetSelector(A, Selector{Priority: 7, Tries: 3}); err != nil {
		t.Fatal(err)
	}
	g.Close()
	updated, _ := os.ReadFile(p)
	oldSel, newSel := good, Selector{Priority: 7, Tries: 3}

	regions := [][2]int{ // in write order
		{(lastLBA - 32) * 512, lastLBA * 512}, // backup entries
		{lastLBA * 512, (lastLBA + 1) * 512},  // backup header
		{2 * 512, 34 * 512},                   // primary entries
		{1 * 512, 2 * 512},                    // primary header
	}
	for n, want := range []Selector{oldSel, oldSel, oldSel, newSel, newSel} {
		img := bytes.Clone(old)
		for _, r := range regions[:n] {
			copy(img[r[0]:r[1]], updated[r[0]:r[1]])
		}
		q := filepath.Join(t.TempDir(), "torn.img")
		if err := os.WriteFile(q, img, 0o600); err != nil {
			t.Fatal(err)
		}
		// What a reader sees before anything repairs the disk.
		f, err := os.Open(q)
		if err != nil {
			t.Fatal(err)
		}
		c, err := readGPT(f, 512, lastLBA+1).current()
		f.Close()
		if err != nil {
			t.Fatalf("after %d of 4 writes: %v", n, err)
		}
		if part, err := c.find("CONFIG-A"); err != nil || selectorFromAttrs(part.attrs) != want {
			t.Errorf("after %d of 4 writes: reader sees CONFIG-A %+v %v, want %+v", n, selectorFromAttrs(part.attrs), err, want)
		}
		s := openGPT(t, q)
		if got := selectors(t, s)[0]; got != want {
			t.Errorf("after %d of 4 writes: selector A %+v, want %+v", n, got, want)
		}
		// Boot spends a try, which rewrites both copies from the trusted one.
		if !want.Successful {
			want.Tries--
		}
		wantBoot(t, s, A, "cfg1", want)
		if pr, bk := rawSelectors(t, q); pr != bk || pr[0] != want {
			t.Errorf("after %d of 4 writes and Boot: raw selectors %+v / %+v", n, pr, bk)
		}
	}
}

// TestGPTLayoutErrors: disks without usable CONFIG partitions are refused
// with a hint.
func TestGPTLayoutErrors(t *testing.T) {
	mk := func(t *testing.T, parts ...*gpt.Partition) string {
		p := filepath.Join(t.TempDir(), "disk.img")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(testImageSize); err != nil {
			t.Fatal(err)
		}
		tbl := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, Partitions: parts}
		if err := tbl.Write(f, testImageSize); err != nil {
			t.Fatal(err)
		}
		return p
	}
	part := func(i int, name string, start, end uint64) *gpt.Partition {
		return &gpt.Partition{Index: i, Start: start, End: end, Type: PartitionType, Name: name}
	}
	tests := []struct {
		name  string
		parts []*gpt.Partition
		want  string
	}{
		{"no CONFIG-B", []*gpt.Partition{part(1, "CONFIG-A", 2048, 4095)}, `no partition named "CONFIG-B"`},
		{"two CONFIG-A", []*gpt.Partition{part(1, "CONFIG-A", 2048, 4095), part(2, "CONFIG-A", 4096, 6143), part(3, "CONFIG-B", 6144, 8191)}, `2 partitions named "CONFIG-A"`},
		{"too small", []*gpt.Partition{part(1, "CONFIG-A", 2048, 2049), part(2, "CONFIG-B", 4096, 6143)}, "at least"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewGPT(mk(t, tc.parts...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewGPT() = %v, want an error containing %s", err, tc.want)
			}
		})
	}
}

func TestGPTPayloadTooLarge(t *testing.T) {
	g := openGPT(t, newImage(t))
	_, err := Begin(g, Header{}, make([]byte, ImagePartitionSize))
	if err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("Begin() = %v, want does not fit", err)
	}
	full := make([]byte, ImagePartitionSize-PayloadOffset)
	full[len(full)-1] = 1
	mustCommit(t, g, mustBegin(t, g, string(full)))
	wantBoot(t, g, A, string(full), good)
}

func TestCreateImage(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, p := range []string{a, b} {
		if err := CreateImage(p, testImageSize); err != nil {
			t.Fatal(err)
		}
	}
	ia, _ := os.ReadFile(a)
	ib, _ := os.ReadFile(b)
	if !bytes.Equal(ia, ib) {
		t.Fatal("two images differ: want reproducible GUIDs")
	}
	if pr, bk := rawSelectors(t, a); pr != bk || pr != [2]Selector{} {
		t.Fatalf("fresh image selectors %+v / %+v", pr, bk)
	}
	if err := CreateImage(a, MinImageSize-512); err == nil {
		t.Fatal("CreateImage below MinImageSize succeeded")
	}
}
