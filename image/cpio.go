package image

import (
	"fmt"
	"io"
)

// newc cpio: a 110-byte ASCII header (magic and 13 eight-digit hex fields),
// the NUL-terminated name and the data, each padded to 4 bytes.
const (
	newcMagic   = "070701"
	cpioTrailer = "TRAILER!!!"
	cpioModeReg = 0o100000
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
	if err := writeNewcHeader(cw, name, cpioModeReg|0o444, 1, size); err != nil {
		return cw.n, err
	}
	n, err := io.CopyN(cw, r, size)
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("cpio: %s ended after %d of %d bytes", name, n, size)
		}
		return cw.n, err
	}
	if err := pad4(cw); err != nil {
		return cw.n, err
	}
	if err := writeNewcHeader(cw, cpioTrailer, 0, 1, 0); err != nil {
		return cw.n, err
	}
	return cw.n, nil
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
