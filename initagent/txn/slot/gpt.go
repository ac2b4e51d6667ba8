package slot

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// PartitionNamePrefix + slot name is the GPT partition name of a config slot.
const PartitionNamePrefix = "CONFIG-"

// minPartition is the smallest CONFIG partition accepted: the fixed blocks
// and one block of payload.
const minPartition = PayloadOffset + blockSize

// GPT keeps the slots in the CONFIG-A and CONFIG-B partitions of a GPT disk:
// the payload with its header in the partition, the selector in the
// partition entry's attribute bits (ChromeOS layout), in both GPT copies.
type GPT struct {
	path        string
	mu          sync.Mutex
	f           *os.File
	lss         int
	diskSectors uint64
	parts       [2]gptPart // extents of CONFIG-A, CONFIG-B
	bind        [2]Binding // what records of CONFIG-A, CONFIG-B must be bound to
}

var _ Store = (*GPT)(nil)

// NewGPT opens a whole-disk block device or a disk image file whose GPT has
// partitions named CONFIG-A and CONFIG-B. When one GPT copy does not verify
// or disagrees with the other (a crash inside a selector change), it rewrites
// both from the trusted one. Image files are taken to have 512-byte sectors,
// block devices report theirs. Close it when done.
func NewGPT(path string) (*GPT, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open config slot disk: %w", err)
	}
	g := &GPT{path: path, f: f}
	if err := g.init(); err != nil {
		f.Close()
		return nil, err
	}
	return g, nil
}

func (g *GPT) init() error {
	fi, err := g.f.Stat()
	if err != nil {
		return fmt.Errorf("stat config slot disk %s: %w", g.path, err)
	}
	g.lss = 512 // image files
	if fi.Mode()&os.ModeDevice != 0 {
		var lss int
		if err := g.control(func(fd int) (err error) {
			lss, err = unix.IoctlGetInt(fd, unix.BLKSSZGET)
			return err
		}); err != nil {
			return fmt.Errorf("logical sector size of %s: %w", g.path, err)
		}
		if lss < 512 || lss&(lss-1) != 0 {
			return fmt.Errorf("logical sector size of %s is %d, want a power of two from 512", g.path, lss)
		}
		g.lss = lss
	}
	size, err := g.f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of %s: %w", g.path, err)
	}
	g.diskSectors = uint64(size) / uint64(g.lss)
	if g.diskSectors < 3 {
		return fmt.Errorf("config slot disk %s has %d bytes, too small for a GPT", g.path, size)
	}
	t := readGPT(g.f, g.lss, g.diskSectors)
	c, err := t.current()
	if err != nil {
		return fmt.Errorf("config slot disk %s: %w", g.path, err)
	}
	for i, name := range [2]string{A, B} {
		p, err := c.find(PartitionNamePrefix + name)
		if err != nil {
			return fmt.Errorf("config slot disk %s: %w: partition it with CONFIG-A and CONFIG-B (imgbuild does)", g.path, err)
		}
		if p.last < p.first || p.first < c.firstUsed || p.last > c.lastUsed {
			return fmt.Errorf("config slot disk %s: partition %s spans LBAs %d–%d outside the usable %d–%d",
				g.path, PartitionNamePrefix+name, p.first, p.last, c.firstUsed, c.lastUsed)
		}
		if size := (p.last - p.first + 1) * uint64(g.lss); size < minPartition {
			return fmt.Errorf("config slot disk %s: partition %s has %d bytes, at least %d needed", g.path, PartitionNamePrefix+name, size, minPartition)
		}
		g.parts[i] = p
		g.bind[i] = Binding{Disk: c.diskGUID(), Partition: p.guid}
	}
	if t.primary != nil && t.backup != nil && t.primary.altLBA == t.backup.myLBA &&
		bytes.Equal(t.primary.entries, t.backup.entries) {
		return nil
	}
	// One copy is damaged or was left stale by a crash inside a selector
	// change: rewrite both from the trusted one, as UEFI firmware would
	// (UEFI 2.10 §5.3.2), so the disk has two good copies again.
	if err := g.writeAttrs(t, g.parts[0].index, g.parts[0].attrs); err != nil {
		return fmt.Errorf("repair GPT: %w", err)
	}
	return nil
}

