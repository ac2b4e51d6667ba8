package source

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Config drive labels: OpenStack's config drive and cloud-init's NoCloud seed.
const (
	LabelConfigDrive = "config-2"
	LabelNoCloud     = "cidata"
)

// driveFiles lists the files looked for on a drive, first found wins. Our
// own name comes first so that a drive can carry both a ballast config and
// user data meant for something else.
func driveFiles(label string) []string {
	if strings.EqualFold(label, LabelNoCloud) {
		return []string{"ballast/machine-config.yaml", "user-data"}
	}
	return []string{"ballast/machine-config.yaml", "openstack/latest/user_data"}
}

// drive is a block device with a config drive label.
type drive struct {
	dev, fstype, label string
}

func fetchConfigDrive(ctx context.Context, o Options) (*Result, error) {
	devs := o.Devices
	if devs == nil {
		var err error
		if devs, err = listBlockDevices(o.Root); err != nil {
			return nil, err
		}
	}
	var drives []drive
	for _, dev := range devs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		probeStart := time.Now()
		fstype, label, err := probeDevice(dev)
		if err != nil {
			// Empty CD drives (ENOMEDIUM), vanished devices and short reads
			// are normal during a scan; such a device has no config for us.
			o.Log.Debug("skipping block device", "dev", dev, "err", err, "took", time.Since(probeStart).Round(time.Millisecond))
			continue
		}
		if strings.EqualFold(label, LabelConfigDrive) || strings.EqualFold(label, LabelNoCloud) {
			drives = append(drives, drive{dev: dev, fstype: fstype, label: label})
		}
	}
	if len(drives) == 0 {
		o.Log.Debug("no config drive", "devices", len(devs))
		return nil, errAbsent
	}
	if len(drives) > 1 {
		var names []string
		for _, d := range drives {
			names = append(names, d.dev+" ("+d.label+")")
		}
		o.Log.Warn("more than one config drive, using the first with a config", "drives", names)
	}
	for _, d := range drives {
		res, err := readDrive(ctx, o, d)
		if errors.Is(err, errAbsent) {
			o.Log.Info("config drive has no machine config", "dev", d.dev, "label", d.label, "looked_for", driveFiles(d.label))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("config source config drive %s (label %q, %s): %w; fix or detach the drive "+
				"(later sources are not tried, so that a half-read config drive does not boot the node with another config)",
				d.dev, d.label, d.fstype, err)
		}
		return res, nil
	}
	return nil, errAbsent
}

// listBlockDevices returns the /dev paths of the non-empty block devices
// the kernel knows, sorted by name.
func listBlockDevices(root string) ([]string, error) {
	sysBlock := filepath.Join(root, "sys/class/block")
	entries, err := os.ReadDir(sysBlock)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // no sysfs here (a test root): no devices
	}
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w; is sysfs mounted?", err)
	}
	var devs []string
	for _, e := range entries {
		dir := filepath.Join(sysBlock, e.Name())
		// size is in 512-byte sectors; 0 means no medium (empty CD drive, unbound loop).
		if size, err := os.ReadFile(filepath.Join(dir, "size")); err != nil || strings.TrimSpace(string(size)) == "0" {
			continue
		}
		// DEVNAME is the node's name under /dev; it differs from the sysfs
		// name for some drivers (cciss!c0d0 is /dev/cciss/c0d0).
		name := strings.ReplaceAll(e.Name(), "!", "/")
		if uevent, err := os.ReadFile(filepath.Join(dir, "uevent")); err == nil {
			for _, line := range strings.Split(string(uevent), "\n") {
				if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
					name = v
				}
			}
		}
		devs = append(devs, filepath.Join(root, "dev", name))
	}
	sort.Strings(devs)
	return devs, nil
}

// probeDevice returns the filesystem type (as mount(2) names it) and label
// of a block device or image file; fstype is "" if it is none we read.
func probeDevice(dev string) (fstype, label string, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	return probeLabel(f)
}

