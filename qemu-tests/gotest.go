package qemutests

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/kernel"
)

// GoTestVM runs compiled Go test binaries as the only program of a VM that
// boots the recipe's kernel with the recipe's modules loaded.
type GoTestVM struct {
	SourceDir string
	Recipe    string // zero means "control-plane"
	Accel     string
	Workdir   string // scratch space

	kernel   *kernel.Kernel
	modules  []kernel.Module
	recipe   *image.Recipe
	testinit string
}

func (g *GoTestVM) prepare(ctx context.Context) error {
	if g.testinit != "" {
		return nil
	}
	if g.Recipe == "" {
		g.Recipe = "control-plane"
	}
	r, err := image.LoadRecipe(g.Recipe)
	if err != nil {
		return err
	}
	pin, err := kernel.PinFor(r.Kernel.Flavour)
	if err != nil {
		return err
	}
	k, err := kernel.Fetch(ctx, kernel.CacheDir(), pin, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	if g.modules, err = k.Resolve(r.Kernel.Modules); err != nil {
		return err
	}
	g.kernel, g.recipe = k, r
	g.testinit = filepath.Join(g.Workdir, "testinit")
	return g.goCmd("build", "-o", g.testinit, "./qemu-tests/testinit")
}

func (g *GoTestVM) goCmd(args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = g.SourceDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Run compiles pkg's tests and runs them in a VM with args (e.g. -test.v).
// It returns the console output and the test binary's exit code.
func (g *GoTestVM) Run(ctx context.Context, pkg string, args ...string) (string, int, error) {
	if err := g.prepare(ctx); err != nil {
		return "", -1, err
	}
	name := strings.ReplaceAll(strings.Trim(pkg, "./"), "/", "_")
	bin := filepath.Join(g.Workdir, name+".test")
	if err := g.goCmd("test", "-c", "-o", bin, pkg); err != nil {
		return "", -1, err
	}
	a, _, err := image.Initramfs(g.recipe, g.kernel, g.modules, nil, g.testinit, "")
	if err != nil {
		return "", -1, err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", -1, err
	}
	if err := a.AddFile("/tests/pkg.test", data, 0o755); err != nil {
		return "", -1, err
	}
	initrd := filepath.Join(g.Workdir, name+".img")
	f, err := os.Create(initrd)
	if err != nil {
		return "", -1, err
	}
	if _, err := a.WriteTo(f); err != nil {
		f.Close()
		return "", -1, err
	}
	if err := f.Close(); err != nil {
		return "", -1, err
	}
	for _, arg := range args {
		if strings.ContainsAny(arg, ", ") {
			return "", -1, fmt.Errorf("test argument %q: commas and spaces cannot pass through the kernel cmdline", arg)
		}
	}
	vm, err := StartVM(VMOptions{Kernel: g.kernel.Vmlinuz, Initrd: initrd, MemoryMiB: 1024, Accel: g.Accel,
		Cmdline: []string{"console=ttyS0,115200", "quiet", "panic=-1", "testinit.run=/tests/pkg.test", "testinit.args=" + strings.Join(args, ",")}})
	if err != nil {
		return "", -1, err
	}
	defer vm.Kill()
	m, _, err := vm.Expect(ctx, exitRE, 0)
	out := vm.Tail(1 << 20)
	if err != nil {
		return out, -1, err
	}
	code, _ := strconv.Atoi(m[1])
	return out, code, nil
}

var exitRE = regexp.MustCompile(`^testinit: exit (\d+)`)

// KernelRelease is the release of the kernel the tests ran on.
func (g *GoTestVM) KernelRelease() string {
	if g.kernel == nil {
		return ""
	}
	return g.kernel.Release
}
