package boot

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestMountEssentialUnderTempRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	root := t.TempDir()
	if err := MountEssential(root, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(root); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	mounted, err := mountedTargets()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts() {
		if m.essential && !mounted[filepath.Join(root, m.target)] {
			t.Errorf("%s not mounted", m.target)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "proc/self/cmdline")); err != nil {
		t.Errorf("proc not usable: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "dev/null")); err != nil {
		t.Errorf("devtmpfs not usable: %v", err)
	}
	// A second call must leave existing mounts alone rather than stack new ones.
	if err := MountEssential(root, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
}
