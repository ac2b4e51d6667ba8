package sysslot

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The upgrade image is a tar (imgbuild writes it as <recipe>.upgrade.tar)
// holding, in this order: manifest.json, vmlinuz, initramfs.img,
// system.sqfs. The manifest comes first so the node knows every file's size
// and sha256 before it writes anything.
const (
	UpgradeFormat   = "ballast-upgrade/v1"
	UpgradeManifest = "manifest.json"
	UpgradeKernel   = "vmlinuz"
	UpgradeInitrd   = "initramfs.img"
	UpgradeSystem   = "system.sqfs"
)

// UpgradeInfo is the upgrade image's manifest.json.
type UpgradeInfo struct {
	Format  string        `json:"format"` // UpgradeFormat
	Recipe  string        `json:"recipe"`
	Title   string        `json:"title"`   // boot menu title
	Cmdline []string      `json:"cmdline"` // kernel arguments; ballast.slot= is added per slot
	Files   []UpgradeFile `json:"files"`   // vmlinuz, initramfs.img, system.sqfs
}

// UpgradeFile is one file of the upgrade image.
type UpgradeFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func (u *UpgradeInfo) validate() error {
	if u.Format != UpgradeFormat {
		return fmt.Errorf("upgrade image manifest format %q: this node reads %q; build the image with a matching imgbuild", u.Format, UpgradeFormat)
	}
	want := []string{UpgradeKernel, UpgradeInitrd, UpgradeSystem}
	if len(u.Files) != len(want) {
		return fmt.Errorf("upgrade image manifest lists %d files, want %s", len(u.Files), strings.Join(want, ", "))
	}
	for i, f := range u.Files {
		if f.Name != want[i] {
			return fmt.Errorf("upgrade image manifest files[%d] is %q, want %q", i, f.Name, want[i])
		}
		if len(f.SHA256) != 64 || f.Size < 0 {
			return fmt.Errorf("upgrade image manifest files[%d] (%s): needs a size and a 64-hex-digit sha256", i, f.Name)
		}
	}
	for _, a := range u.Cmdline {
		if strings.HasPrefix(a, SlotParam+"=") {
			return fmt.Errorf("upgrade image manifest cmdline sets %s: the node sets it per slot, remove it", SlotParam)
		}
	}
	return nil
}

// Upgrade writes the image read from r into the slot that is not running,
// in two phases. First the whole stream is read into a spool file (an
// unlinked file in m.Spool) while every file is checked against the
// manifest and the whole stream against sum: until all of that passed,
// nothing on the ESP or the inactive SYSTEM partition changes, so a
// garbage, truncated or mismatching upload leaves the other slot (the
// rollback target) exactly as it was. Then the other slot's entry is
// removed (a crash from here on leaves only the running slot bootable),
// the system image goes to its SYSTEM partition and kernel and initramfs
// to the ESP, each read back and checked, and only then is the entry
// written, with DefaultTries and the highest version, so the next boot
// tries it. It returns the slot name.
func (m *Manager) Upgrade(ctx context.Context, r io.Reader, sum string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sum = strings.ToLower(sum)
	if len(sum) != 64 {
		return "", fmt.Errorf("upgrade: sha256 must be 64 hex digits, got %q", sum)
	}
	if _, err := hex.DecodeString(sum); err != nil {
		return "", fmt.Errorf("upgrade: sha256 must be 64 hex digits, got %q", sum)
	}
	target := Other(m.Running)
	dev, ok := m.Systems[target]
	if !ok {
		return "", fmt.Errorf("upgrade: no %s partition found", PartitionName(target))
	}
	log := m.log().With("slot", target)
	before, err := ReadEntries(m.ESP)
	if err != nil {
		return "", fmt.Errorf("upgrade: %w", err)
	}
	// Versions only grow, so no two trials share one (GRUB's counter is
	// kept per slot and version).
	version := maxVersion(before) + 1
	if e, ok := before[m.Running]; ok && !e.Good() {
		// Overwriting the other slot now would leave nothing known-good to fall back to.
		return "", fmt.Errorf("upgrade: the running slot %s is still on trial (entry %s): wait until it is marked good", m.Running, e.File)
	}
	sp, err := m.spool(ctx, r, sum, dev)
	if err != nil {
		return "", err
	}
	defer sp.f.Close()
	log.Info("system upgrade: image received and verified; writing the inactive slot", "partition", dev, "sha256", sum)

	// Verified: from here on the inactive slot changes.
	if err := removeEntries(m.ESP, target); err != nil {
		return "", fmt.Errorf("upgrade: retire slot %s entry: %w", target, err)
	}
	if err := writeGrubConfig(m.ESP); err != nil {
		return "", fmt.Errorf("upgrade: retire slot %s entry: %w", target, err)
	}
	if err := m.writeSlot(sp, target, dev); err != nil {
		return "", fmt.Errorf("upgrade: %w (slot %s has no boot entry now; the running slot is unchanged)", err, target)
	}
	info := sp.info
	title := info.Title
	if title == "" {
		title = "ballast " + info.Recipe
	}
	e := NewEntry(target, fmt.Sprintf("%s (slot %s)", title, target), version, info.Cmdline)
	e.Counting, e.TriesLeft = true, DefaultTries
	if err := writeEntry(m.ESP, e); err != nil {
		return "", fmt.Errorf("upgrade: write boot entry: %w", err)
	}
	if err := startGrubTrial(m.ESP); err != nil {
		return "", fmt.Errorf("upgrade: %w", err)
	}
	log.Info("system upgrade: slot is the default for the next boot, on trial", "entry", e.FileName(), "version", e.Version)
	return target, nil
}

