package image

import (
	"bytes"
	"fmt"
	"io"
	"path"
)

// newc cpio: a 110-byte ASCII header (magic and 13 eight-digit hex fields),
// the NUL-terminated name and the data, each padded to 4 bytes.
const (
	newcMagic   = "070701"
	cpioTrailer = "TRAILER!!!"
	cpioModeReg = 0o100000
	cpioModeDir = 0o040000
)

// WriteFileCPIO writes an uncompressed newc cpio archive holding one
// regular file, name, with the size bytes read from r (mode 0444, owner
// root, mtime 0, so equal data gives equal bytes), then the trailer; its
// length is a multiple of 4. The kernel unpacks an initrd made of several
// archives one after another, so this one, loaded before initramfs.img,
// puts /name into the node's rootfs. The data is streamed, never held in
// memory.
func WriteFileCPIO(w io.Writer, name string, r io.Reader, size int64) (int64, error) {
	if size < 0 || size > 0xffffffff {
		return 0, fmt.Errorf("cpio: %s is %d bytes; newc holds files up to 4 GiB", name, size)
	}
	cw := &countingWriter{w: w}
	if err := writeNewcFile(cw, name, r, size); err != nil {
		return cw.n, err
	}
	if err := writeNewcHeader(cw, cpioTrailer, 0, 1, 0); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

// writeNewcFile writes a regular file (mode 0444) with the size bytes of r.
func writeNewcFile(cw *countingWriter, name string, r io.Reader, size int64) error {
	if err := writeNewcHeader(cw, name, cpioModeReg|0o444, 1, size); err != nil {
		return err
	}
	n, err := io.CopyN(cw, r, size)
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("cpio: %s ended after %d of %d bytes", name, n, size)
		}
		return err
	}
	return pad4(cw)
}

// writeNewcHeader writes one entry's header and name, padded to 4 bytes.
// Inode, owner, mtime and device numbers are 0.
func writeNewcHeader(cw *countingWriter, name string, mode, nlink uint32, size int64) error {
	hdr := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%s\x00",
		newcMagic, 0, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0, name)
	if _, err := io.WriteString(cw, hdr); err != nil {
		return err
	}
	return pad4(cw)
}

func pad4(cw *countingWriter) error {
	if rem := cw.n % 4; rem != 0 {
		_, err := cw.Write(make([]byte, 4-rem))
		return err
	}
	return nil
}

// EarlyFile is a file of the early cpio: CPU microcode the kernel reads
// before it unpacks anything.
type EarlyFile struct {
	Name string // "kernel/x86/microcode/GenuineIntel.bin"
	Data []byte
}

// WriteEarlyCPIO writes the uncompressed newc archive that goes first in
// initramfs.img: the files' parent directories (so the kernel's later
// unpacking into rootfs creates the files too) and the files, then the
// trailer; its length is a multiple of 4, so the compressed archive after
// it is found where the kernel looks.
func WriteEarlyCPIO(w io.Writer, files []EarlyFile) (int64, error) {
	cw := &countingWriter{w: w}
	dirs := map[string]bool{}
	var order []string
	for _, f := range files {
		var parents []string
		for d := path.Dir(f.Name); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			parents = append([]string{d}, parents...)
		}
		order = append(order, parents...)
	}
	for _, d := range order {
		if err := writeNewcHeader(cw, d, cpioModeDir|0o755, 2, 0); err != nil {
			return cw.n, err
		}
	}
	for _, f := range files {
		if err := writeNewcFile(cw, f.Name, bytes.NewReader(f.Data), int64(len(f.Data))); err != nil {
			return cw.n, err
		}
	}
	if err := writeNewcHeader(cw, cpioTrailer, 0, 1, 0); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}
