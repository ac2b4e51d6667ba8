package slot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"unicode/utf8"
)

// On-disk layout of one slot: the content of a CONFIG-A/B partition, or one
// file of the Dir store. All integers are little-endian.
//
//	offset  size  content
//	0       4096  header block
//	4096    4096  result record 0
//	8192    4096  result record 1
//	12288   n     payload (the machine config document)
//
// Header block:
//
//	0   8   magic "BLSTSLOT"
//	8   4   version, 1
//	12  4   header JSON length j (at most 4032)
//	16  8   payload length n
//	24  32  payload sha256
//	56  4   CRC-32 (IEEE) of bytes [0, 64+j) with this field zero
//	60  4   zero
//	64  j   header JSON: {"generation":…,"sha256":"<hex>","time":"<RFC 3339>",
//	        "disk":"<GUID>","partition":"<GUID>"}
//
// "disk" and "partition" (the GPT store writes them; the Dir store leaves
// them out) bind the record to the disk GUID and the partition's unique GUID
// it was written for: the GPT store reads a record bound to other GUIDs (a
// previous installation's, left behind by an image written over it) as an
// empty slot. Records written before the binding existed carry neither and
// are read as before; readers that predate it ignore both fields.
//
// Result record (Header.Result, kept apart so Commit and Fail change it in
// place without rewriting the checksummed header; two copies written in turn,
// so a torn write loses at most the newest result):
//
//	0   8   magic "BLSTRSLT"
//	8   8   sequence number: the valid record with the higher one wins
//	16  4   CRC of the header block it belongs to: records left over from an
//	        older header are ignored
//	20  4   text length t (at most 4064)
//	24  4   CRC-32 (IEEE) of bytes [0, 32+t) with this field zero
//	28  4   zero
//	32  t   result text, UTF-8
//
// Every region starts on a 4 KiB boundary, so on disks with 512-byte or 4 KiB
// sectors a write of one region never shares a sector with another.
const (
	blockSize     = 4096
	PayloadOffset = 3 * blockSize // where the payload starts in a slot
	formatVersion = 1

	headerFixed   = 64
	maxHeaderJSON = blockSize - headerFixed
	resultFixed   = 32
	maxResultText = blockSize - resultFixed
)

var (
	headerMagic = [8]byte{'B', 'L', 'S', 'T', 'S', 'L', 'O', 'T'}
	resultMagic = [8]byte{'B', 'L', 'S', 'T', 'R', 'S', 'L', 'T'}
)

func resultOffset(i int) int64 { return int64(blockSize * (1 + i)) }

// Binding ties a slot record to the disk it was written for: the GPT disk
// GUID and the unique GUID of the slot's partition, in the usual text form.
// The zero Binding binds to nothing (Dir store, records from before).
type Binding struct {
	Disk      string `json:"disk,omitempty"`
	Partition string `json:"partition,omitempty"`
}

// headerJSON is what the header block's JSON holds.
type headerJSON struct {
	Header
	Binding
}

// diskHeader is a decoded header block.
type diskHeader struct {
	Header
	bind       Binding
	payloadLen uint64
	sum        [sha256.Size]byte
	crc        uint32 // binds result records to this header
}

// encodeSlot returns the whole slot image: header block (bound to bind),
// result record 0 holding h.Result, an empty record 1, then data.
func encodeSlot(h Header, bind Binding, data []byte) ([]byte, error) {
	hb, crc, err := encodeHeader(h, bind, data)
	if err != nil {
		return nil, err
	}
	b := make([]byte, PayloadOffset+len(data))
	copy(b, hb)
	copy(b[resultOffset(0):], encodeResult(1, crc, h.Result))
	copy(b[PayloadOffset:], data)
	return b, nil
}

func encodeHeader(h Header, bind Binding, data []byte) ([]byte, uint32, error) {
	sum := sha256.Sum256(data)
	h.SHA256 = hex.EncodeToString(sum[:])
	j, err := json.Marshal(headerJSON{h, bind})
	if err != nil {
		return nil, 0, fmt.Errorf("encode slot header: %w", err)
	}
	if len(j) > maxHeaderJSON {
		return nil, 0, fmt.Errorf("BUG: slot header JSON is %d bytes, at most %d fit", len(j), maxHeaderJSON)
	}
	b := make([]byte, blockSize)
	copy(b[0:8], headerMagic[:])
	binary.LittleEndian.PutUint32(b[8:12], formatVersion)
	binary.LittleEndian.PutUint32(b[12:16], uint32(len(j)))
	binary.LittleEndian.PutUint64(b[16:24], uint64(len(data)))
	copy(b[24:56], sum[:])
	copy(b[headerFixed:], j)
	crc := crc32.ChecksumIEEE(b[:headerFixed+len(j)])
	binary.LittleEndian.PutUint32(b[56:60], crc)
	return b, crc, nil
}

