package qemutests

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ballast-os/ballast/image"
)

var (
	outFlag   = flag.String("out", "", "use artifacts already built in DIR/<recipe>/ instead of building them")
	accelFlag = flag.String("accel", "tcg", "QEMU accelerator: tcg or kvm")
)

// artifacts builds each recipe at most once per test binary.
type artifacts struct {
	mu    sync.Mutex
	built map[string]string // recipe → directory
	tmp   string
}

var shared = &artifacts{built: map[string]string{}}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if shared.tmp != "" {
		os.RemoveAll(shared.tmp)
	}
	os.Exit(code)
}

// buildRecipe returns the directory holding recipe's artifacts.
func buildRecipe(t testing.TB, recipe string) string {
	t.Helper()
	if *outFlag != "" {
		return filepath.Join(*outFlag, recipe)
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if dir, ok := shared.built[recipe]; ok {
		return dir
	}
	if shared.tmp == "" {
		tmp, err := os.MkdirTemp("", "ballast-qemu-tests-")
		if err != nil {
			t.Fatal(err)
		}
		shared.tmp = tmp
	}
	r, err := image.LoadRecipe(recipe)
	if err != nil {
		t.Fatal(err)
	}
	src, err := image.FindSourceDir(".")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.Build(context.Background(), image.Options{
		Recipe: r, OutDir: shared.tmp, SourceDir: src, Progress: testWriter{t}, Log: slog.New(slog.DiscardHandler),
	}); err != nil {
		t.Fatalf("build %s: %v", recipe, err)
	}
	dir := filepath.Join(shared.tmp, recipe)
	shared.built[recipe] = dir
	return dir
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// bootVM starts the recipe's PXE artifacts with -kernel/-initrd and stops
// QEMU when the test ends, showing the console tail if the test failed.
func bootVM(t *testing.T, recipe string, cmdline ...string) *VM {
	t.Helper()
	dir := buildRecipe(t, recipe)
	r, err := image.LoadRecipe(recipe)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := StartVM(VMOptions{
		Kernel:  filepath.Join(dir, image.KernelFile),
		Initrd:  filepath.Join(dir, image.InitramfsFile),
		Cmdline: append(append([]string{}, r.Cmdline...), cmdline...),
		Accel:   *accelFlag,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("last %d console lines:\n%s", consoleTail, vm.Tail(consoleTail))
		}
	})
	return vm
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(fmt.Sprint(err))
	}
}

// loadRecipe returns the recipe's kernel cmdline.
func loadRecipe(t *testing.T, name string) ([]string, error) {
	t.Helper()
	r, err := image.LoadRecipe(name)
	if err != nil {
		t.Fatal(err)
	}
	return r.Cmdline, nil
}

// startConsoleVM starts vm.cmd (a QEMU command line built by a test that
// cannot use StartVM, e.g. firmware boots without -kernel), reads its serial
// console, and kills it when the test ends, showing the console tail if the
// test failed.
func startConsoleVM(t *testing.T, vm *VM) {
	t.Helper()
	out, err := vm.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	vm.cmd.Stderr = vm.cmd.Stdout
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go vm.readConsole(out)
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("last %d console lines:\n%s", consoleTail, vm.Tail(consoleTail))
		}
	})
}