// writeAttrs sets the attributes of one entry in both GPT copies.
func (g *GPT) writeAttrs(t gptTable, index int, attrs uint64) error {
	backup, primary, err := t.setAttrs(index, attrs, g.diskSectors)
	if err != nil {
		return fmt.Errorf("config slot disk %s: %w", g.path, err)
	}
	for _, ws := range [][]gptWrite{backup, primary} {
		for _, w := range ws {
			if _, err := g.f.WriteAt(w.b, w.off); err != nil {
				return fmt.Errorf("config slot disk %s: write %s: %w", g.path, w.what, err)
			}
		}
		if err := g.f.Sync(); err != nil {
			return fmt.Errorf("config slot disk %s: sync %s: %w", g.path, ws[len(ws)-1].what, err)
		}
	}
	return nil
}

// Close closes the disk.
func (g *GPT) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.f.Close()
}

func (g *GPT) control(fn func(fd int) error) error {
	rc, err := g.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// extent returns a slot partition's byte offset and size.
func (g *GPT) extent(name string) (off, size int64, err error) {
	i, err := index(name)
	if err != nil {
		return 0, 0, err
	}
	p := g.parts[i]
	return int64(p.first) * int64(g.lss), int64(p.last-p.first+1) * int64(g.lss), nil
}

// Slots reads the selectors from the GPT (the primary copy when it verifies,
// else the backup) and the headers from the partitions.
func (g *GPT) Slots() ([2]Slot, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var slots [2]Slot
	c, err := readGPT(g.f, g.lss, g.diskSectors).current()
	if err != nil {
		return slots, fmt.Errorf("config slot disk %s: %w", g.path, err)
	}
	for i, name := range [2]string{A, B} {
		p, err := c.find(PartitionNamePrefix + name)
		if err != nil {
			return slots, fmt.Errorf("config slot disk %s: %w", g.path, err)
		}
		slots[i] = Slot{Name: name, Selector: selectorFromAttrs(p.attrs)}
		d, err := g.readHeader(name)
		switch {
		case err == nil:
			slots[i].Header = d.Header
		case errors.Is(err, ErrEmpty) || errors.Is(err, ErrCorrupt):
		default:
			return slots, err
		}
	}
	return slots, nil
}

// readHeader reads a slot's header block and its current result.
func (g *GPT) readHeader(name string) (diskHeader, error) {
	off, size, err := g.extent(name)
	if err != nil {
		return diskHeader{}, err
	}
	b := make([]byte, PayloadOffset)
	if _, err := g.f.ReadAt(b, off); err != nil {
		return diskHeader{}, fmt.Errorf("read config slot %q header: %w", name, err)
	}
	d, err := g.decodeBound(name, b[:blockSize])
	if err != nil {
		return d, err
	}
	if d.payloadLen > uint64(size-PayloadOffset) {
		return d, fmt.Errorf("config slot %q: payload length %d exceeds the partition's %d: %w", name, d.payloadLen, size-PayloadOffset, ErrCorrupt)
	}
	d.Result, _, _ = results([2][]byte{b[resultOffset(0):], b[resultOffset(1):]}, d.crc)
	return d, nil
}

// decodeBound decodes a slot's header block and checks its binding: a
// record written for another disk or partition (an earlier installation
// that a new image was written over) reads as empty.
func (g *GPT) decodeBound(name string, b []byte) (diskHeader, error) {
	d, err := decodeHeader(b)
	if err != nil {
		return d, fmt.Errorf("config slot %q: %w", name, err)
	}
	i, err := index(name)
	if err != nil {
		return d, err
	}
	if want := g.bind[i]; d.bind != (Binding{}) && d.bind != want {
		return diskHeader{}, fmt.Errorf("config slot %q holds generation %d written for disk %s partition %s, this is disk %s partition %s "+
			"(left by an earlier installation): %w", name, d.Generation, d.bind.Disk, d.bind.Partition, want.Disk, want.Partition, ErrEmpty)
	}
	return d, nil
}

// Read returns a slot's header and verified payload.
func (g *GPT) Read(name string) (Header, []byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	d, err := g.readHeader(name)
	if err != nil {
		return Header{}, nil, err
	}
	off, _, _ := g.extent(name)
	data := make([]byte, d.payloadLen)
	if _, err := g.f.ReadAt(data, off+PayloadOffset); err != nil {
		return Header{}, nil, fmt.Errorf("read config slot %q payload: %w", name, err)
	}
	if err := d.verifyPayload(data); err != nil {
		return Header{}, nil, fmt.Errorf("config slot %q: %w", name, err)
	}
	return d.Header, data, nil
}

// Write replaces a slot's partition content (header, result, payload) and
// syncs the disk. Afterwards it drops those pages from the page cache, so a
// read-back comes from the device.
func (g *GPT) Write(name string, h Header, data []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	off, size, err := g.extent(name)
	if err != nil {
		return err
	}
	if int64(len(data)) > size-PayloadOffset {
		return fmt.Errorf("config of %d bytes does not fit slot %q: at most %d bytes, make partition %s larger",
			len(data), name, size-PayloadOffset, PartitionNamePrefix+name)
	}
	i, _ := index(name)
	b, err := encodeSlot(h, g.bind[i], data)
	if err != nil {
		return err
	}
	if _, err := g.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("write config slot %q: %w", name, err)
	}
	if err := g.f.Sync(); err != nil {
		return fmt.Errorf("sync config slot %q: %w", name, err)
	}
	// Best effort: only a cache hint.
	_ = g.control(func(fd int) error { return unix.Fadvise(fd, off, int64(len(b)), unix.FADV_DONTNEED) })
	return nil
}

