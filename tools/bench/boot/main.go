// Command boot measures how long the control-plane image takes from QEMU
// start to initagent's readiness line, side by side with a busybox
// initramfs on the same kernel that prints a line and powers off, and how
// long a warm imgbuild takes.
//
//	go run ./tools/bench/boot [-n 5] [-accel tcg]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
	"github.com/ballast-os/ballast/kernel"
	qemutests "github.com/ballast-os/ballast/qemu-tests"
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

	type subject struct {
		name    string
		initrd  string
		cmdline []string
		ready   *regexp.Regexp
		times   []time.Duration
	}
	subjects := []*subject{
		{name: "ballast initagent", initrd: filepath.Join(dir, image.InitramfsFile),
			cmdline: append(slices.Clone(r.Cmdline), "ballast.shutdown=poweroff"), ready: readiness.Pattern},
		{name: "busybox init", initrd: bbInitrd, cmdline: slices.Clone(r.Cmdline), ready: regexp.MustCompile(`^busybox: ready`)},
	}
	for i := 0; i < *n; i++ {
		for _, s := range subjects { // alternate, so drift in machine load hits both alike
			d, err := boot(ctx, k.Vmlinuz, s.initrd, s.cmdline, *accel, s.ready)
			if err != nil {
				return fmt.Errorf("%s boot %d: %w", s.name, i+1, err)
			}
			s.times = append(s.times, d)
		}
	}

	fmt.Printf("boot to ready under %s, %d boots each, kernel %s\n", *accel, *n, k.Release)
	for _, s := range subjects {
		st, _ := os.Stat(s.initrd)
		fmt.Printf("  %-18s median %6.3fs  min %6.3fs  max %6.3fs  initramfs %5.2f MiB\n", s.name,
			median(s.times).Seconds(), slices.Min(s.times).Seconds(), slices.Max(s.times).Seconds(), float64(st.Size())/(1<<20))
	}
	ratio := float64(median(subjects[0].times)) / float64(median(subjects[1].times))
	fmt.Printf("  ratio ballast/busybox: %.2f (target <= 2.0)\n", ratio)
	fmt.Printf("imgbuild control-plane: first %.2fs (kernel cache and go build cache as found), warm median %.2fs over %d (target <= 5s)\n",
		cold.Seconds(), median(warm).Seconds(), len(warm))
	return nil
}

func boot(ctx context.Context, vmlinuz, initrd string, cmdline []string, accel string, ready *regexp.Regexp) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	vm, err := qemutests.StartVM(qemutests.VMOptions{Kernel: vmlinuz, Initrd: initrd, Cmdline: cmdline, Accel: accel})
	if err != nil {
		return 0, err
	}
	defer vm.Kill()
	if _, _, err := vm.Expect(ctx, ready, 0); err != nil {
		return 0, fmt.Errorf("%w\n%s", err, vm.Tail(30))
	}
	d := time.Since(start)
	if err := vm.Wait(ctx); err != nil {
		return 0, fmt.Errorf("no clean poweroff: %w", err)
	}
	return d, nil
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

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
