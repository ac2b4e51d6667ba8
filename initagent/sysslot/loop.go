package sysslot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// NetbootSystemImage is where a PXE or direct-kernel boot finds the system
// image, relative to the root: imgbuild's system.cpio initrd puts it there.
const NetbootSystemImage = "system.sqfs"

// MountSystemImage loop-mounts the squashfs image (a path on the node,
// e.g. "/"+NetbootSystemImage) read-only at SystemMount and returns the
// loop device. Nodes booted from a system slot mount the slot instead
// (Prepare).
func (n Node) MountSystemImage(image string) (device string, err error) {
	target := filepath.Join(n.Root, SystemMount)
	if mounted(target) {
		return "", fmt.Errorf("%s: something is mounted there already", "/"+SystemMount)
	}
	return MountSquashFS(filepath.Join(n.Root, image), target)
}

// MountSquashFS attaches the squashfs file image to a free loop device,
// read-only and with autoclear (the kernel frees the device once it is
// unmounted), and mounts it read-only on target, which is created.
func MountSquashFS(image, target string) (device string, err error) {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", err
	}
	loop, err := AttachLoop(image)
	if err != nil {
		return "", err
	}
	// The open device keeps an autoclear loop attached until the mount
	// holds it; closing it after a failed mount frees the device.
	defer loop.Close()
	if err := unix.Mount(loop.Name(), target, "squashfs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return "", fmt.Errorf("mount %s (%s) on %s: %w (is it a squashfs image, and is the squashfs module loaded?)",
			loop.Name(), image, target, err)
	}
	return loop.Name(), nil
}

// loopControl is the loop driver's control device.
const loopControl = "/dev/loop-control"

// AttachLoop attaches image read-only to a free loop device with
// LO_FLAGS_AUTOCLEAR and returns the open device (/dev/loopN): the kernel
// detaches the file when the last user of the device, after this file is
// closed, goes away.
func AttachLoop(image string) (*os.File, error) { return attachLoop(image, configureLoop) }

func attachLoop(image string, configure func(dev, backing *os.File) error) (*os.File, error) {
	backing, err := os.OpenFile(image, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	defer backing.Close()
	ctl, err := os.OpenFile(loopControl, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: %w (is the loop module in the recipe's kernel.modules?)", err)
	}
	defer ctl.Close()
	// Another process may take the free device first: then ask again.
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop: LOOP_CTL_GET_FREE on %s: %w", loopControl, err)
		}
		dev, err := openLoop(n)
		if err != nil {
			return nil, err
		}
		err = configure(dev, backing)
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) || attempt == 8 {
			return nil, fmt.Errorf("loop: attach %s to %s: %w", image, dev.Name(), err)
		}
	}
}

// openLoop opens /dev/loopN, creating the node when devtmpfs lacks it.
func openLoop(n int) (*os.File, error) {
	name := "loop" + strconv.Itoa(n)
	path := "/dev/" + name
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := makeBlockNode(path, name); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) {
		f, err = os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	return f, nil
}

// makeBlockNode creates path as the block device sysfs knows as name
// (/sys/class/block/NAME/dev holds "MAJOR:MINOR").
func makeBlockNode(path, name string) error {
	data, err := os.ReadFile("/sys/class/block/" + name + "/dev")
	if err != nil {
		return fmt.Errorf("loop: %s is missing and sysfs does not know it: %w", path, err)
	}
	major, minor, ok := strings.Cut(strings.TrimSpace(string(data)), ":")
	maj, err1 := strconv.ParseUint(major, 10, 32)
	mnr, err2 := strconv.ParseUint(minor, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("loop: /sys/class/block/%s/dev is %q, want MAJOR:MINOR", name, data)
	}
	err = unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(uint32(maj), uint32(mnr))))
	if err != nil && !errors.Is(err, unix.EEXIST) { // devtmpfs may have made it meanwhile
		return fmt.Errorf("loop: mknod %s: %w", path, err)
	}
	return nil
}

// configureLoop attaches backing to dev read-only with autoclear: one
// LOOP_CONFIGURE (Linux 5.8+), or LOOP_SET_FD then LOOP_SET_STATUS64 on
// kernels without it.
func configureLoop(dev, backing *os.File) error {
	info := loopInfo(backing)
	err := unix.IoctlLoopConfigure(int(dev.Fd()), &unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info})
	if !errors.Is(err, unix.EINVAL) {
		return err
	}
	return setFDLoop(dev, backing)
}

func loopInfo(backing *os.File) unix.LoopInfo64 {
	info := unix.LoopInfo64{Flags: unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR}
	copy(info.File_name[:len(info.File_name)-1], backing.Name())
	return info
}

// setFDLoop is configureLoop for kernels before LOOP_CONFIGURE. A file
// opened read-only makes the device read-only; autoclear needs SET_STATUS.
func setFDLoop(dev, backing *os.File) error {
	info := loopInfo(backing)
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(dev.Fd()), &info); err != nil {
		unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_CLR_FD, 0)
		return fmt.Errorf("LOOP_SET_STATUS64: %w", err)
	}
	return nil
}