// SetSelector rewrites the slot's partition entry attributes in both GPT
// copies, backup first, with their CRCs.
func (g *GPT) SetSelector(name string, s Selector) error {
	if err := s.validate(); err != nil {
		return err
	}
	i, err := index(name)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	t := readGPT(g.f, g.lss, g.diskSectors)
	c, err := t.current()
	if err != nil {
		return fmt.Errorf("config slot disk %s: %w", g.path, err)
	}
	p, err := c.find(PartitionNamePrefix + name)
	if err != nil {
		return fmt.Errorf("config slot disk %s: %w", g.path, err)
	}
	if p.first != g.parts[i].first || p.last != g.parts[i].last {
		return fmt.Errorf("config slot disk %s: partition %s moved to LBAs %d–%d since it was opened: reopen it", g.path, PartitionNamePrefix+name, p.first, p.last)
	}
	attrs := attrsWithSelector(p.attrs, s)
	if attrs == p.attrs && t.primary != nil && t.backup != nil &&
		t.primary.altLBA == t.backup.myLBA && bytes.Equal(t.primary.entries, t.backup.entries) {
		return nil // nothing to change, nothing to repair
	}
	return g.writeAttrs(t, p.index, attrs)
}

// SetResult writes the slot's result into the older of its two result
// records and syncs.
func (g *GPT) SetResult(name, result string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	off, _, err := g.extent(name)
	if err != nil {
		return err
	}
	b := make([]byte, PayloadOffset)
	if _, err := g.f.ReadAt(b, off); err != nil {
		return fmt.Errorf("read config slot %q header: %w", name, err)
	}
	d, err := g.decodeBound(name, b[:blockSize])
	if err != nil {
		return err
	}
	_, next, seq := results([2][]byte{b[resultOffset(0):], b[resultOffset(1):]}, d.crc)
	if _, err := g.f.WriteAt(encodeResult(seq, d.crc, result), off+resultOffset(next)); err != nil {
		return fmt.Errorf("write config slot %q result: %w", name, err)
	}
	if err := g.f.Sync(); err != nil {
		return fmt.Errorf("sync config slot %q result: %w", name, err)
	}
	return nil
}
