package runtime

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestContainerdStartsAndStops runs the real containerd with the generated
// config in a scratch root: it serves its socket and stops on cancel.
func TestContainerdStartsAndStops(t *testing.T) {
	bin := containerdBinary(t)
	if os.Geteuid() != 0 {
		t.Skip("containerd needs root")
	}
	dir := t.TempDir()
	p := Paths{BinDir: filepath.Dir(bin), CNIBinDir: filepath.Join(dir, "cni/bin"), CNIConfDir: filepath.Join(dir, "cni/net.d"),
		ContainerdDir: filepath.Join(dir, "root"), StateDir: filepath.Join(dir, "state")}
	var out lockedBuffer
	c := &Containerd{Paths: p, ConfigFile: filepath.Join(dir, "etc/config.toml"), PauseImage: "registry.k8s.io/pause:3.10.2", Output: &out}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if err := WaitSocket(wctx, p.Socket()); err != nil {
		cancel()
		<-done
		t.Fatalf("%v\n%s", err, out.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("stop: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "containerd successfully booted") {
		t.Errorf("containerd log:\n%s", out.String())
	}
}
