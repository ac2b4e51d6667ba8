package boot

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadModulesRecordsFailuresAndSkipsDependents(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("finit_module needs root")
	}
	dir := t.TempDir()
	// Not an ELF module: the kernel refuses it, nothing is loaded into the host kernel.
	if err := os.WriteFile(filepath.Join(dir, "garbage.ko"), []byte("not a module"), 0o644); err != nil {
		t.Fatal(err)
	}
	res := LoadModules(dir, []ModuleInfo{
		{Name: "missing", Path: "missing.ko"},
		{Name: "garbage", Path: "garbage.ko"},
		{Name: "user", Path: "user.ko", Deps: []string{"garbage"}},
	}, slog.New(slog.DiscardHandler))
	if res.Loaded != 0 || len(res.Failed) != 3 {
		t.Fatalf("LoadModules = %+v, want 0 loaded and 3 failures", res)
	}
	var msgs []string
	for _, err := range res.Failed {
		msgs = append(msgs, err.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"missing.ko", "garbage.ko", "load module user: dependency garbage failed"} {
		if !strings.Contains(all, want) {
			t.Errorf("failures %q do not mention %q", all, want)
		}
	}
}

// Waiting for one module waits for it (and so for its dependencies) and
// returns its failure; a module outside the set needs no wait.
func TestModulesWait(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("finit_module needs root")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "garbage.ko"), []byte("not a module"), 0o644); err != nil {
		t.Fatal(err)
	}
	later := make(chan struct{})
	m := StartModules(dir, []ModuleInfo{
		{Name: "held", Path: "held.ko"},
		{Name: "garbage", Path: "garbage.ko"},
		{Name: "user", Path: "user.ko", Deps: []string{"garbage"}},
	}, ModuleOrder{First: []string{"user"}, Later: later}, slog.New(slog.DiscardHandler))
	if err := m.Wait(t.Context(), "built_in"); err != nil {
		t.Errorf("Wait(a module outside the set) = %v, want nil", err)
	}
	// user is first, and so is garbage, its dependency; held waits.
	if err := m.Wait(t.Context(), "user"); err == nil || !strings.Contains(err.Error(), "dependency garbage failed") {
		t.Errorf("Wait(user) = %v, want its dependency's failure", err)
	}
	if res := m.Result(); len(res.Failed) != 2 {
		t.Errorf("Result before Later = %+v, want the 2 first modules' failures only", res)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := m.Wait(ctx, "held"); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait(held) before Later = %v, want it to wait until the context ends", err)
	}
	close(later)
	if err := m.WaitAll(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	default:
		t.Error("Done not closed after WaitAll")
	}
	if res := m.Result(); len(res.Failed) != 3 {
		t.Errorf("Result = %+v, want 3 failures", res)
	}
	var none *Modules
	if err := none.Wait(t.Context(), "user"); err != nil {
		t.Errorf("nil Modules: Wait = %v", err)
	}
}