// decodeHeader parses a header block. A block of zeroes (never written) gives
// ErrEmpty; anything else that does not verify gives ErrCorrupt.
func decodeHeader(b []byte) (diskHeader, error) {
	var d diskHeader
	if len(b) < blockSize {
		return d, fmt.Errorf("header block of %d bytes: %w", len(b), ErrCorrupt)
	}
	b = b[:blockSize]
	if allZero(b) {
		return d, ErrEmpty
	}
	if !bytes.Equal(b[0:8], headerMagic[:]) {
		return d, fmt.Errorf("bad header magic %q: %w", b[0:8], ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:12]); v != formatVersion {
		return d, fmt.Errorf("header version %d, this agent reads %d: %w", v, formatVersion, ErrCorrupt)
	}
	jl := binary.LittleEndian.Uint32(b[12:16])
	if jl > maxHeaderJSON {
		return d, fmt.Errorf("header JSON length %d exceeds %d: %w", jl, maxHeaderJSON, ErrCorrupt)
	}
	want := binary.LittleEndian.Uint32(b[56:60])
	c := make([]byte, headerFixed+int(jl))
	copy(c, b)
	clear(c[56:60])
	if got := crc32.ChecksumIEEE(c); got != want {
		return d, fmt.Errorf("header CRC %08x, stored %08x: %w", got, want, ErrCorrupt)
	}
	var hj headerJSON
	if err := json.Unmarshal(b[headerFixed:headerFixed+int(jl)], &hj); err != nil {
		return d, fmt.Errorf("header JSON: %v: %w", err, ErrCorrupt)
	}
	d.Header, d.bind = hj.Header, hj.Binding
	d.payloadLen = binary.LittleEndian.Uint64(b[16:24])
	copy(d.sum[:], b[24:56])
	if d.SHA256 != hex.EncodeToString(d.sum[:]) {
		return d, fmt.Errorf("header sha256 %q disagrees with binary sum %x: %w", d.SHA256, d.sum, ErrCorrupt)
	}
	d.crc = want
	return d, nil
}

// verifyPayload checks a payload read for header d.
func (d diskHeader) verifyPayload(data []byte) error {
	if uint64(len(data)) != d.payloadLen {
		return fmt.Errorf("payload of %d bytes, header says %d: %w", len(data), d.payloadLen, ErrCorrupt)
	}
	if sum := sha256.Sum256(data); sum != d.sum {
		return fmt.Errorf("payload sha256 %x, header says %x: %w", sum, d.sum, ErrCorrupt)
	}
	return nil
}

// encodeResult returns one result record block. Text longer than a record
// holds is cut at a character boundary.
func encodeResult(seq uint64, bind uint32, text string) []byte {
	if len(text) > maxResultText {
		n := maxResultText
		for n > 0 && !utf8.RuneStart(text[n]) {
			n--
		}
		text = text[:n]
	}
	b := make([]byte, blockSize)
	copy(b[0:8], resultMagic[:])
	binary.LittleEndian.PutUint64(b[8:16], seq)
	binary.LittleEndian.PutUint32(b[16:20], bind)
	binary.LittleEndian.PutUint32(b[20:24], uint32(len(text)))
	copy(b[resultFixed:], text)
	binary.LittleEndian.PutUint32(b[24:28], crc32.ChecksumIEEE(b[:resultFixed+len(text)]))
	return b
}

// decodeResult returns the record's sequence number and text, ok false when
// the record is absent, torn, or belongs to another header.
func decodeResult(b []byte, bind uint32) (seq uint64, text string, ok bool) {
	if len(b) < blockSize || !bytes.Equal(b[0:8], resultMagic[:]) {
		return 0, "", false
	}
	if binary.LittleEndian.Uint32(b[16:20]) != bind {
		return 0, "", false
	}
	tl := binary.LittleEndian.Uint32(b[20:24])
	if tl > maxResultText {
		return 0, "", false
	}
	c := make([]byte, resultFixed+int(tl))
	copy(c, b)
	clear(c[24:28])
	if crc32.ChecksumIEEE(c) != binary.LittleEndian.Uint32(b[24:28]) {
		return 0, "", false
	}
	return binary.LittleEndian.Uint64(b[8:16]), string(b[resultFixed : resultFixed+int(tl)]), true
}

// results picks the current result of a header from its two records, and
// which record (and sequence number) the next result goes to: the one not
// holding the current result.
func results(recs [2][]byte, bind uint32) (text string, next int, nextSeq uint64) {
	best, bestSeq := -1, uint64(0)
	for i, r := range recs {
		if seq, t, ok := decodeResult(r, bind); ok && (best < 0 || seq > bestSeq) {
			best, bestSeq, text = i, seq, t
		}
	}
	if best < 0 {
		return "", 0, 1
	}
	return text, other(best), bestSeq + 1
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
