package slot

import (
	"errors"
	"testing"
	"time"
)

func TestFormatRoundTrip(t *testing.T) {
	h := Header{Generation: 7, Time: time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC), Result: "committed"}
	data := []byte("apiVersion: ballast/v1\nkind: MachineConfig\n")
	b, err := encodeSlot(h, Binding{}, data)
	if err != nil {
		t.Fatal(err)
	}
	d, err := decodeHeader(b[:blockSize])
	if err != nil {
		t.Fatal(err)
	}
	if err := d.verifyPayload(b[PayloadOffset:]); err != nil {
		t.Fatal(err)
	}
	text, next, seq := results([2][]byte{b[resultOffset(0):], b[resultOffset(1):]}, d.crc)
	if d.Generation != 7 || !d.Time.Equal(h.Time) || text != "committed" || next != 1 || seq != 2 {
		t.Fatalf("decoded %+v result %q next %d seq %d", d.Header, text, next, seq)
	}
	if _, err := decodeHeader(make([]byte, blockSize)); !errors.Is(err, ErrEmpty) {
		t.Fatalf("zero block: %v, want ErrEmpty", err)
	}
	// A result record of another header is ignored.
	if _, _, ok := decodeResult(b[resultOffset(0):], d.crc+1); ok {
		t.Fatal("result record bound to another header accepted")
	}
}

func TestResultsPicksNewest(t *testing.T) {
	const bind = 42
	tests := []struct {
		name     string
		r0, r1   []byte
		want     string
		wantNext int
		wantSeq  uint64
	}{
		{"none", make([]byte, blockSize), make([]byte, blockSize), "", 0, 1},
		{"first", encodeResult(1, bind, "trying"), make([]byte, blockSize), "trying", 1, 2},
		{"second newer", encodeResult(1, bind, "trying"), encodeResult(2, bind, "committed"), "committed", 0, 3},
		{"first newer", encodeResult(3, bind, "failed: x"), encodeResult(2, bind, "committed"), "failed: x", 1, 4},
		{"newer torn", encodeResult(1, bind, "trying"), torn(encodeResult(2, bind, "committed")), "trying", 1, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text, next, seq := results([2][]byte{tc.r0, tc.r1}, bind)
			if text != tc.want || next != tc.wantNext || seq != tc.wantSeq {
				t.Fatalf("results() = %q, %d, %d, want %q, %d, %d", text, next, seq, tc.want, tc.wantNext, tc.wantSeq)
			}
		})
	}
}

func torn(b []byte) []byte {
	b[resultFixed] ^= 1
	return b
}

func TestAttrBits(t *testing.T) {
	tests := []struct {
		attrs uint64
		sel   Selector
	}{
		{0, Selector{}},
		{0x00ff_0000_0000_0000, Selector{Priority: 15, Tries: 15}},
		{0x0121_0000_0000_0000, Selector{Priority: 1, Tries: 2, Successful: true}},
		{0xf000_0000_0000_0001 | 0x011f<<48, Selector{Priority: 15, Tries: 1, Successful: true}},
	}
	for _, tc := range tests {
		if got := selectorFromAttrs(tc.attrs); got != tc.sel {
			t.Errorf("selectorFromAttrs(%#x) = %+v, want %+v", tc.attrs, got, tc.sel)
		}
		if got := attrsWithSelector(tc.attrs&^attrSelectorMask, tc.sel); got != tc.attrs {
			t.Errorf("attrsWithSelector(%+v) = %#x, want %#x", tc.sel, got, tc.attrs)
		}
	}
}

// FuzzDecodeHeader: no header block panics the decoder, and every rejection
// wraps ErrEmpty or ErrCorrupt.
func FuzzDecodeHeader(f *testing.F) {
	b, _, _ := encodeHeader(Header{Generation: 1, Time: time.Unix(0, 0).UTC()}, Binding{}, []byte("x"))
	f.Add(b)
	f.Add(make([]byte, blockSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		blk := make([]byte, blockSize)
		copy(blk, in)
		if _, err := decodeHeader(blk); err != nil && !errors.Is(err, ErrEmpty) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v wraps neither ErrEmpty nor ErrCorrupt", err)
		}
	})
}

// FuzzDecodeResult: no result record panics the decoder.
func FuzzDecodeResult(f *testing.F) {
	f.Add(encodeResult(1, 2, "committed"), uint32(2))
	f.Fuzz(func(t *testing.T, in []byte, bind uint32) {
		blk := make([]byte, blockSize)
		copy(blk, in)
		if _, text, ok := decodeResult(blk, bind); ok && len(text) > maxResultText {
			t.Fatalf("text of %d bytes", len(text))
		}
	})
}
