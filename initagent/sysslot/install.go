package sysslot

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
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
	"time"
	"unsafe"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/disks"
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
	Wipe   bool   // install over a disk that is not empty (ballast.install.wipe=true)
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

// Install mounts the live medium and installs its image to o.Target (see
// installFrom).
func (in Installer) Install(ctx context.Context, o InstallOptions) error {
	target := o.Target
	if target != AutoTarget && !strings.HasPrefix(target, "/dev/") {
		return fmt.Errorf("ballast.install=%q: give a whole-disk device such as /dev/vda, or auto for the only empty disk", target)
	}
	if target == AutoTarget && o.Wipe {
		return fmt.Errorf("ballast.install=auto with ballast.install.wipe=true: auto only ever picks an empty disk; name the disk to overwrite, ballast.install=/dev/…")
	}
	if strings.HasPrefix(target, disks.ByIDDir) {
		dev, err := disks.Resolve(filepath.Join(in.Root, "sys"), target)
		if err != nil {
			return fmt.Errorf("ballast.install=%s: %w", target, err)
		}
		in.log().Info("install target resolved", "name", target, "device", dev)
		o.Target = dev
	}
	// The medium may sit on a bus still being enumerated (a USB stick).
	media, info, err := in.findMedia()
	for deadline := time.Now().Add(mediaWait); err != nil && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		media, info, err = in.findMedia()
	}
	if err != nil {
		return err
	}
	return in.installFrom(ctx, media, info, o)
}

// mediaWait bounds the wait for the live medium to appear.
const mediaWait = 30 * time.Second

// installFrom writes the image described by info (in the directory media)
// to o.Target: a whole disk that is not in use and, unless o.Wipe, empty
// (checkTarget). It zeroes the disk's last MiB (so no signature of an
// earlier user at the end of the disk survives), writes the chunks of the
// image that hold data (see MediaInfo.Chunks), checks the whole image's
// sha256, verifies every written chunk by reading it back, zeroes the
// chunks of CONFIG-A, CONFIG-B and STATE the image leaves unwritten (an
// earlier installation's configs and STATE journal must not survive there),
// moves the backup GPT to the end of the disk, gives the disk and its
// partitions new GUIDs (config slot records are bound to them) and stores
// o.Config in a config slot.
func (in Installer) installFrom(ctx context.Context, media string, info *MediaInfo, o InstallOptions) error {
	log := in.log()
	target := o.Target
	var err error
	how := "named on the cmdline"
	if target == AutoTarget {
		if target, err = in.PickDisk(info.Size); err != nil {
			return err
		}
		how = "the only empty disk"
	}
	log.Info("install target chosen", "target", target, "how", how)
	dev := filepath.Join(in.Root, target)
	found, err := in.checkTarget(target, o.Wipe)
	if err != nil {
		return err
	}
	if len(found) > 0 {
		log.Warn("ballast.install.wipe=true: overwriting what is on the disk", "target", target, "found", strings.Join(found, "; "))
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
	// The end of the disk first: a backup GPT, MD 0.90/1.0 superblocks and
	// ZFS labels live there, beyond what the image covers.
	if tail := max(info.Size, size-ProbeSpan); tail < size {
		if err := zeroRange(out, tail, size-tail); err != nil {
			return fmt.Errorf("zero the end of %s: %w", target, err)
		}
	}
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
	zeroed, err := clearUnwritten(out, info, PartConfigA, PartConfigB, PartState)
	if err != nil {
		return fmt.Errorf("clear config slots and STATE of %s: %w", target, err)
	}
	log.Info("config slots and STATE cleared of earlier contents", "target", target, "zeroedMiB", zeroed>>20)
	if err := out.Close(); err != nil {
		return fmt.Errorf("close %s: %w", target, err)
	}
	if _, _, _, err := GrowGPT(dev, PartState); err != nil {
		return fmt.Errorf("move backup GPT of %s to its end: %w", target, err)
	}
	if err := RelabelGPT(dev, rand.Reader); err != nil {
		return fmt.Errorf("new GUIDs for %s: %w", target, err)
	}
	if o.Config != nil {
		if err := writeConfig(dev, o.Config); err != nil {
			return err
		}
		log.Info("machine config stored in a config slot", "target", target)
	}
	// Let the kernel see the new partitions (best effort: the node reboots).
	if f, err := os.Open(dev); err == nil {
		_ = unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0)
		f.Close()
	}
	return nil
}

// clearUnwritten zeroes every chunk of the named partitions (as the GPT on
// f places them) that lies in the image but holds no image data, syncs,
// and checks the config slots read back as zeroes. It returns the bytes
// zeroed.
func clearUnwritten(f *os.File, info *MediaInfo, names ...string) (int64, error) {
	parts, err := gptPartitions(f)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, name := range names {
		p, ok := parts[name]
		if !ok {
			return total, fmt.Errorf("the image has no %s partition", name)
		}
		end := min(p.off+p.size, info.Size)
		var runStart, runEnd int64 = -1, -1
		flush := func() error {
			if runStart < 0 {
				return nil
			}
			total += runEnd - runStart
			err := zeroRange(f, runStart, runEnd-runStart)
			runStart, runEnd = -1, -1
			return err
		}
		for c := p.off / chunk; c*chunk < end; c++ {
			lo, hi := max(c*chunk, p.off), min((c+1)*chunk, end)
			if info.Written(c) || lo >= hi {
				if err := flush(); err != nil {
					return total, err
				}
				continue
			}
			if runStart < 0 {
				runStart = lo
			}
			runEnd = hi
		}
		if err := flush(); err != nil {
			return total, err
		}
	}
	if err := f.Sync(); err != nil {
		return total, err
	}
	for _, name := range []string{PartConfigA, PartConfigB} {
		p, ok := parts[name]
		if !ok {
			continue
		}
		_ = unix.Fadvise(int(f.Fd()), p.off, p.size, unix.FADV_DONTNEED)
		b := make([]byte, p.size)
		if _, err := f.ReadAt(b, p.off); err != nil {
			return total, fmt.Errorf("read back %s: %w", name, err)
		}
		if i := firstNonZero(b); i >= 0 && !info.Written((p.off+int64(i))/chunk) {
			return total, fmt.Errorf("%s still holds data at byte %d after zeroing it: the disk is failing", name, i)
		}
	}
	return total, nil
}

