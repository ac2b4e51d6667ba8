package boot

import (
	"fmt"
	"strconv"
)

// EarlyArchivesEnd returns where the uncompressed newc archives at the
// start of an initrd end (the early microcode cpio imgbuild puts first in
// initramfs.img), walking them as the kernel does: headers one after
// another, NUL padding skipped, until something that is not a header.
// What follows is the compressed initramfs; 0 means there is none first.
func EarlyArchivesEnd(initrd []byte) (int, error) {
	const hdrLen, magic = 110, "070701"
	p := 0
	for p+hdrLen <= len(initrd) {
		if initrd[p] == 0 {
			p += 4
			continue
		}
		if string(initrd[p:p+6]) != magic {
			return p, nil
		}
		field := func(i int) (int, error) {
			v, err := strconv.ParseUint(string(initrd[p+6+8*i:p+14+8*i]), 16, 32)
			return int(v), err
		}
		size, err := field(6)
		if err != nil {
			return 0, fmt.Errorf("initrd: cpio header at byte %d: file size: %w", p, err)
		}
		nameSize, err := field(11)
		if err != nil {
			return 0, fmt.Errorf("initrd: cpio header at byte %d: name size: %w", p, err)
		}
		next := ((p+hdrLen+nameSize+3)&^3 + size + 3) &^ 3
		if next > len(initrd) {
			return 0, fmt.Errorf("initrd: cpio entry at byte %d runs past the end (%d bytes)", p, len(initrd))
		}
		p = next
	}
	return min(p, len(initrd)), nil
}
