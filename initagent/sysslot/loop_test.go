package sysslot_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/image/disk"
	"github.com/ballast-os/ballast/initagent/sysslot"
)

// requireLoop skips unless the test can attach loop devices and mount.
func requireLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices and mounts need root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no /dev/loop-control (%v): modprobe loop", err)
	}
}

// squashfs makes a small image holding hello.txt.
func squashfs(t *testing.T) string {
	t.Helper()
	tree := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tree, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "usr/bin/hello.txt"), []byte("hello from the system image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "system.sqfs")
	if err := disk.SquashFS(context.Background(), tree, img); err != nil {
		t.Skipf("cannot make a squashfs: %v", err)
	}
	return img
}

// loopSysfs reads /sys/class/block/loopN/loop/NAME ("" once the device is detached).
func loopSysfs(dev, name string) string {
	data, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "loop", name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// waitDetached waits (generously) for autoclear to free dev.
func waitDetached(t *testing.T, dev string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for loopSysfs(dev, "backing_file") != "" {
		if time.Now().After(deadline) {
			t.Fatalf("%s still attached to %s: autoclear did not free it", dev, loopSysfs(dev, "backing_file"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMountSquashFS mounts a real squashfs through a loop device: the files
// are there, the mount and the device are read-only, autoclear is set and
// frees the device on unmount.
func TestMountSquashFS(t *testing.T) {
	requireLoop(t)
	img := squashfs(t)
	target := filepath.Join(t.TempDir(), "run/ballast/system")
	dev, err := sysslot.MountSquashFS(img, target)
	if err != nil {
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			unix.Unmount(target, unix.MNT_DETACH)
		}
	})
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Errorf("device %q, want /dev/loopN", dev)
	}
	data, err := os.ReadFile(filepath.Join(target, "usr/bin/hello.txt"))
	if err != nil || string(data) != "hello from the system image\n" {
		t.Fatalf("hello.txt through the mount: %q, %v", data, err)
	}
	if err := os.WriteFile(filepath.Join(target, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing into the mount: %v, want EROFS", err)
	}
	if got := loopSysfs(dev, "backing_file"); got != img {
		t.Errorf("%s backing_file %q, want %s", dev, got, img)
	}
	if ro, _ := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "ro")); strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("%s ro=%q, want 1", dev, ro)
	}
	if got := loopSysfs(dev, "autoclear"); got != "1" {
		t.Errorf("%s autoclear=%q, want 1", dev, got)
	}

	// A second mount on the same target is refused by MountSystemImage.
	root := filepath.Dir(filepath.Dir(filepath.Dir(target)))
	if _, err := (sysslot.Node{Root: root}).MountSystemImage(img); err == nil || !strings.Contains(err.Error(), "mounted there already") {
		t.Errorf("MountSystemImage over a mount: %v, want it refused", err)
	}

	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	unmounted = true
	waitDetached(t, dev)
}

// TestMountSystemImageUnderRoot: the node's image path and SystemMount are
// taken relative to Root.
func TestMountSystemImageUnderRoot(t *testing.T) {
	requireLoop(t)
	img := squashfs(t)
	root := t.TempDir()
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, sysslot.NetbootSystemImage), data, 0o444); err != nil {
		t.Fatal(err)
	}
	dev, err := (sysslot.Node{Root: root}).MountSystemImage("/" + sysslot.NetbootSystemImage)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(root, sysslot.SystemMount)
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if _, err := os.Stat(filepath.Join(target, "usr/bin/hello.txt")); err != nil {
		t.Errorf("system image not at %s: %v", target, err)
	}
	if got := loopSysfs(dev, "backing_file"); got != filepath.Join(root, sysslot.NetbootSystemImage) {
		t.Errorf("%s backing_file %q", dev, got)
	}
}

// TestMountSquashFSBadImage: a file that is not a squashfs fails the mount
// with an error naming it, and the loop device is freed again.
func TestMountSquashFSBadImage(t *testing.T) {
	requireLoop(t)
	bad := filepath.Join(t.TempDir(), "bad.sqfs")
	if err := os.WriteFile(bad, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	_, err := sysslot.MountSquashFS(bad, target)
	if err == nil {
		unix.Unmount(target, unix.MNT_DETACH)
		t.Fatal("mounted a file of zeros as squashfs")
	}
	if !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "squashfs") {
		t.Errorf("error %q does not name the image and squashfs", err)
	}
	// The device the failed mount used is free again: no loop device is
	// left backed by the file.
	deadline := time.Now().Add(30 * time.Second)
	for {
		held := ""
		entries, _ := os.ReadDir("/sys/class/block")
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "loop") && loopSysfs(e.Name(), "backing_file") == bad {
				held = e.Name()
			}
		}
		if held == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still holds %s after the failed mount", held, bad)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if _, err := sysslot.MountSquashFS(filepath.Join(t.TempDir(), "missing.sqfs"), target); err == nil ||
		!strings.Contains(err.Error(), "missing.sqfs") {
		t.Errorf("missing image: %v, want an error naming it", err)
	}
}

// TestMakeBlockNode creates a loop device node the way openLoop does when
// devtmpfs lacks one: same major:minor as sysfs says.
func TestMakeBlockNode(t *testing.T) {
	requireLoop(t)
	entries, _ := os.ReadDir("/sys/class/block")
	name := ""
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "loop") {
			name = e.Name()
			break
		}
	}
	if name == "" {
		t.Skip("no loop device in /sys/class/block")
	}
	want, err := os.ReadFile("/sys/class/block/" + name + "/dev")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := sysslot.MakeBlockNode(path, name); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || got != strings.TrimSpace(string(want)) {
		t.Errorf("%s: mode %o rdev %s, want a block device %s", path, st.Mode, got, want)
	}
	if err := sysslot.MakeBlockNode(path, name); err != nil {
		t.Errorf("second call over the existing node: %v", err)
	}
	if err := sysslot.MakeBlockNode(filepath.Join(t.TempDir(), "x"), "loop-nonexistent"); err == nil {
		t.Error("made a node for a device sysfs does not know")
	}
}

// TestAttachLoopLegacy: the LOOP_SET_FD + LOOP_SET_STATUS64 fallback gives a
// read-only, autoclear device that mounts.
func TestAttachLoopLegacy(t *testing.T) {
	requireLoop(t)
	img := squashfs(t)
	loop, err := sysslot.AttachLoopLegacy(img)
	if err != nil {
		t.Fatal(err)
	}
	dev := loop.Name()
	if got := loopSysfs(dev, "autoclear"); got != "1" {
		t.Errorf("%s autoclear=%q, want 1", dev, got)
	}
	if ro, _ := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "ro")); strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("%s ro=%q, want 1", dev, ro)
	}
	target := t.TempDir()
	if err := unix.Mount(dev, target, "squashfs", unix.MS_RDONLY, ""); err != nil {
		loop.Close()
		t.Fatal(err)
	}
	loop.Close()
	if _, err := os.Stat(filepath.Join(target, "usr/bin/hello.txt")); err != nil {
		t.Error(err)
	}
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	waitDetached(t, dev)
}
