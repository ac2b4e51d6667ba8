package qemutests

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
)

// A PXE boot loads system.cpio and initramfs.img; the kernel unpacks both
// into its rootfs, so the node finds /system.sqfs and loop-mounts it at
// /run/ballast/system before it comes up. (TestNetbootUEFI covers the EFI
// stub, which concatenates initrds without padding.) The control-plane artifacts are
// built with the placeholder system image, so no payload build is needed.

var pxeSystemMountedRE = regexp.MustCompile(`msg="system image mounted" source=/system\.sqfs device=/dev/loop\d+ at=/run/ballast/system`)

// concatInitrds writes the initrds into one file back to back, as the EFI
// stub lays them out (iPXE on BIOS pads each to 4 KiB with zeros, which the
// kernel skips); QEMU's -initrd takes a single file.
func concatInitrds(t *testing.T, paths ...string) string {
	t.Helper()
	out, err := os.Create(filepath.Join(t.TempDir(), "initrd"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	for _, p := range paths {
		in, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(out, in)
		in.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(t, out.Close())
	return out.Name()
}

// TestPXESystemImageMounted boots vmlinuz with system.cpio + initramfs.img
// and expects the system image mounted from /system.sqfs, then readiness.
func TestPXESystemImageMounted(t *testing.T) {
	const recipe = "control-plane"
	dir := buildRecipe(t, recipe)
	cmdline, err := loadRecipe(t, recipe)
	must(t, err)
	vm, err := StartVM(VMOptions{
		Kernel:  filepath.Join(dir, image.KernelFile),
		Initrd:  concatInitrds(t, filepath.Join(dir, image.SystemCPIOFile), filepath.Join(dir, image.InitramfsFile)),
		Cmdline: append(append([]string{}, cmdline...), "ballast.hostname=pxe-sys"),
		Accel:   *accelFlag,
	})
	must(t, err)
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("last %d console lines:\n%s", consoleTail, vm.Tail(consoleTail))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	mounted, next, err := vm.Expect(ctx, pxeSystemMountedRE, 0)
	must(t, err)
	t.Log(mounted[0])
	m, _, err := vm.Expect(ctx, readiness.Pattern, next)
	must(t, err)
	if m[1] != "pxe-sys" {
		t.Errorf("readiness line %q: want hostname=pxe-sys", m[0])
	}
}
