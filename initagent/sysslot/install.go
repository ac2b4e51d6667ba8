package sysslot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// Files on the live medium (ISO 9660 names as Linux shows them).
const (
	MediaInfoFile = "ballast/install.json"
	MediaMount    = "run/ballast/media"
)

// MediaInfo describes the disk image a live medium installs.
type MediaInfo struct {
	Disk   string `json:"disk"`   // path on the medium of the zstd-compressed raw image
	Size   int64  `json:"size"`   // raw image bytes
	SHA256 string `json:"sha256"` // of the raw image
	// Chunks lists the 1 MiB chunks of the image any tool wrote (the
	// image file's data, not its holes), as [first, last] chunk ranges.
	// The installer writes exactly these, zeros included; the rest is
	// space no filesystem in the image has claimed (free FAT clusters,
	// the empty slot B, ext4's lazily initialised tables and journal).
	Chunks [][2]int64 `json:"chunks"`
}

// Written reports whether chunk c (of InstallChunk bytes) holds image data.
func (m *MediaInfo) Written(c int64) bool {
	for _, r := range m.Chunks {
		if c >= r[0] && c <= r[1] {
			return true
		}
	}
	return false
}

// InstallChunk is the unit the installer writes and verifies.
const InstallChunk = 1 << 20

// InstallOptions say where to install.
type InstallOptions struct {
	Target string // whole-disk device, "/dev/vda"
	Wipe   bool   // install over existing partitions
	Config []byte // machine config for CONFIG-A; nil installs none
}

// Installer writes a live medium's disk image to a disk.
type Installer struct {
	Root string
	Log  *slog.Logger
}

func (in Installer) log() *slog.Logger {
	if in.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return in.Log
}

const chunk = InstallChunk

// Install mounts the live medium, writes the chunks of its image that
// hold data to o.Target (the disk is not zeroed: see MediaInfo.Chunks),
// checks the whole image's sha256, verifies every written chunk by reading
// it back, moves the backup GPT to the end of the disk and
// stores o.Config in a config slot. A target that holds partitions is
// refused unless o.Wipe.
func (in Installer) Install(ctx context.Context, o InstallOptions) error {
	log := in.log()
	target := o.Target
	if target != AutoTarget && !strings.HasPrefix(target, "/dev/") {
		return fmt.Errorf("ballast.install=%q: give a whole-disk device such as /dev/vda, or auto for the only empty disk", target)
	}
	media, info, err := in.findMedia()
	if err != nil {
		return err
	}
	if target == AutoTarget {
		if target, err = in.PickDisk(info.Size); err != nil {
			return err
		}
		log.Info("install target chosen", "target", target)
	}
	dev := filepath.Join(in.Root, target)
	if err := in.checkTarget(dev, o.Wipe); err != nil {
		return err
	}
	src, err := os.Open(filepath.Join(media, info.Disk))
	if err != nil {
		return fmt.Errorf("install image: %w", err)
	}
	defer src.Close()
	out, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", target, err)
	}
	defer out.Close()
	size, err := deviceSize(out)
	if err != nil {
		return err
	}
	if size < info.Size {
		return fmt.Errorf("%s has %d bytes, the image needs %d: pick a larger disk", target, size, info.Size)
	}
	log.Info("installing", "target", target, "imageBytes", info.Size, "diskBytes", size)
	dec, err := zstd.NewReader(ctxReader{ctx, src}, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer dec.Close()
	whole, written := sha256.New(), sha256.New()
	var dataChunks []int64
	buf := make([]byte, chunk)
	var off int64
	for off < info.Size {
		n, err := io.ReadFull(dec, buf[:min(chunk, info.Size-off)])
		if err != nil {
			return fmt.Errorf("read install image at %d: %w", off, err)
		}
		whole.Write(buf[:n])
		if info.Written(off / chunk) {
			if _, err := out.WriteAt(buf[:n], off); err != nil {
				return fmt.Errorf("write %s at %d: %w", target, off, err)
			}
			written.Write(buf[:n])
			dataChunks = append(dataChunks, off)
		}
		off += int64(n)
	}
	if got := hex.EncodeToString(whole.Sum(nil)); got != info.SHA256 {
		return fmt.Errorf("install image on the medium has sha256 %s, its install.json says %s: the medium is damaged", got, info.SHA256)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", target, err)
	}
	// Read back what was written, past the page cache.
	_ = unix.Fadvise(int(out.Fd()), 0, info.Size, unix.FADV_DONTNEED)
	_, _, _ = unix.Syscall(unix.SYS_IOCTL, out.Fd(), unix.BLKFLSBUF, 0)
	back := sha256.New()
	for _, c := range dataChunks {
		n := min(chunk, info.Size-c)
		if _, err := out.ReadAt(buf[:n], c); err != nil {
			return fmt.Errorf("read back %s at %d: %w", target, c, err)
		}
		back.Write(buf[:n])
	}
	if !bytes.Equal(back.Sum(nil), written.Sum(nil)) {
		return fmt.Errorf("%s does not read back what was written: the disk is failing", target)
	}
	log.Info("image written and verified", "target", target, "sha256", info.SHA256, "dataMiB", len(dataChunks))
	if _, _, _, err := GrowGPT(dev, PartState); err != nil {
		return fmt.Errorf("move backup GPT of %s to its end: %w", target, err)
	}
	if o.Config != nil {
		if err := writeConfig(dev, o.Config); err != nil {
			return err
		}
		log.Info("machine config stored in a config slot", "target", target)
	}
	return nil
}

