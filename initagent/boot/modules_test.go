package boot

import (
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
