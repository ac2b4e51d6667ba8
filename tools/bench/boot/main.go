// Command boot measures how long the control-plane image takes from QEMU
// start to initagent's readiness line, side by side with a busybox
// initramfs on the same kernel that prints a line and powers off, and how
// long a warm imgbuild takes. It boots each without devices, on emulated
// server hardware (e1000e, AHCI, NVMe, xHCI + USB stick: coldplug loads the
// drivers), and compares with the image as it was before coldplug (the
// cloud kernel, a fixed virtio module list) on virtio devices. The disk
// path (the raw image under OVMF and systemd-boot, from a virtio disk) and
// the PXE path (SeaBIOS, the NIC's iPXE ROM, DHCP and the script by TFTP
// from QEMU's user network, the kernel and initrds by HTTP) are compared
// with the same paths booting the busybox initramfs: a raw image laid out
// alike and an iPXE script alike.
//
//	go run ./tools/bench/boot [-n 5] [-accel tcg]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/disk"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
	"github.com/ballast-os/ballast/kernel"
	"github.com/ballast-os/ballast/netboot"
	qemutests "github.com/ballast-os/ballast/qemu-tests"
	"github.com/ballast-os/ballast/tools/bench/internal/stats"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/boot:", err)
		os.Exit(1)
	}
}

