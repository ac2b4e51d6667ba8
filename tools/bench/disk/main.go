// Command disk measures the disk artifacts of the control-plane recipe:
// imgbuild time cold (fresh output directory, fresh Go build cache for
// initagent) and warm (same directory again), the sizes of the raw image and
// the ISO, and the boot time from QEMU start to initagent's readiness line
// for the raw image under OVMF (firmware → systemd-boot → kernel) side by
// side with the PXE-style direct kernel boot (-kernel/-initrd) of the same
// build, alternating, in one run.
//
//	go run ./tools/bench/disk [-n 3] [-accel tcg]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
)

const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/disk:", err)
		os.Exit(1)
	}
}

func run() error {
	n := flag.Int("n", 3, "boots per method")
	accel := flag.String("accel", "tcg", "QEMU accelerator")
	flag.Parse()
	ctx := context.Background()
	src, err := image.FindSourceDir(".")
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "ballast-bench-disk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	r, err := image.LoadRecipe("control-plane")
	if err != nil {
		return err
	}

	// Cold: a fresh Go build cache for initagent, a fresh output directory.
	// The pinned kernel stays cached (fetching it is a network download).
	os.Setenv("GOCACHE", filepath.Join(tmp, "gocache"))
	out := filepath.Join(tmp, "out")
	var stages [2]strings.Builder
	var took [2]time.Duration
	for i := range 2 {
		start := time.Now()
		if _, err := image.Build(ctx, image.Options{Recipe: r, OutDir: out, SourceDir: src, Progress: &stages[i],
			Log: slog.New(slog.DiscardHandler)}); err != nil {
			return err
		}
		took[i] = time.Since(start)
	}
	dir := filepath.Join(out, r.Name)
	fmt.Printf("imgbuild control-plane (all stages)\n  cold %6.1fs\n  warm %6.1fs\n", took[0].Seconds(), took[1].Seconds())
	fmt.Printf("stages, cold:\n%s", indent(stages[0].String()))
	fmt.Printf("stages, warm:\n%s", indent(stages[1].String()))

	fmt.Printf("\n%-26s %12s %12s\n", "artifact", "size MiB", "on disk MiB")
	for _, name := range []string{image.RawFile(r.Name), image.ISOFile(r.Name), image.UpgradeFile(r.Name), image.InitramfsFile, image.KernelFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512
		fmt.Printf("%-26s %12.1f %12.1f\n", name, float64(fi.Size())/(1<<20), float64(blocks)/(1<<20))
	}

	var raw, pxe []time.Duration
	for i := range *n {
		d, err := bootRaw(ctx, *accel, tmp, filepath.Join(dir, image.RawFile(r.Name)))
		if err != nil {
			return fmt.Errorf("raw/UEFI boot %d: %w", i+1, err)
		}
		raw = append(raw, d)
		d, err = bootPXE(ctx, *accel, dir, r.Cmdline)
		if err != nil {
			return fmt.Errorf("direct kernel boot %d: %w", i+1, err)
		}
		pxe = append(pxe, d)
	}
	fmt.Printf("\nboot: QEMU start → %q (%d boots each, alternating, -accel %s)\n", "ballast: ready", *n, *accel)
	fmt.Printf("%-34s %9s %9s %9s\n", "method", "median s", "p95 s", "min s")
	for _, row := range []struct {
		name string
		d    []time.Duration
	}{{"raw image, OVMF + systemd-boot", raw}, {"direct kernel (PXE-style)", pxe}} {
		med, p95, lo := stats(row.d)
		fmt.Printf("%-34s %9.1f %9.1f %9.1f\n", row.name, med.Seconds(), p95.Seconds(), lo.Seconds())
	}
	return nil
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func stats(d []time.Duration) (med, p95, lo time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[min(len(s)-1, (len(s)*95+99)/100-1)], s[0]
}

func bootRaw(ctx context.Context, accel, tmp, raw string) (time.Duration, error) {
	disk := filepath.Join(tmp, "boot.raw")
	if err := exec.Command("cp", "--sparse=always", raw, disk).Run(); err != nil {
		return 0, err
	}
	defer os.Remove(disk)
	vars := filepath.Join(tmp, "vars.fd")
	if err := exec.Command("cp", ovmfVars, vars).Run(); err != nil {
		return 0, fmt.Errorf("%s: %w (apt-get install -y ovmf)", ovmfVars, err)
	}
	return timeToReady(ctx, accel,
		"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,file="+vars,
		"-drive", "if=virtio,format=raw,file="+disk)
}

func bootPXE(ctx context.Context, accel, dir string, cmdline []string) (time.Duration, error) {
	return timeToReady(ctx, accel, "-kernel", filepath.Join(dir, image.KernelFile), "-initrd", filepath.Join(dir, image.InitramfsFile),
		"-append", strings.Join(cmdline, " "))
}

// timeToReady starts QEMU and returns when the readiness line appears.
func timeToReady(ctx context.Context, accel string, args ...string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	base := []string{"-accel", accel, "-m", "768", "-smp", "2", "-display", "none", "-monitor", "none", "-serial", "stdio",
		"-no-reboot", "-nic", "none", "-device", "virtio-rng-pci"}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", append(base, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if readiness.Pattern.MatchString(strings.TrimLeft(sc.Text(), "\x1b[0123456789;?hHJKlm")) {
			return time.Since(start), nil
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	return 0, fmt.Errorf("qemu ended without a readiness line: %v", ctx.Err())
}
