package slot

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Dir keeps the slots as files in a directory, for diskless nodes (tmpfs):
// A and B hold the slot format of format.go, selectors.json both selectors.
// Every change replaces a whole file atomically (temporary file in the same
// directory, fsync, rename, fsync of the directory).
type Dir struct {
	dir string
	mu  sync.Mutex
}

var _ Store = (*Dir)(nil)

const (
	selectorFile = "selectors.json"
	tempPrefix   = ".tmp-"
)

// NewDir uses dir, creating it if needed, and removes temporary files that an
// interrupted write left behind.
func NewDir(dir string) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create config slot directory: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read config slot directory: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("remove leftover temporary file: %w", err)
			}
		}
	}
	return &Dir{dir: dir}, nil
}

func (d *Dir) readSelectors() (map[string]Selector, error) {
	sels := map[string]Selector{}
	b, err := os.ReadFile(filepath.Join(d.dir, selectorFile))
	if errors.Is(err, fs.ErrNotExist) {
		return sels, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config slot selectors: %w", err)
	}
	if err := json.Unmarshal(b, &sels); err != nil {
		return nil, fmt.Errorf("config slot selectors %s: %v: %w", filepath.Join(d.dir, selectorFile), err, ErrCorrupt)
	}
	for name, s := range sels {
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("config slot selectors, slot %q: %v: %w", name, err, ErrCorrupt)
		}
	}
	return sels, nil
}

// load reads a slot file and decodes its header and result.
func (d *Dir) load(name string) ([]byte, diskHeader, error) {
	if _, err := index(name); err != nil {
		return nil, diskHeader{}, err
	}
	b, err := os.ReadFile(filepath.Join(d.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, diskHeader{}, fmt.Errorf("config slot %q: %w", name, ErrEmpty)
	}
	if err != nil {
		return nil, diskHeader{}, fmt.Errorf("read config slot %q: %w", name, err)
	}
	if len(b) < PayloadOffset {
		return nil, diskHeader{}, fmt.Errorf("config slot %q: file of %d bytes: %w", name, len(b), ErrCorrupt)
	}
	h, err := decodeHeader(b[:blockSize])
	if err != nil {
		return nil, h, fmt.Errorf("config slot %q: %w", name, err)
	}
	h.Result, _, _ = results([2][]byte{b[resultOffset(0):], b[resultOffset(1):]}, h.crc)
	return b, h, nil
}

// Slots reads both selectors and headers.
func (d *Dir) Slots() ([2]Slot, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var slots [2]Slot
	sels, err := d.readSelectors()
	if err != nil {
		return slots, err
	}
	for i, name := range [2]string{A, B} {
		slots[i] = Slot{Name: name, Selector: sels[name]}
		_, h, err := d.load(name)
		switch {
		case err == nil:
			slots[i].Header = h.Header
		case errors.Is(err, ErrEmpty) || errors.Is(err, ErrCorrupt):
		default:
			return slots, err
		}
	}
	return slots, nil
}

// Read returns a slot's header and verified payload.
func (d *Dir) Read(name string) (Header, []byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, h, err := d.load(name)
	if err != nil {
		return Header{}, nil, err
	}
	data := b[PayloadOffset:]
	if err := h.verifyPayload(data); err != nil {
		return Header{}, nil, fmt.Errorf("config slot %q: %w", name, err)
	}
	return h.Header, data, nil
}

// Write replaces a slot file atomically.
func (d *Dir) Write(name string, h Header, data []byte) error {
	if _, err := index(name); err != nil {
		return err
	}
	b, err := encodeSlot(h, Binding{}, data)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.replace(name, b)
}

// SetSelector replaces the selector file atomically.
func (d *Dir) SetSelector(name string, s Selector) error {
	if err := s.validate(); err != nil {
		return err
	}
	if _, err := index(name); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sels, err := d.readSelectors()
	if err != nil {
		return err
	}
	sels[name] = s
	b, err := json.Marshal(sels)
	if err != nil {
		return fmt.Errorf("encode config slot selectors: %w", err)
	}
	return d.replace(selectorFile, append(b, '\n'))
}

// SetResult rewrites the slot file with a new result record.
func (d *Dir) SetResult(name, result string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, h, err := d.load(name)
	if err != nil {
		return err
	}
	_, next, seq := results([2][]byte{b[resultOffset(0):], b[resultOffset(1):]}, h.crc)
	copy(b[resultOffset(next):], encodeResult(seq, h.crc, result))
	return d.replace(name, b)
}

// replace writes name atomically: a power cut leaves the old or the new file.
func (d *Dir) replace(name string, b []byte) (err error) {
	f, err := os.CreateTemp(d.dir, tempPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("write config slot file %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write config slot file %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync config slot file %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close config slot file %s: %w", name, err)
	}
	if err := os.Rename(f.Name(), filepath.Join(d.dir, name)); err != nil {
		return fmt.Errorf("replace config slot file %s: %w", name, err)
	}
	dir, err := os.Open(d.dir)
	if err != nil {
		return fmt.Errorf("sync config slot directory: %w", err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("sync config slot directory: %w", err)
	}
	return nil
}