// zeroRange writes zeroes over n bytes at off: BLKZEROOUT on a block device
// (the device may do it without transferring the zeroes), else plain writes.
func zeroRange(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeDevice != 0 && off%512 == 0 && n%512 == 0 {
		r := [2]uint64{uint64(off), uint64(n)}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r))); errno == 0 {
			return nil
		}
	}
	zero := make([]byte, min(n, chunk))
	for n > 0 {
		w := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:w], off); err != nil {
			return err
		}
		off, n = off+w, n-w
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
// writable, non-removable disk of at least need bytes that nothing uses
// (see disksInUse), with no partitions and nothing ProbeDisk finds in its
// first and last MiB. A disk that cannot be read is not empty. None or
// several is an error that lists them and why.
func (in Installer) PickDisk(need int64) (string, error) {
	devs, _ := filepath.Glob(filepath.Join(in.Root, "sys/block/*"))
	sort.Strings(devs)
	used := in.disksInUse()
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
		switch {
		case attr("removable") == "1":
			why = append(why, name+" is removable")
		case attr("ro") == "1":
			why = append(why, name+" is read-only")
		case sectors*512 < need:
			why = append(why, fmt.Sprintf("%s is too small (%d MiB, need %d)", name, sectors*512>>20, need>>20))
		case used[name] != "":
			why = append(why, name+": "+used[name])
		default:
			if reason := in.notEmpty(d, name); reason != "" {
				why = append(why, name+" "+reason)
				continue
			}
			empty = append(empty, name)
		}
	}
	switch len(empty) {
	case 1:
		return "/dev/" + empty[0], nil
	case 0:
		return "", fmt.Errorf("ballast.install=auto: no empty disk (%s): name one with ballast.install=/dev/… (and ballast.install.wipe=true to overwrite what is on it)", strings.Join(why, "; "))
	}
	return "", fmt.Errorf("ballast.install=auto: several empty disks (%s): name one with ballast.install=/dev/…", strings.Join(empty, ", "))
}

// notEmpty says why the disk with sysfs directory sys is not empty, or "".
func (in Installer) notEmpty(sys, name string) string {
	if h := holders(sys, name); len(h) > 0 {
		return "is in use by " + strings.Join(h, ", ") + " (device mapper, RAID or bcache on it)"
	}
	if parts := kernelPartitions(sys, name); len(parts) > 0 {
		return "holds partitions (" + strings.Join(parts, ", ") + ")"
	}
	sigs, err := probePath(filepath.Join(in.Root, "dev", name))
	if err != nil {
		return fmt.Sprintf("cannot be read (%v), so it does not count as empty", err)
	}
	if len(sigs) > 0 {
		if hasTable(sigs) {
			return "holds a partition table (" + describe(sigs) + ")"
		}
		return "is not empty (" + describe(sigs) + ")"
	}
	return ""
}

// probePath opens dev read-only and probes it.
func probePath(dev string) ([]Signature, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	return ProbeDisk(f, size)
}

func hasPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// checkTarget refuses, whatever wipe says, a target that is a partition,
// holds the live medium or anything else the running system uses, is held
// by device mapper or RAID, or cannot be read; and, unless wipe, one that
// is not empty (partitions the kernel knows, or anything ProbeDisk finds).
// It returns what wipe overwrites.
func (in Installer) checkTarget(target string, wipe bool) ([]string, error) {
	dev := filepath.Join(in.Root, target)
	b, err := in.resolveTarget(dev)
	if err != nil {
		return nil, err
	}
	if b.parent != "" {
		return nil, fmt.Errorf("%s is partition %s of /dev/%s: ballast installs to a whole disk; give ballast.install=/dev/%s (with ballast.install.wipe=true, as it is partitioned)",
			target, b.partno, b.parent, b.parent)
	}
	if why := in.disksInUse()[b.name]; why != "" {
		return nil, fmt.Errorf("%s: not installing there: %s; pick another disk", target, why)
	}
	if b.sys != "" {
		if h := holders(b.sys, b.name); len(h) > 0 {
			return nil, fmt.Errorf("%s is in use by %s (device mapper, RAID or bcache on it): not installing there; stop them or pick another disk", target, strings.Join(h, ", "))
		}
	}
	sigs, err := probePath(dev)
	if err != nil {
		return nil, fmt.Errorf("%s cannot be read to check what is on it (%v): not installing over content that cannot be checked; check or replace the disk", target, err)
	}
	var found []string
	if b.sys != "" {
		if parts := kernelPartitions(b.sys, b.name); len(parts) > 0 {
			found = append(found, fmt.Sprintf("%d partitions the kernel knows (%s)", len(parts), strings.Join(parts, ", ")))
		}
	}
	for _, s := range sigs {
		found = append(found, s.String())
	}
	if len(found) == 0 || wipe {
		return found, nil
	}
	what := "is not empty"
	if hasTable(sigs) || len(found) > len(sigs) {
		what = "holds a partition table"
	}
	return nil, fmt.Errorf("%s %s (%s): to overwrite it, boot with ballast.install=%s ballast.install.wipe=true",
		target, what, strings.Join(found, "; "), target)
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
