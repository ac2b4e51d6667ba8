package disk

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// FATEpoch is the SOURCE_DATE_EPOCH go-diskfs stamps on every FAT entry
// when the caller set none: 1980-01-02, inside FAT's date range.
const FATEpoch = "315619200"

// File is one file to put on a filesystem: from a host path or from bytes.
type File struct {
	Name string // path inside the filesystem, "/EFI/BOOT/BOOTX64.EFI"
	Src  string // host file; or
	Data []byte
}

func (f File) open() (io.ReadCloser, error) {
	if f.Src != "" {
		return os.Open(f.Src)
	}
	return io.NopCloser(strings.NewReader(string(f.Data))), nil
}

// writeFAT makes a FAT filesystem of size bytes at offset start of out
// and copies files into it, directories first, in name order. Volumes of
// at least 64 MiB get FAT32 (the ESP); smaller ones FAT16 (El Torito's
// efiboot.img), since FAT32 needs 65525 clusters.
func writeFAT(out *os.File, start, size int64, label string, files []File) error {
	if os.Getenv("SOURCE_DATE_EPOCH") == "" {
		// go-diskfs reads the time of every entry from here (process-wide).
		os.Setenv("SOURCE_DATE_EPOCH", FATEpoch)
	}
	b := file.New(out, false)
	var fs filesystem.FileSystem
	var err error
	if size >= 64<<20 {
		fs, err = fat32.Create(b, fat32Size(size), start, 512, label, true)
	} else {
		fs, err = fat16.Create(b, size, start, 512, label, true)
	}
	if err != nil {
		return fmt.Errorf("create FAT %s: %w", label, err)
	}
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	made := map[string]bool{"/": true}
	for _, f := range sorted {
		for d := path.Dir(f.Name); !made[d]; d = path.Dir(d) {
			var chain []string
			for x := d; !made[x]; x = path.Dir(x) {
				chain = append([]string{x}, chain...)
			}
			for _, x := range chain {
				if err := fs.Mkdir(x); err != nil {
					return fmt.Errorf("FAT %s: mkdir %s: %w", label, x, err)
				}
				made[x] = true
			}
		}
		if err := copyInto(fs, f); err != nil {
			return fmt.Errorf("FAT %s: %s: %w", label, f.Name, err)
		}
	}
	if _, ok := fs.(*fat32.FileSystem); ok {
		if err := fixFAT32(out, start); err != nil {
			return fmt.Errorf("FAT %s: %w", label, err)
		}
	}
	return nil
}

// fixFAT32 corrects two things go-diskfs v1.9.4 writes differently from
// the FAT specification, which fsck.fat reports and stricter firmware may
// mind: ".." of a directory in the root must name cluster 0, not the root
// cluster; and FSInfo should carry the free cluster count.
func fixFAT32(f *os.File, start int64) error {
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, start); err != nil {
		return err
	}
	le16 := func(b []byte) int64 { return int64(binary.LittleEndian.Uint16(b)) }
	le32 := func(b []byte) int64 { return int64(binary.LittleEndian.Uint32(b)) }
	bps, spc := le16(bs[11:]), int64(bs[13])
	reserved, nfats, spf := le16(bs[14:]), int64(bs[16]), le32(bs[36:])
	total, root, fsinfo := le32(bs[32:]), le32(bs[44:]), le16(bs[48:])
	dataStart := start + (reserved+nfats*spf)*bps
	clusterBytes := spc * bps
	clusters := (total - reserved - nfats*spf) / spc
	fat := make([]byte, spf*bps)
	if _, err := f.ReadAt(fat, start+reserved*bps); err != nil {
		return err
	}
	next := func(c int64) int64 { return le32(fat[4*c:]) & 0x0FFFFFFF }
	at := func(c int64) int64 { return dataStart + (c-2)*clusterBytes }
	buf := make([]byte, clusterBytes)
	for c := root; c >= 2 && c < 0x0FFFFFF8 && c < clusters+2; c = next(c) {
		if _, err := f.ReadAt(buf, at(c)); err != nil {
			return err
		}
		for off := int64(0); off+32 <= clusterBytes; off += 32 {
			e := buf[off : off+32]
			if e[0] == 0 {
				break
			}
			if e[0] == 0xE5 || e[11] == 0x0F || e[11]&0x10 == 0 || e[0] == '.' {
				continue
			}
			sub := le16(e[20:])<<16 | le16(e[26:])
			dotdot := make([]byte, 32)
			if _, err := f.ReadAt(dotdot, at(sub)+32); err != nil {
				return err
			}
			if string(dotdot[:2]) != ".." {
				continue
			}
			clear(dotdot[20:22])
			clear(dotdot[26:28])
			if _, err := f.WriteAt(dotdot, at(sub)+32); err != nil {
				return err
			}
		}
	}
	var free uint32
	for c := int64(2); c < clusters+2; c++ {
		if next(c) == 0 {
			free++
		}
	}
	for _, sec := range []int64{fsinfo, 6 + fsinfo} {
		b := make([]byte, 4)
		binary.LittleEndian.PutUint32(b, free)
		if _, err := f.WriteAt(b, start+sec*bps+0x1E8); err != nil {
			return err
		}
	}
	return nil
}

func copyInto(fs filesystem.FileSystem, f File) error {
	in, err := f.open()
	if err != nil {
		return err
	}
	defer in.Close()
	w, err := fs.OpenFile(f.Name, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, in); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// fileSize is the size of a File's content.
func fileSize(f File) (int64, error) {
	if f.Src == "" {
		return int64(len(f.Data)), nil
	}
	fi, err := os.Stat(f.Src)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// fat32Size works around go-diskfs v1.9.4 sizing the FAT for the data
// clusters without the two reserved entries (fsck.fat: "Filesystem has N
// clusters but only space for N-2 FAT entries") when the cluster count is
// a multiple of 128: it gives up a few sectors at the end until the FAT
// has room, using go-diskfs's own formula.
func fat32Size(size int64) int64 {
	const bps, reserved = 512, 32
	spc := int64(1)
	if size > 260<<20 {
		spc = 8 // 4 KiB clusters up to 8 GiB, as go-diskfs picks
	}
	total := size / bps
	for n := int64(0); n < 4*spc*bps; n++ {
		t := total - n
		spf := (4*(t-reserved) + bps*spc + 8 - 1) / (bps*spc + 8)
		clusters := (t - reserved - 2*spf) / spc
		if spf*(bps/4) >= clusters+2 {
			return t * bps
		}
	}
	return size
}
