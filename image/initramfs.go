package image

import (
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"
)

// Archive is an in-memory initramfs manifest: archive path → record.
// Entries are checked for conflicts as they are added and written in sorted
// order with normalised metadata, so equal inputs give equal bytes.
type Archive struct {
	records map[string]cpio.Record
}

// NewArchive returns an empty archive holding the root directory.
func NewArchive() *Archive {
	return &Archive{records: map[string]cpio.Record{}}
}

// AddFile adds a regular file, creating its parent directories.
func (a *Archive) AddFile(name string, data []byte, perm uint64) error {
	return a.add(cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm}))
}

// AddDir adds a directory and its parents.
func (a *Archive) AddDir(name string, perm uint64) error {
	return a.add(cpio.Directory(name, perm))
}

// AddCharDev adds a character device node (e.g. /dev/console, which the
// kernel opens before it runs /init).
func (a *Archive) AddCharDev(name string, perm, major, minor uint64) error {
	return a.add(cpio.CharDev(name, perm, major, minor))
}

// AddSymlink adds a symbolic link.
func (a *Archive) AddSymlink(name, target string) error {
	return a.add(cpio.Symlink(name, target))
}

func (a *Archive) add(r cpio.Record) error {
	name := cpio.Normalize(r.Name)
	if name == "" || name == "." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("BUG: bad archive path %q", r.Name)
	}
	r.Name = name
	if old, ok := a.records[name]; ok {
		if old.Mode&cpio.S_IFMT == cpio.S_IFDIR && r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			return nil
		}
		return fmt.Errorf("initramfs: %q added twice", "/"+name)
	}
	if dir := path.Dir(name); dir != "." {
		if err := a.add(cpio.Directory(dir, 0o755)); err != nil {
			return err
		}
	}
	a.records[name] = cpio.MakeReproducible(r)
	return nil
}

// Names lists the archive's paths in write order.
func (a *Archive) Names() []string {
	names := make([]string, 0, len(a.records))
	for n := range a.records {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// WriteTo writes the archive as an LZ4-compressed newc cpio (LZ4's legacy
// frame, the one the kernel reads). Sorted names put every directory before
// its contents.
//
// LZ4 rather than zstd: the kernel unpacks the initramfs before it runs
// /init, and LZ4 decompresses several times faster. Measured booting the
// control-plane initramfs (58 MB unpacked) under TCG: /init ran 0.4 s
// earlier than with zstd, for 23.4 MB instead of 17.9 MB. Level 1 of LZ4
// HC: on that archive it packs in 1.6 s to 23.4 MB, level 9 in 7.4 s to
// 23.3 MB, the fast mode in 0.5 s to 26.4 MB; the kernel decompresses every
// level equally fast.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	// One goroutine and a fixed level make the output depend only on the input.
	zw := lz4.NewWriter(cw)
	if err := zw.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Level1), lz4.ConcurrencyOption(1)); err != nil {
		return 0, err
	}
	rw := cpio.Newc.Writer(zw)
	for _, name := range a.Names() {
		if err := rw.WriteRecord(a.records[name]); err != nil {
			return cw.n, fmt.Errorf("initramfs: write %s: %w", name, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return cw.n, err
	}
	if err := zw.Close(); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

// NewInitramfsReader reads the cpio back from what WriteTo wrote (after any
// uncompressed early archives).
func NewInitramfsReader(r io.Reader) io.Reader { return lz4.NewReader(r) }

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
