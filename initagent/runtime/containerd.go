package runtime

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ballast-os/ballast/initagent/pid1"
)

// Containerd runs containerd with the generated config.
type Containerd struct {
	Paths      Paths
	ConfigFile string // where the config is written, e.g. /etc/containerd/config.toml
	PauseImage string
	Output     io.Writer    // containerd's log
	Reaper     *pid1.Reaper // nil outside PID 1
}

// Run writes the config and runs containerd until ctx ends; an exit is an
// error (the supervisor restarts it).
func (c *Containerd) Run(ctx context.Context) error {
	for _, d := range []string{c.Paths.ContainerdDir, c.Paths.StateDir, c.Paths.CNIConfDir, filepath.Dir(c.ConfigFile)} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return err
		}
	}
	if err := os.WriteFile(c.ConfigFile, []byte(ContainerdConfig(c.Paths, c.PauseImage)), 0o644); err != nil {
		return err
	}
	p := &pid1.Process{
		Path:   filepath.Join(c.Paths.BinDir, "containerd"),
		Args:   []string{"--config", c.ConfigFile},
		Env:    []string{"PATH=" + c.Paths.BinDir + ":/usr/bin:/bin", "HOME=/root"},
		Output: c.Output,
		Reaper: c.Reaper,
	}
	return p.Run(ctx)
}

// WaitSocket waits until a unix socket accepts connections.
func WaitSocket(ctx context.Context, path string) error {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never accepted connections: %w", path, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