func run() error {
	n := flag.Int("n", 5, "boots per image")
	accel := flag.String("accel", "tcg", "QEMU accelerator")
	flag.Parse()
	ctx := context.Background()

	src, err := image.FindSourceDir(".")
	if err != nil {
		return err
	}
	if err := os.Chdir(src); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "ballast-bench-boot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	imgbuild := filepath.Join(tmp, "imgbuild")
	if out, err := exec.Command("go", "build", "-o", imgbuild, "./image/cmd/imgbuild").CombinedOutput(); err != nil {
		return fmt.Errorf("build imgbuild: %v\n%s", err, out)
	}
	build := func() (time.Duration, error) {
		// The boot comparison needs only kernel + initramfs; the payload is measured by the Kubernetes test.
		cmd := exec.Command(imgbuild, "--recipe", "control-plane", "--system", "none", "--out", filepath.Join(tmp, "out"))
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("imgbuild: %v\n%s", err, out)
		}
		return time.Since(start), nil
	}
	cold, err := build()
	if err != nil {
		return err
	}
	var warm []time.Duration
	for i := 0; i < 3; i++ {
		d, err := build()
		if err != nil {
			return err
		}
		warm = append(warm, d)
	}

	r, err := image.LoadRecipe("control-plane")
	if err != nil {
		return err
	}
	dir := filepath.Join(tmp, "out", "control-plane")
	bbInitrd := filepath.Join(tmp, "busybox.img")
	if err := busyboxInitramfs(bbInitrd); err != nil {
		return err
	}
	pin, _ := kernel.PinFor(r.Kernel.Flavour)
	k, err := kernel.Fetch(ctx, kernel.CacheDir(), pin, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}

	// Yesterday's image, for the coldplug comparison: the cloud kernel with
	// a fixed virtio module list, no driver classes.
	fixed := *r
	fixed.Kernel.Flavour = "cloud-amd64"
	fixed.Kernel.DriverClasses = nil
	fixed.Kernel.Modules = append(slices.Clone(r.Kernel.Modules), "virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi",
		"virtio_console", "virtio_rng", "sr_mod", "ata_piix", "sd_mod")
	if _, err := image.Build(ctx, image.Options{Recipe: &fixed, OutDir: filepath.Join(tmp, "fixed"), SourceDir: src,
		Log: slog.New(slog.DiscardHandler)}); err != nil {
		return fmt.Errorf("build the fixed-list image: %w", err)
	}
	cloudPin, _ := kernel.PinFor("cloud-amd64")
	cloud, err := kernel.Fetch(ctx, kernel.CacheDir(), cloudPin, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	disk := func(name string, size int64) string {
		p := filepath.Join(tmp, name)
		f, err := os.Create(p)
		if err == nil {
			err = errors.Join(f.Truncate(size), f.Close())
		}
		if err != nil {
			panic(err)
		}
		return p
	}
	// Emulated server hardware, no virtio: NIC, SATA, NVMe, USB stick.
	realHW := []string{"-cpu", "max", "-netdev", "user,id=n0", "-device", "e1000e,netdev=n0",
		"-device", "ich9-ahci,id=ahci", "-drive", "if=none,id=sata,format=raw,file=" + disk("sata.raw", 64<<20), "-device", "ide-hd,drive=sata,bus=ahci.0",
		"-drive", "if=none,id=nvm,format=raw,file=" + disk("nvme.raw", 64<<20), "-device", "nvme,drive=nvm,serial=bench",
		"-device", "qemu-xhci,id=xhci", "-drive", "if=none,id=stick,format=raw,file=" + disk("stick.raw", 16<<20), "-device", "usb-storage,bus=xhci.0,drive=stick"}
	// The same on virtio: NIC and disk.
	virtioHW := []string{"-cpu", "max", "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
		"-drive", "if=virtio,format=raw,file=" + disk("vd.raw", 64<<20)}

	type subject struct {
		name     string
		kernel   string
		initrd   string
		cmdline  []string
		hw       []string
		real     bool // no virtio at all
		uefi     bool
		firmware bool // boots from the disk or the NIC, no -kernel; killed once ready
		ready    *regexp.Regexp
		times    []time.Duration
	}
	ballastCmdline := append(slices.Clone(r.Cmdline), "ballast.shutdown=poweroff")
	busyboxReady := regexp.MustCompile(`^busybox: ready`)
	subjects := []*subject{
		{name: "ballast initagent", kernel: k.Vmlinuz, initrd: filepath.Join(dir, image.InitramfsFile), cmdline: ballastCmdline, ready: readiness.Pattern},
		{name: "busybox init", kernel: k.Vmlinuz, initrd: bbInitrd, cmdline: slices.Clone(r.Cmdline), ready: busyboxReady},
		{name: "ballast coldplug, real hw", kernel: k.Vmlinuz, initrd: filepath.Join(dir, image.InitramfsFile), cmdline: ballastCmdline,
			hw: realHW, real: true, ready: readiness.Pattern},
		{name: "busybox, real hw", kernel: k.Vmlinuz, initrd: bbInitrd, cmdline: slices.Clone(r.Cmdline), hw: realHW, real: true, ready: busyboxReady},
		{name: "ballast fixed list, virtio (cloud kernel)", kernel: cloud.Vmlinuz, initrd: filepath.Join(tmp, "fixed", r.Name, image.InitramfsFile),
			cmdline: ballastCmdline, hw: virtioHW, ready: readiness.Pattern},
		{name: "busybox, virtio (cloud kernel)", kernel: cloud.Vmlinuz, initrd: bbInitrd, cmdline: slices.Clone(r.Cmdline), hw: virtioHW, ready: busyboxReady},
	}
	paths, err := firmwarePaths(ctx, r, dir, bbInitrd, tmp)
	if err != nil {
		return err
	}
	defer paths.close()
	diskHW := func(raw string) []string {
		return []string{"-cpu", "max", "-drive", "if=virtio,format=raw,snapshot=on,file=" + raw}
	}
	pxeHW := func(script string) []string {
		return []string{"-cpu", "max", "-boot", "n", "-netdev", "user,id=n0,tftp=" + paths.tftp + ",bootfile=" + script,
			"-device", "virtio-net-pci,netdev=n0"}
	}
	subjects = append(subjects,
		&subject{name: "ballast disk, OVMF + systemd-boot", initrd: filepath.Join(dir, image.InitramfsFile), hw: diskHW(filepath.Join(dir, image.RawFile(r.Name))), uefi: true, firmware: true, ready: readiness.Pattern},
		&subject{name: "busybox disk, OVMF + systemd-boot", initrd: bbInitrd, hw: diskHW(paths.busyboxRaw), uefi: true, firmware: true, ready: busyboxReady},
		&subject{name: "ballast PXE, SeaBIOS + iPXE", initrd: filepath.Join(dir, image.InitramfsFile), hw: pxeHW(paths.ballastScript), firmware: true, ready: readiness.Pattern},
		&subject{name: "busybox PXE, SeaBIOS + iPXE", initrd: bbInitrd, hw: pxeHW(paths.busyboxScript), firmware: true, ready: busyboxReady},
	)
	for i := 0; i < *n; i++ {
		for _, s := range subjects { // alternate, so drift in machine load hits all alike
			d, err := boot(ctx, qemutests.VMOptions{Kernel: s.kernel, Initrd: s.initrd, Cmdline: s.cmdline, Accel: *accel,
				Args: s.hw, NoVirtio: s.real, UEFI: s.uefi}, s.ready, !s.firmware)
			if err != nil {
				return fmt.Errorf("%s boot %d: %w", s.name, i+1, err)
			}
			s.times = append(s.times, d)
			fmt.Fprintf(os.Stderr, "boot %d %-42s %6.3fs\n", i+1, s.name, d.Seconds())
		}
	}

	fmt.Printf("boot to ready under %s, %d boots each, kernel %s (cloud: %s)\n", *accel, *n, k.Release, cloud.Release)
	for _, s := range subjects {
		st, _ := os.Stat(s.initrd)
		fmt.Printf("  %-42s median %6.3fs  min %6.3fs  max %6.3fs  initramfs %5.2f MiB\n", s.name,
			stats.Median(s.times).Seconds(), slices.Min(s.times).Seconds(), slices.Max(s.times).Seconds(), float64(st.Size())/(1<<20))
	}
	ratio := func(a, b int) float64 {
		return float64(stats.Median(subjects[a].times)) / float64(stats.Median(subjects[b].times))
	}
	fmt.Printf("  ratio ballast/busybox, no devices: %.2f (target <= 2.0)\n", ratio(0, 1))
	fmt.Printf("  ratio ballast/busybox, real hardware: %.2f; on virtio with the fixed list: %.2f\n", ratio(2, 3), ratio(4, 5))
	fmt.Printf("  coldplug on real hardware / fixed list on virtio: %.2f (target <= 1.2)\n", ratio(2, 4))
	fmt.Printf("  ratio ballast/busybox by boot path (target <= 1.2): direct kernel %.2f, disk (OVMF + systemd-boot) %.2f, PXE (iPXE, HTTP) %.2f\n",
		ratio(0, 1), ratio(6, 7), ratio(8, 9))
	fmt.Printf("imgbuild control-plane: first %.2fs (kernel cache and go build cache as found), warm median %.2fs over %d (target <= 5s)\n",
		cold.Seconds(), stats.Median(warm).Seconds(), len(warm))
	return nil
}

