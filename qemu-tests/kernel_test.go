package qemutests

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/kernel"
)

// vmTestPackages are unit-test packages that need kernel features the CI
// host kernel may lack (bonding, 8021q, dummy); they run here on the
// image's own kernel, with the control-plane recipe's modules loaded.
var vmTestPackages = []string{"./initagent/netconf"}

// TestPackagesOnImageKernel compiles each package's tests, boots them as the
// only program of a VM and requires them to pass without skipping.
func TestPackagesOnImageKernel(t *testing.T) {
	src, err := image.FindSourceDir(".")
	if err != nil {
		t.Fatal(err)
	}
	r, err := image.LoadRecipe("control-plane")
	if err != nil {
		t.Fatal(err)
	}
	pin, err := kernel.PinFor(r.Kernel.Flavour)
	if err != nil {
		t.Fatal(err)
	}
	k, err := kernel.Fetch(context.Background(), kernel.CacheDir(), pin, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	modules, err := k.Resolve(r.Kernel.Modules)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	testinit := filepath.Join(dir, "testinit")
	goBuild(t, src, "build", "-o", testinit, "./qemu-tests/testinit")

	for _, pkg := range vmTestPackages {
		t.Run(strings.TrimPrefix(pkg, "./"), func(t *testing.T) {
			bin := filepath.Join(dir, filepath.Base(pkg)+".test")
			goBuild(t, src, "test", "-c", "-o", bin, pkg)
			a, _, err := image.Initramfs(r, k, modules, testinit, "")
			if err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			if err := a.AddFile("/tests/pkg.test", data, 0o755); err != nil {
				t.Fatal(err)
			}
			initrd := filepath.Join(dir, filepath.Base(pkg)+".img")
			f, err := os.Create(initrd)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.WriteTo(f); err != nil {
				t.Fatal(err)
			}
			f.Close()

			vm, err := StartVM(VMOptions{Kernel: k.Vmlinuz, Initrd: initrd, MemoryMiB: 1024, Accel: *accelFlag,
				Cmdline: []string{"console=ttyS0,115200", "quiet", "panic=-1", "testinit.run=/tests/pkg.test", "testinit.args=-test.v,-test.count=1"}})
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			m, _, err := vm.Expect(ctx, regexp.MustCompile(`^testinit: exit (\d+)`), 0)
			out := vm.Tail(100000)
			if err != nil || m[1] != "0" {
				t.Fatalf("tests in VM failed (%v):\n%s", err, out)
			}
			if skips := regexp.MustCompile(`(?m)^\s*--- SKIP: .*$`).FindAllString(out, -1); len(skips) > 0 {
				t.Errorf("tests skipped on the image kernel:\n%s\n\nfull output:\n%s", strings.Join(skips, "\n"), out)
			}
			passes := regexp.MustCompile(`(?m)^--- PASS: `).FindAllString(out, -1)
			t.Logf("%d tests passed on kernel %s", len(passes), k.Release)
		})
	}
}

func goBuild(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