// spooled is an upgrade image read whole and verified: its files lie in f
// (an unlinked file, gone when closed or after a crash) at off.
type spooled struct {
	info *UpgradeInfo
	f    *os.File
	off  map[string]int64
}

func (s *spooled) file(f UpgradeFile) io.Reader {
	return io.NewSectionReader(s.f, s.off[f.Name], f.Size)
}

// spool reads the upgrade stream into a spool file, checking every file
// against the manifest and the stream against sum. It writes nothing else.
func (m *Manager) spool(ctx context.Context, r io.Reader, sum, dev string) (_ *spooled, err error) {
	whole := sha256.New()
	src := io.TeeReader(ctxReader{ctx, r}, whole)
	tr := tar.NewReader(src)
	info, err := readUpgradeManifest(tr)
	if err != nil {
		return nil, err
	}
	var need int64
	for _, f := range info.Files {
		need += f.Size
	}
	sys := info.Files[2]
	if size, err := partitionSize(dev); err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	} else if sys.Size > size {
		return nil, fmt.Errorf("upgrade: %s has %d bytes, larger than the %d-byte partition %s: give the recipe's disk.systemMiB more room", sys.Name, sys.Size, size, dev)
	}
	dir := m.Spool
	if dir == "" {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("upgrade: spool directory: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil {
		if free := int64(st.Bavail) * int64(st.Bsize); free < need+(1<<20) {
			return nil, fmt.Errorf("upgrade: %s has %d MiB free, the image needs %d MiB there to be checked before it is written: free space on it (STATE, /var)",
				dir, free>>20, need>>20+1)
		}
	}
	f, err := os.CreateTemp(dir, ".upgrade-*")
	if err != nil {
		return nil, fmt.Errorf("upgrade: spool file: %w", err)
	}
	// Unlinked at once: nothing is left behind, whatever happens next.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("upgrade: spool file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	sp := &spooled{info: info, f: f, off: map[string]int64{}}
	var off int64
	for _, uf := range info.Files {
		hdr, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("upgrade image: reading %s: %w (truncated upload? nothing was changed)", uf.Name, err)
		}
		if hdr.Name != uf.Name || hdr.Size != uf.Size {
			return nil, fmt.Errorf("upgrade image: found %s (%d bytes) where the manifest says %s (%d bytes)", hdr.Name, hdr.Size, uf.Name, uf.Size)
		}
		h := sha256.New()
		if _, err := io.CopyN(io.MultiWriter(io.NewOffsetWriter(f, off), h), tr, uf.Size); err != nil {
			return nil, fmt.Errorf("upgrade image: reading %s: %w (truncated upload? nothing was changed)", uf.Name, err)
		}
		if err := checkSum(uf, h); err != nil {
			return nil, fmt.Errorf("upgrade: %w", err)
		}
		sp.off[uf.Name] = off
		off += uf.Size
	}
	// The rest of the stream (tar padding and trailer) counts for the sum.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return nil, fmt.Errorf("upgrade image: %w", err)
	}
	if got := hex.EncodeToString(whole.Sum(nil)); got != sum {
		return nil, fmt.Errorf("upgrade image sha256 is %s, the request said %s: nothing was changed, upload it again", got, sum)
	}
	return sp, nil
}

