package qemutests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/disk"
	"github.com/ballast-os/ballast/initagent/agent"
	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
)

// diskBootTimeout bounds one boot through firmware and boot loader (TCG on
// a busy machine; nothing asserts on how long it takes).
const diskBootTimeout = 5 * time.Minute

// diskArtifacts is the control-plane recipe built once for the disk tests,
// with the console API writable so the tests can upgrade through it.
var diskArtifacts struct {
	once sync.Once
	dir  string
	err  error
}

func buildDiskRecipe(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds images and boots them through firmware")
	}
	for _, f := range []string{ovmfCode, ovmfVars} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("%s missing: apt-get install -y ovmf", f)
		}
	}
	diskArtifacts.once.Do(func() {
		r, err := image.LoadRecipe("control-plane")
		if err != nil {
			diskArtifacts.err = err
			return
		}
		// A 10 s settle instead of 2 min: the upgrade test waits for the blessing.
		r.Cmdline = append(r.Cmdline, agent.ConsoleAccessParam+"=rw", agent.BlessSettleParam+"=10s")
		src, err := image.FindSourceDir(".")
		if err != nil {
			diskArtifacts.err = err
			return
		}
		shared.mu.Lock()
		if shared.tmp == "" {
			shared.tmp, err = os.MkdirTemp("", "ballast-qemu-tests-")
		}
		out := filepath.Join(shared.tmp, "disk")
		shared.mu.Unlock()
		if err != nil {
			diskArtifacts.err = err
			return
		}
		_, err = image.Build(context.Background(), image.Options{
			Recipe: r, OutDir: out, SourceDir: src, Progress: testWriter{t}, Log: slog.New(slog.DiscardHandler),
		})
		diskArtifacts.dir, diskArtifacts.err = filepath.Join(out, r.Name), err
	})
	if diskArtifacts.err != nil {
		t.Fatalf("build: %v", diskArtifacts.err)
	}
	return diskArtifacts.dir
}

// firmwareVM describes a machine that boots through its firmware (no -kernel).
type firmwareVM struct {
	UEFI   bool     // OVMF; else SeaBIOS
	Vars   string   // OVMF variable store (a per-machine copy); made when empty
	Args   []string // drives, devices
	Reboot bool     // let the guest reboot inside the same QEMU process
	// Kernel, Initrd and Cmdline boot a kernel directly (the installer test).
	Kernel, Initrd string
	Cmdline        []string
}

// startFirmwareVM is StartVM for machines that boot from disks or CDs.
func startFirmwareVM(t *testing.T, o firmwareVM) *VM {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not found: apt-get install -y qemu-system-x86")
	}
	dir, err := os.MkdirTemp("", "ballast-vm-")
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{qmpPath: filepath.Join(dir, "qmp.sock"), dir: dir, changed: make(chan struct{}), exited: make(chan struct{})}
	args := []string{"-accel", *accelFlag, "-m", "768", "-smp", "2", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-device", "virtio-rng-pci", "-qmp", "unix:" + vm.qmpPath + ",server=on,wait=off"}
	if !o.Reboot {
		args = append(args, "-no-reboot")
	}
	if o.UEFI {
		if o.Vars == "" {
			o.Vars = filepath.Join(dir, "vars.fd")
			must(t, copyFile(ovmfVars, o.Vars))
		}
		args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,file="+o.Vars)
	}
	if o.Kernel != "" {
		args = append(args, "-kernel", o.Kernel, "-initrd", o.Initrd, "-append", strings.Join(o.Cmdline, " "))
	}
	if !containsArg(o.Args, "-nic") && !containsArg(o.Args, "-netdev") {
		args = append(args, "-nic", "none")
	}
	args = append(args, o.Args...)
	vm.cmd = exec.Command(qemu, args...)
	startConsoleVM(t, vm)
	return vm
}

// sparseCopy copies a (mostly empty) disk image, leaving holes for zeros,
// into a file of size bytes (0: the source's size).
func sparseCopy(t *testing.T, src, dst string, size int64) {
	t.Helper()
	in, err := os.Open(src)
	must(t, err)
	defer in.Close()
	out, err := os.Create(dst)
	must(t, err)
	defer out.Close()
	fi, err := in.Stat()
	must(t, err)
	if size == 0 {
		size = fi.Size()
	}
	must(t, out.Truncate(size))
	buf := make([]byte, 1<<20)
	zero := make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := io.ReadFull(in, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			_, werr := out.WriteAt(buf[:n], off)
			must(t, werr)
		}
		if err != nil {
			break
		}
	}
}

