package sysslot

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// blockDev is a block device as sysfs knows it.
type blockDev struct {
	name   string // kernel name, "sda", "nvme0n1p2"
	sys    string // its sysfs directory (resolved)
	parent string // the whole disk's kernel name, when this is a partition
	partno string
}

// blockByDevNum finds the sysfs entry of device number MAJ:MIN.
func (in Installer) blockByDevNum(maj, mnr uint32) (blockDev, error) {
	link := filepath.Join(in.Root, "sys/dev/block", fmt.Sprintf("%d:%d", maj, mnr))
	dir, err := filepath.EvalSymlinks(link)
	if err != nil {
		return blockDev{}, err
	}
	return in.blockAt(dir), nil
}

func (in Installer) blockAt(dir string) blockDev {
	b := blockDev{name: filepath.Base(dir), sys: dir}
	if data, err := os.ReadFile(filepath.Join(dir, "partition")); err == nil {
		b.partno = strings.TrimSpace(string(data))
		b.parent = filepath.Base(filepath.Dir(dir))
	}
	return b
}

// resolveTarget finds the block device an install target names: by its
// device number for a device node (so /dev/disk/by-id/… links work), else
// by name under /sys/class/block.
func (in Installer) resolveTarget(dev string) (blockDev, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return blockDev{}, fmt.Errorf("install target %s: %w: give an existing whole-disk device", strings.TrimPrefix(dev, in.Root), err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		b, err := in.blockByDevNum(unix.Major(st.Rdev), unix.Minor(st.Rdev))
		if err != nil {
			return blockDev{}, fmt.Errorf("install target %s: device %d:%d unknown to sysfs: %w", strings.TrimPrefix(dev, in.Root), unix.Major(st.Rdev), unix.Minor(st.Rdev), err)
		}
		return b, nil
	}
	name := filepath.Base(dev)
	if r, err := filepath.EvalSymlinks(dev); err == nil {
		name = filepath.Base(r)
	}
	for _, d := range []string{"sys/class/block", "sys/block"} {
		if dir, err := filepath.EvalSymlinks(filepath.Join(in.Root, d, name)); err == nil {
			return in.blockAt(dir), nil
		}
	}
	// A plain file without a sysfs entry (an image file): nothing to resolve.
	return blockDev{name: name}, nil
}

// disksInUse maps the kernel name of every whole disk the running system
// uses to why: something on it is mounted (the live medium at
// /run/ballast/media, the running system image, ESP, STATE, …), directly
// or through loop devices whose backing files live on it, or is active
// swap. The installer never writes to such a disk.
func (in Installer) disksInUse() map[string]string {
	used := map[string]string{}
	mark := func(maj, mnr uint32, why string) {
		seen := map[string]bool{}
		for depth := 0; depth < 8; depth++ {
			b, err := in.blockByDevNum(maj, mnr)
			if err != nil || seen[b.name] {
				return
			}
			seen[b.name] = true
			disk := b.name
			if b.parent != "" {
				disk = b.parent
			}
			if _, ok := used[disk]; !ok {
				used[disk] = why
			}
			// A loop device: follow its backing file to the disk it lives on.
			data, err := os.ReadFile(filepath.Join(b.sys, "loop/backing_file"))
			if err != nil {
				return
			}
			backing := strings.TrimSpace(string(data))
			dev, ok := loopBackingDev(filepath.Join(in.Root, "dev", b.name))
			if !ok {
				var st unix.Stat_t
				if unix.Stat(filepath.Join(in.Root, backing), &st) != nil {
					return
				}
				dev = st.Dev
			}
			why = fmt.Sprintf("%s (through %s, backed by %s)", why, b.name, backing)
			maj, mnr = unix.Major(dev), unix.Minor(dev)
		}
	}
	if f, err := os.Open(filepath.Join(in.Root, "proc/self/mountinfo")); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			// id parent MAJ:MIN root mountpoint options … - fstype source …
			fields := strings.Fields(sc.Text())
			if len(fields) < 5 {
				continue
			}
			maj, mnr, ok := parseDevNum(fields[2])
			if !ok || maj == 0 {
				continue
			}
			point := unescapeMount(fields[4])
			why := "it is in use: something on it is mounted at " + point
			if strings.TrimSuffix(point, "/") == strings.TrimSuffix(filepath.Join("/", MediaMount), "/") {
				why = "it holds the live medium this installer runs from (mounted at " + point + ")"
			}
			mark(maj, mnr, why)
		}
		f.Close()
	}
	if data, err := os.ReadFile(filepath.Join(in.Root, "proc/swaps")); err == nil {
		for i, l := range strings.Split(string(data), "\n") {
			fields := strings.Fields(l)
			if i == 0 || len(fields) == 0 {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(filepath.Join(in.Root, unescapeMount(fields[0])), &st) != nil {
				continue
			}
			dev := st.Dev
			if st.Mode&unix.S_IFMT == unix.S_IFBLK {
				dev = st.Rdev
			}
			mark(unix.Major(dev), unix.Minor(dev), "it holds active swap ("+fields[0]+")")
		}
	}
	return used
}

// loopBackingDev asks the loop driver which device holds the loop
// device's backing file (LOOP_GET_STATUS64): this works even when the file's
// path no longer resolves (its filesystem was lazily unmounted).
func loopBackingDev(dev string) (uint64, bool) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil || info.Device == 0 {
		return 0, false
	}
	return info.Device, true
}

// holders lists the devices stacked on a disk or its partitions (device
// mapper, MD RAID, bcache): they would keep writing to it.
func holders(sysDir, name string) []string {
	var out []string
	dirs := []string{sysDir}
	if parts, err := filepath.Glob(filepath.Join(sysDir, name+"*")); err == nil {
		dirs = append(dirs, parts...)
	}
	for _, d := range dirs {
		des, err := os.ReadDir(filepath.Join(d, "holders"))
		if err != nil {
			continue
		}
		for _, de := range des {
			out = append(out, de.Name())
		}
	}
	return out
}

// kernelPartitions lists the partitions the kernel knows on a disk: the
// subdirectories NAME* of its sysfs directory.
func kernelPartitions(sysDir, name string) []string {
	var out []string
	des, _ := os.ReadDir(sysDir)
	for _, de := range des {
		if de.IsDir() && strings.HasPrefix(de.Name(), name) {
			out = append(out, de.Name())
		}
	}
	return out
}

func parseDevNum(s string) (uint32, uint32, bool) {
	a, b, ok := strings.Cut(s, ":")
	maj, err1 := strconv.ParseUint(a, 10, 32)
	mnr, err2 := strconv.ParseUint(b, 10, 32)
	return uint32(maj), uint32(mnr), ok && err1 == nil && err2 == nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