// writeSlot writes a verified image to the slot's partition and ESP
// directory, reading each back. Kernel and initramfs go to temporary names
// first and are removed again when anything fails.
func (m *Manager) writeSlot(sp *spooled, target, dev string) (err error) {
	slotDir := filepath.Join(m.ESP, "ballast", target)
	if err := os.MkdirAll(slotDir, 0o755); err != nil {
		return err
	}
	var temps []string
	defer func() {
		if err != nil {
			for _, t := range temps {
				_ = os.Remove(t)
			}
			_ = syncDir(m.ESP)
		}
	}()
	for _, f := range sp.info.Files {
		switch f.Name {
		case UpgradeSystem:
			err = writePartition(dev, sp.file(f), f)
		default:
			tmp := filepath.Join(slotDir, f.Name+".new")
			temps = append(temps, tmp)
			err = writeVerified(tmp, sp.file(f), f)
		}
		if err != nil {
			return err
		}
		m.log().Info("system upgrade: written and verified", "slot", target, "file", f.Name, "bytes", f.Size)
	}
	for _, name := range []string{UpgradeKernel, UpgradeInitrd} {
		if err := os.Rename(filepath.Join(slotDir, name+".new"), filepath.Join(slotDir, name)); err != nil {
			return err
		}
	}
	return syncDir(m.ESP)
}

// partitionSize is the size of a block device or image file.
func partitionSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return deviceSize(f)
}

func readUpgradeManifest(tr *tar.Reader) (*UpgradeInfo, error) {
	hdr, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("upgrade image is not a tar (%w): build it with imgbuild (<recipe>.upgrade.tar)", err)
	}
	if hdr.Name != UpgradeManifest || hdr.Size > 1<<20 {
		return nil, fmt.Errorf("upgrade image starts with %q, want %s first", hdr.Name, UpgradeManifest)
	}
	var info UpgradeInfo
	if err := json.NewDecoder(tr).Decode(&info); err != nil {
		return nil, fmt.Errorf("upgrade image %s: %w", UpgradeManifest, err)
	}
	if err := info.validate(); err != nil {
		return nil, err
	}
	return &info, nil
}

// writeVerified writes exactly f.Size bytes from r to path, checks the
// sha256, syncs, and reads the file back to check what landed.
func writeVerified(path string, r io.Reader, f UpgradeFile) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.CopyN(io.MultiWriter(out, h), r, f.Size)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", f.Name, err)
	}
	if err := checkSum(f, h); err != nil {
		return err
	}
	return verifyRange(path, 0, f)
}

// writePartition writes the system image at the start of the partition dev.
func writePartition(dev string, r io.Reader, f UpgradeFile) error {
	out, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer out.Close()
	size, err := deviceSize(out)
	if err != nil {
		return fmt.Errorf("size of %s: %w", dev, err)
	}
	if f.Size > size {
		return fmt.Errorf("%s has %d bytes, larger than the %d-byte partition %s: give the recipe's disk.systemMiB more room", f.Name, f.Size, size, dev)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(out, h), r, f.Size); err != nil {
		return fmt.Errorf("write %s to %s: %w", f.Name, dev, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	if err := checkSum(f, h); err != nil {
		return err
	}
	return verifyRange(dev, 0, f)
}

func checkSum(f UpgradeFile, h hash.Hash) error {
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("%s sha256 is %s, manifest says %s: nothing was activated", f.Name, got, f.SHA256)
	}
	return nil
}

// verifyRange reads f.Size bytes at off of path, bypassing what the page
// cache kept from the write, and compares their sha256 with f's.
func verifyRange(path string, off int64, f UpgradeFile) error {
	in, err := os.Open(path)
	if err != nil {
		return err
	}
	defer in.Close()
	_ = unix.Fadvise(int(in.Fd()), off, f.Size, unix.FADV_DONTNEED)
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(in, off, f.Size)); err != nil {
		return fmt.Errorf("read back %s: %w", f.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("read back %s from %s: sha256 %s, wrote %s: the storage is failing", f.Name, path, got, f.SHA256)
	}
	return nil
}

// deviceSize is the size of a block device or regular file.
func deviceSize(f *os.File) (int64, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, err
	}
	_, err = f.Seek(0, io.SeekStart)
	return size, err
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if errors.Is(err, io.EOF) {
		return n, io.EOF
	}
	return n, err
}