func expectLine(t *testing.T, vm *VM, ctx context.Context, pattern string, from int) ([]string, int) {
	t.Helper()
	m, next, err := vm.Expect(ctx, regexp.MustCompile(pattern), from)
	if err != nil {
		t.Fatal(err)
	}
	return m, next
}

// TestDiskRawBootsUEFI boots the raw image, copied onto a disk larger than
// the image, under OVMF: systemd-boot starts slot A, the agent mounts the
// slot's system image, moves the backup GPT to the disk's end, grows STATE
// online and mounts it at /var, and reports ready. A second boot of the
// same disk finds nothing left to grow.
func TestDiskRawBootsUEFI(t *testing.T) {
	dir := buildDiskRecipe(t)
	tmp := t.TempDir()
	d := filepath.Join(tmp, "disk.raw")
	sparseCopy(t, filepath.Join(dir, image.RawFile("control-plane")), d, 3<<30)
	vars := filepath.Join(tmp, "vars.fd")
	must(t, copyFile(ovmfVars, vars))

	vm := startFirmwareVM(t, firmwareVM{UEFI: true, Vars: vars, Args: []string{"-drive", "if=virtio,format=raw,file=" + d}})
	ctx, cancel := context.WithTimeout(context.Background(), diskBootTimeout)
	defer cancel()
	_, i := expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:a`, 0)
	expectLine(t, vm, ctx, `msg="system image mounted" .*slot=a partition=/dev/vda2`, i)
	expectLine(t, vm, ctx, `msg="GPT moved to the end of the disk, STATE extended"`, i)
	expectLine(t, vm, ctx, `msg="STATE filesystem grown"`, i)
	expectLine(t, vm, ctx, `msg="STATE mounted" .*partition=/dev/vda6`, i)
	_, i = expectLine(t, vm, ctx, readiness.Pattern.String(), i)
	expectLine(t, vm, ctx, `msg="system slots" .*running=a default=a`, i)
	must(t, vm.Powerdown(ctx))
	must(t, vm.Wait(ctx))

	vm = startFirmwareVM(t, firmwareVM{UEFI: true, Vars: vars, Args: []string{"-drive", "if=virtio,format=raw,file=" + d}})
	ctx, cancel = context.WithTimeout(context.Background(), diskBootTimeout)
	defer cancel()
	_, i = expectLine(t, vm, ctx, `msg="STATE mounted"`, 0)
	_, _ = expectLine(t, vm, ctx, readiness.Pattern.String(), i)
	for _, l := range strings.Split(vm.Tail(1000), "\n") {
		if strings.Contains(l, "GPT moved") || strings.Contains(l, "STATE filesystem grown") {
			t.Errorf("second boot changed the disk again: %s", l)
		}
	}
}

// upgradeVia posts an upgrade image to the node's console API port.
func upgradeVia(c *http.Client, path string) (int, map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, nil, err
	}
	sum := sha256.Sum256(data)
	resp, err := c.Post("http://node/v1/upgrade?sha256="+hex.EncodeToString(sum[:]), "application/octet-stream", bytes.NewReader(data))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	var out map[string]string
	if err := json.Unmarshal(body, &out); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("upgrade response %q: %w", body, err)
	}
	return resp.StatusCode, out, nil
}

func postVia(c *http.Client, path string) (int, string, error) {
	resp, err := c.Post("http://node"+path, "application/json", nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// rebootVia asks the node to reboot through the console API port and
// waits until the console says so. The answer itself may be lost: the
// agent stops serving the port while it goes down.
func rebootVia(t *testing.T, ctx context.Context, vm *VM, sock string, from int) int {
	t.Helper()
	c := apiClient(sock)
	c.Timeout = 20 * time.Second
	if code, body, err := postVia(c, "/v1/reboot"); err == nil && code != http.StatusAccepted {
		t.Fatalf("reboot: HTTP %d %s", code, body)
	}
	_, i := expectLine(t, vm, ctx, `msg="powering down" action=reboot`, from)
	return i
}

// badUpgrade writes an upgrade image whose initramfs has no /init: the
// kernel panics and, with panic=5, reboots; the slot never gets blessed.
func badUpgrade(t *testing.T, dir, dst string) {
	t.Helper()
	a := image.NewArchive()
	must(t, a.AddFile("/not-init", []byte("this slot never becomes healthy\n"), 0o644))
	initrd := filepath.Join(filepath.Dir(dst), "bad-initramfs.img")
	f, err := os.Create(initrd)
	must(t, err)
	_, err = a.WriteTo(f)
	must(t, err)
	must(t, f.Close())
	out, err := os.Create(dst)
	must(t, err)
	defer out.Close()
	must(t, disk.WriteUpgrade(out, disk.UpgradeSpec{
		Recipe: "bad", Title: "ballast bad", Cmdline: []string{"console=ttyS0,115200", "panic=5"},
		Kernel: filepath.Join(dir, image.KernelFile), Initramfs: initrd, System: filepath.Join(dir, image.SystemFile),
	}))
}

// TestDiskUpgradeRollback walks the system slots through their life on
// one disk under OVMF, the guest rebooting by itself inside one QEMU:
// a good upgrade boots slot B on trial and blesses it; a rollback with no
// good other slot is refused; a bad upgrade (its kernel panics) uses up its
// three tries and B boots again without help, reporting A failed; QEMU
// killed in the middle of an upgrade write leaves B booting.
func TestDiskUpgradeRollback(t *testing.T) {
	dir := buildDiskRecipe(t)
	tmp := t.TempDir()
	d := filepath.Join(tmp, "disk.raw")
	sparseCopy(t, filepath.Join(dir, image.RawFile("control-plane")), d, 0)
	vars := filepath.Join(tmp, "vars.fd")
	must(t, copyFile(ovmfVars, vars))
	good := filepath.Join(dir, image.UpgradeFile("control-plane"))
	bad := filepath.Join(tmp, "bad.upgrade.tar")
	badUpgrade(t, dir, bad)

	boot := func(sock string) *VM {
		return startFirmwareVM(t, firmwareVM{UEFI: true, Vars: vars, Reboot: true, Args: []string{
			"-drive", "if=virtio,format=raw,file=" + d,
			"-device", "virtio-serial-pci",
			"-chardev", "socket,id=api,path=" + sock + ",server=on,wait=off",
			"-device", "virtserialport,chardev=api,name=" + api.VirtioPortName,
		}})
	}
	sock := filepath.Join(tmp, "api.sock")
	vm := boot(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 6*diskBootTimeout)
	defer cancel()
	_, i := expectLine(t, vm, ctx, readiness.Pattern.String(), 0)
	c := apiClient(sock)

	// Nothing to roll back to on a fresh disk.
	code, body, err := postVia(c, "/v1/rollback?target=system")
	must(t, err)
	if code != http.StatusConflict || !strings.Contains(body, "slot b is empty") {
		t.Fatalf("rollback on a fresh disk: HTTP %d %s", code, body)
	}

	// A good upgrade: B on trial, then blessed.
	code, out, err := upgradeVia(c, good)
	must(t, err)
	if code != http.StatusOK || out["slot"] != "b" {
		t.Fatalf("upgrade: HTTP %d %v", code, out)
	}
	i = rebootVia(t, ctx, vm, sock, i)
	_, i = expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:b`, i)
	_, i = expectLine(t, vm, ctx, readiness.Pattern.String(), i)
	_, i = expectLine(t, vm, ctx, `msg="system slot marked good" .*slot=b entry=ballast-b.conf was=ballast-b\+2-1.conf`, i)
	_, i = expectLine(t, vm, ctx, `msg="system slots" .*running=b default=b`, i)

	// Rollback to A is possible now (A is good) — and back again.
	code, body, err = postVia(c, "/v1/rollback?target=system")
	must(t, err)
	var rb map[string]string
	if code != http.StatusOK || json.Unmarshal([]byte(body), &rb) != nil || rb["default"] != "a" {
		t.Fatalf("rollback to a: HTTP %d %s", code, body)
	}
	i = rebootVia(t, ctx, vm, sock, i)
	_, i = expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:a`, i)
	_, i = expectLine(t, vm, ctx, `msg="system slots" .*running=a default=a`, i)

	// A bad upgrade goes into B (the slot not running): three panicking
	// tries, then A boots again by itself and reports B failed.
	code, out, err = upgradeVia(c, bad)
	must(t, err)
	if code != http.StatusOK || out["slot"] != "b" {
		t.Fatalf("bad upgrade: HTTP %d %v", code, out)
	}
	i = rebootVia(t, ctx, vm, sock, i)
	for try := 1; try <= 3; try++ {
		_, i = expectLine(t, vm, ctx, `Kernel panic - not syncing`, i)
	}
	_, i = expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:a`, i)
	_, i = expectLine(t, vm, ctx, readiness.Pattern.String(), i)
	_, i = expectLine(t, vm, ctx, `msg="system slots" .*running=a default=a message="slot b failed its 3 boot tries; running slot a"`, i)
	code, body, err = postVia(c, "/v1/rollback?target=system")
	must(t, err)
	if code != http.StatusConflict || !strings.Contains(body, "slot b is bad") {
		t.Fatalf("rollback to the failed slot: HTTP %d %s", code, body)
	}

	// QEMU killed while the upgrade writes slot B: A still boots.
	errc := make(chan error, 1)
	go func() {
		_, _, err := upgradeVia(c, good)
		errc <- err
	}()
	_, i = expectLine(t, vm, ctx, `msg="system upgrade: written and verified" .*file=vmlinuz`, i)
	vm.Kill()
	if err := <-errc; err == nil {
		t.Log("upgrade request finished before QEMU was killed")
	}
	sock2 := filepath.Join(tmp, "api2.sock")
	vm = boot(sock2)
	_, i = expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:a`, 0)
	expectLine(t, vm, ctx, readiness.Pattern.String(), i)
	if strings.Contains(vm.Tail(1000), "slot=b") && strings.Contains(vm.Tail(1000), "ballast.slot:b") {
		t.Error("a half-written slot b was booted")
	}
}

// TestDiskISOBoots boots the hybrid ISO as a CD-ROM under SeaBIOS
// (isolinux) and OVMF (El Torito EFI image, systemd-boot), and the same
// file as a USB stick under both.
func TestDiskISOBoots(t *testing.T) {
	dir := buildDiskRecipe(t)
	iso := filepath.Join(dir, image.ISOFile("control-plane"))
	for _, tc := range []struct {
		name string
		uefi bool
		args []string
	}{
		{"cdrom-bios", false, []string{"-cdrom", iso}},
		{"cdrom-uefi", true, []string{"-cdrom", iso}},
		{"usb-bios", false, []string{"-drive", "if=none,id=usb,format=raw,readonly=on,file=" + iso, "-device", "qemu-xhci", "-device", "usb-storage,drive=usb,bootindex=0"}},
		{"usb-uefi", true, []string{"-drive", "if=none,id=usb,format=raw,readonly=on,file=" + iso, "-device", "qemu-xhci", "-device", "usb-storage,drive=usb,bootindex=0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := startFirmwareVM(t, firmwareVM{UEFI: tc.uefi, Args: tc.args})
			ctx, cancel := context.WithTimeout(context.Background(), diskBootTimeout)
			defer cancel()
			_, i := expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.live`, 0)
			expectLine(t, vm, ctx, readiness.Pattern.String(), i)
		})
	}
}