// probeLabel reads the superblocks itself: the initramfs has no blkid, and
// only three filesystems matter. ISO 9660 is checked first because a hybrid
// ISO also carries an MBR (0x55AA) in its first sector.
func probeLabel(r io.ReaderAt) (fstype, label string, err error) {
	head := make([]byte, 2048)
	n, err := r.ReadAt(head, 0)
	if err != nil && !(errors.Is(err, io.EOF) && n >= 512) {
		return "", "", err
	}
	head = head[:n]

	var cd [6]byte // volume descriptor type and "CD001" at sector 16 (ECMA-119 §8.1)
	if _, err := r.ReadAt(cd[:], isoFirstVD*isoSector); err == nil && string(cd[1:]) == "CD001" {
		iso, err := openISO(r)
		if err != nil {
			return "", "", err
		}
		return "iso9660", iso.Label(), nil
	}
	// ext2/3/4 superblock at byte 1024: s_magic 0xEF53 at 0x38, s_volume_name
	// at 0x78 (16 bytes, NUL-padded); s_log_block_size at 0x18 is at most 6
	// (64 KiB blocks), a cheap check against a stray 0xEF53.
	if len(head) >= 2048 && binary.LittleEndian.Uint16(head[1024+0x38:]) == 0xEF53 &&
		binary.LittleEndian.Uint32(head[1024+0x18:]) <= 6 {
		return "ext4", strings.TrimRight(string(head[1024+0x78:1024+0x88]), "\x00"), nil
	}
	if fat, err := openFAT(r); err == nil {
		label, err := fat.Label()
		if err != nil {
			return "", "", err
		}
		return "vfat", label, nil
	}
	return "", "", nil
}

// driveFS reads one file from a config drive.
type driveFS interface {
	ReadFile(path string, max int64) ([]byte, error)
}

// readDrive reads the first of driveFiles from d. vfat and ISO 9660 are
// read in-process, so the initramfs needs neither their kernel modules nor
// the nls codepages vfat wants; ext4 is mounted read-only.
func readDrive(ctx context.Context, o Options, d drive) (*Result, error) {
	f, err := os.Open(d.dev)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var fsys driveFS
	switch d.fstype {
	case "vfat":
		fsys, err = openFAT(f)
	case "iso9660":
		fsys, err = openISO(f)
	case "ext4":
		var m *mountedFS
		m, err = mountReadOnly(ctx, o, d)
		if err == nil {
			defer m.Close()
			fsys = m
		}
	default:
		err = fmt.Errorf("BUG: no reader for filesystem %q", d.fstype)
	}
	if err != nil {
		return nil, err
	}
	for _, name := range driveFiles(d.label) {
		data, err := fsys.ReadFile(name, MaxSize)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		if len(data) == 0 {
			o.Log.Info("empty file on config drive, ignoring it", "dev", d.dev, "file", name)
			continue
		}
		return &Result{Data: data, Source: fmt.Sprintf("config-drive:%s (%s, %s):%s", d.dev, d.label, d.fstype, name)}, nil
	}
	return nil, errAbsent
}

// mountedFS is a filesystem mounted on a temporary directory.
type mountedFS struct {
	dir  string
	root *os.Root
	o    Options
}

func mountReadOnly(ctx context.Context, o Options, d drive) (*mountedFS, error) {
	if o.NeedFilesystem != nil {
		if err := o.NeedFilesystem(ctx, d.fstype); err != nil {
			return nil, fmt.Errorf("no %s support: %w", d.fstype, err)
		}
	}
	if err := os.MkdirAll(o.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("create run dir: %w", err)
	}
	dir, err := os.MkdirTemp(o.RunDir, "config-drive-")
	if err != nil {
		return nil, fmt.Errorf("create mount point: %w", err)
	}
	// noload: do not replay the journal, so the device is never written.
	const flags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount(d.dev, dir, d.fstype, flags, "noload"); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("mount read-only on %s: %w; the kernel needs %s support (add the module to the recipe)", dir, err, d.fstype)
	}
	m := &mountedFS{dir: dir, o: o}
	if m.root, err = os.OpenRoot(dir); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// ReadFile reads path inside the mount; os.Root keeps symlinks on the drive
// from reaching files outside it.
func (m *mountedFS) ReadFile(path string, max int64) ([]byte, error) {
	f, err := m.root.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAllMax(f, max)
}

func (m *mountedFS) Close() {
	if m.root != nil {
		m.root.Close()
	}
	if err := unix.Unmount(m.dir, 0); err != nil {
		m.o.Log.Warn("unmount config drive failed, detaching it", "dir", m.dir, "err", err)
		unix.Unmount(m.dir, unix.MNT_DETACH)
	}
	os.Remove(m.dir)
}
