package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestPrefetch(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "usr/bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, size int) {
		if err := os.WriteFile(filepath.Join(bin, name), make([]byte, size), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("kube", 3<<20+5)
	write("containerd", 1000)
	for _, l := range []string{"kubeadm", "kubelet"} {
		if err := os.Symlink("kube", filepath.Join(bin, l)); err != nil {
			t.Fatal(err)
		}
	}
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, make([]byte, 77), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(bin, "runc")); err != nil {
		t.Fatal(err)
	}

	// kube once for both links, containerd, no shim (absent), runc's
	// target outside the root left alone.
	files, bytes, err := prefetch(context.Background(), root, firstRunBinaries)
	if err != nil {
		t.Fatal(err)
	}
	if files != 2 || bytes != 3<<20+5+1000 {
		t.Errorf("prefetched %d files, %d bytes; want 2 files, %d bytes", files, bytes, 3<<20+5+1000)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := prefetch(ctx, root, firstRunBinaries); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled prefetch: err %v, want context.Canceled", err)
	}
}