// boot starts a machine and returns how long it took to print its ready
// line; with poweroff the machine must then power itself off.
func boot(ctx context.Context, opts qemutests.VMOptions, ready *regexp.Regexp, poweroff bool) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	start := time.Now()
	vm, err := qemutests.StartVM(opts)
	if err != nil {
		return 0, err
	}
	defer vm.Kill()
	if _, _, err := vm.Expect(ctx, ready, 0); err != nil {
		return 0, fmt.Errorf("%w\n%s", err, vm.Tail(30))
	}
	d := time.Since(start)
	if poweroff {
		if err := vm.Wait(ctx); err != nil {
			return 0, fmt.Errorf("no clean poweroff: %w", err)
		}
	}
	return d, nil
}

// bootPaths are the disk and PXE boots of ballast and of the busybox floor.
type bootPaths struct {
	busyboxRaw                   string // a raw image laid out as ballast's, the busybox initramfs in slot A
	tftp                         string // QEMU's TFTP root: the two iPXE scripts
	ballastScript, busyboxScript string
	srv                          *http.Server
}

func (p *bootPaths) close() { p.srv.Close() }

// firmwarePaths makes the busybox raw image and the PXE side: an HTTP
// server on loopback (QEMU's user network reaches it at 10.0.2.2) with
// ballast's netboot files and the same for busybox (an iPXE script from
// the same generator, the busybox initramfs instead of ballast's initrds),
// and a TFTP root whose scripts chain to them, as a PXE farm's menu does.
func firmwarePaths(ctx context.Context, r *image.Recipe, dir, bbInitrd, tmp string) (*bootPaths, error) {
	p := &bootPaths{busyboxRaw: filepath.Join(tmp, "busybox.raw"), tftp: filepath.Join(tmp, "tftp"),
		ballastScript: "ballast.ipxe", busyboxScript: "busybox.ipxe"}
	placeholder := filepath.Join(tmp, "busybox-system.img")
	if err := os.WriteFile(placeholder, make([]byte, 4096), 0o644); err != nil {
		return nil, err
	}
	f, err := os.Create(p.busyboxRaw)
	if err != nil {
		return nil, err
	}
	spec := disk.RawSpec{
		Sizes: disk.Sizes{Disk: r.Disk.SizeMiB << 20, ESP: r.Disk.ESPMiB << 20, System: r.Disk.SystemMiB << 20},
		Seed:  r.SHA256, Title: "busybox floor", Kernel: filepath.Join(dir, image.KernelFile), Initramfs: bbInitrd,
		SystemImage: placeholder, Cmdline: r.Cmdline,
	}
	if err := errors.Join(disk.WriteRaw(ctx, f, spec), f.Close()); err != nil {
		return nil, fmt.Errorf("busybox raw image: %w", err)
	}

	web := filepath.Join(tmp, "web")
	bbDir := filepath.Join(web, "busybox")
	for _, d := range []string{bbDir, p.tftp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Symlink(dir, filepath.Join(web, "ballast")); err != nil {
		return nil, err
	}
	for src, dst := range map[string]string{filepath.Join(dir, image.KernelFile): "vmlinuz", bbInitrd: "busybox.img"} {
		if err := os.Symlink(src, filepath.Join(bbDir, dst)); err != nil {
			return nil, err
		}
	}
	script := netboot.Script(netboot.ScriptParams{Title: "busybox floor", Kernel: "vmlinuz", Initrds: []string{"busybox.img"}, Cmdline: r.Cmdline})
	if err := os.WriteFile(filepath.Join(bbDir, image.IPXEFile), script, 0o644); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.srv = &http.Server{Handler: http.FileServer(http.Dir(web))}
	go p.srv.Serve(ln)
	port := ln.Addr().(*net.TCPAddr).Port
	for name, sub := range map[string]string{p.ballastScript: "ballast", p.busyboxScript: "busybox"} {
		chain := fmt.Sprintf("#!ipxe\nset base-url http://10.0.2.2:%d/%s\nchain ${base-url}/%s\n", port, sub, image.IPXEFile)
		if err := os.WriteFile(filepath.Join(p.tftp, name), []byte(chain), 0o644); err != nil {
			p.srv.Close()
			return nil, err
		}
	}
	return p, nil
}

// busyboxInitramfs is the peer: Debian's static busybox as /init, a shell
// script that mounts /proc, prints a line and powers off.
func busyboxInitramfs(path string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("%w: run `apt-get install -y busybox-static`", err)
	}
	a := image.NewArchive()
	script := "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\necho 'busybox: ready'\n/bin/busybox poweroff -f\n"
	for _, err := range []error{
		a.AddCharDev("/dev/console", 0o600, 5, 1),
		a.AddDir("/proc", 0o755),
		a.AddFile("/bin/busybox", bb, 0o755),
		a.AddFile("/init", []byte(script), 0o755),
	} {
		if err != nil {
			return err
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := a.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