// TestDiskInstall installs from the ISO (attached as a CD-ROM; the kernel
// is started directly with the install entry's ballast.install=auto) onto an empty
// disk larger than the image, powers off, and boots the disk alone under
// OVMF. A second install onto the now partitioned disk is refused without
// ballast.install.wipe=true.
func TestDiskInstall(t *testing.T) {
	dir := buildDiskRecipe(t)
	iso := filepath.Join(dir, image.ISOFile("control-plane"))
	r, err := image.LoadRecipe("control-plane")
	must(t, err)
	tmp := t.TempDir()
	d := filepath.Join(tmp, "target.raw")
	f, err := os.Create(d)
	must(t, err)
	must(t, f.Truncate(3<<30))
	must(t, f.Close())

	install := func(target string) *VM {
		return startFirmwareVM(t, firmwareVM{
			Kernel: filepath.Join(dir, image.KernelFile), Initrd: filepath.Join(dir, image.InitramfsFile),
			Cmdline: append(append([]string{}, r.Cmdline...), disk.LiveParam, "ballast.install="+target),
			Args:    []string{"-cdrom", iso, "-drive", "if=virtio,format=raw,file=" + d},
		})
	}
	// auto (the ISO's install entry) picks the only empty disk: not the CD-ROM.
	vm := install("auto")
	ctx, cancel := context.WithTimeout(context.Background(), 3*diskBootTimeout)
	defer cancel()
	_, i := expectLine(t, vm, ctx, `msg="install target chosen" part=install target=/dev/vda`, 0)
	_, i = expectLine(t, vm, ctx, `msg="image written and verified" .*target=/dev/vda`, i)
	expectLine(t, vm, ctx, `msg="install complete, rebooting into the disk"`, i)
	if err := vm.Wait(ctx); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
	}

	vm = startFirmwareVM(t, firmwareVM{UEFI: true, Args: []string{"-drive", "if=virtio,format=raw,file=" + d}})
	_, i = expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:a`, 0)
	expectLine(t, vm, ctx, `msg="STATE mounted"`, i)
	_, _ = expectLine(t, vm, ctx, readiness.Pattern.String(), i)
	vm.Kill()

	vm = install("/dev/vda")
	expectLine(t, vm, ctx, `msg="install failed; the live system keeps running" .*holds a partition table.*ballast.install.wipe=true`, 0)
}