// writeConfig stores cfg as the committed config of the new disk.
func writeConfig(dev string, cfg []byte) error {
	store, err := slot.NewGPT(dev)
	if err != nil {
		return fmt.Errorf("config slots on %s: %w", dev, err)
	}
	defer store.Close()
	name, err := slot.Begin(store, slot.Header{}, cfg)
	if err != nil {
		return fmt.Errorf("write config slot: %w", err)
	}
	if err := slot.Commit(store, name); err != nil {
		return fmt.Errorf("commit config slot: %w", err)
	}
	return nil
}

// AutoTarget as ballast.install= installs to the only empty disk.
const AutoTarget = "auto"

// PickDisk returns the only disk an automatic install may use: a whole,
// writable, non-removable disk of at least need bytes with no partitions
// and no partition table. None or several is an error that lists them.
func (in Installer) PickDisk(need int64) (string, error) {
	devs, _ := filepath.Glob(filepath.Join(in.Root, "sys/block/*"))
	sort.Strings(devs)
	var empty, why []string
	for _, d := range devs {
		name := filepath.Base(d)
		if hasPrefix(name, "loop", "ram", "zram", "sr", "dm-", "md", "nbd", "fd") {
			continue
		}
		attr := func(a string) string {
			b, _ := os.ReadFile(filepath.Join(d, a))
			return strings.TrimSpace(string(b))
		}
		sectors, _ := strconv.ParseInt(attr("size"), 10, 64)
		parts, _ := filepath.Glob(filepath.Join(d, name+"*"))
		switch {
		case attr("removable") == "1":
			why = append(why, name+" is removable")
		case attr("ro") == "1":
			why = append(why, name+" is read-only")
		case sectors*512 < need:
			why = append(why, fmt.Sprintf("%s is too small (%d MiB, need %d)", name, sectors*512>>20, need>>20))
		case len(parts) > 0 || in.hasTable(filepath.Join(in.Root, "dev", name)):
			why = append(why, name+" holds partitions")
		default:
			empty = append(empty, name)
		}
	}
	switch len(empty) {
	case 1:
		return "/dev/" + empty[0], nil
	case 0:
		return "", fmt.Errorf("ballast.install=auto: no empty disk (%s): name one with ballast.install=/dev/…", strings.Join(why, "; "))
	}
	return "", fmt.Errorf("ballast.install=auto: several empty disks (%s): name one with ballast.install=/dev/…", strings.Join(empty, ", "))
}

func hasPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// hasTable reports an MBR or GPT signature on dev.
func (in Installer) hasTable(dev string) bool {
	f, err := os.Open(dev)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 1024)
	if _, err := f.ReadAt(head, 0); err != nil {
		return false
	}
	return binary.LittleEndian.Uint16(head[510:]) == 0xAA55 || string(head[512:520]) == "EFI PART"
}

// checkTarget refuses a disk that holds partitions (seen by the kernel or
// a partition table signature) unless wipe.
func (in Installer) checkTarget(dev string, wipe bool) error {
	name := filepath.Base(dev)
	parts, _ := filepath.Glob(filepath.Join(in.Root, "sys/class/block", name, name+"*"))
	if _, err := os.Stat(dev); err != nil {
		return fmt.Errorf("install target: %w", err)
	}
	if (len(parts) > 0 || in.hasTable(dev)) && !wipe {
		return fmt.Errorf("%s holds a partition table (%d partitions): set ballast.install.wipe=true to overwrite it", dev, len(parts))
	}
	return nil
}

// findMedia mounts each CD-ROM and disk in turn read-only as ISO 9660
// until one has install.json.
func (in Installer) findMedia() (string, *MediaInfo, error) {
	mnt := filepath.Join(in.Root, MediaMount)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", nil, err
	}
	if mounted(mnt) {
		if info, err := readMediaInfo(mnt); err == nil {
			return mnt, info, nil
		}
		_ = unix.Unmount(mnt, 0)
	}
	devs, _ := filepath.Glob(filepath.Join(in.Root, "sys/class/block/*"))
	sort.Strings(devs)
	var tried []string
	for _, d := range devs {
		kv := readUevent(filepath.Join(d, "uevent"))
		if kv["DEVTYPE"] != "disk" || strings.HasPrefix(kv["DEVNAME"], "loop") || strings.HasPrefix(kv["DEVNAME"], "ram") {
			continue
		}
		dev := filepath.Join(in.Root, "dev", kv["DEVNAME"])
		if err := unix.Mount(dev, mnt, "iso9660", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
			tried = append(tried, kv["DEVNAME"])
			continue
		}
		info, err := readMediaInfo(mnt)
		if err == nil {
			in.log().Info("live medium", "device", dev)
			return mnt, info, nil
		}
		_ = unix.Unmount(mnt, 0)
		tried = append(tried, kv["DEVNAME"])
	}
	return "", nil, fmt.Errorf("no live medium with %s found (tried %s): boot the installer ISO (is isofs/sr_mod in the recipe?)", MediaInfoFile, strings.Join(tried, ", "))
}

func readMediaInfo(dir string) (*MediaInfo, error) {
	data, err := os.ReadFile(filepath.Join(dir, MediaInfoFile))
	if err != nil {
		return nil, err
	}
	var info MediaInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", MediaInfoFile, err)
	}
	if info.Disk == "" || info.Size <= 0 || len(info.SHA256) != 64 {
		return nil, errors.New(MediaInfoFile + " lacks disk, size or sha256")
	}
	return &info, nil
}
