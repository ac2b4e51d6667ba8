// Package pid1 holds what only the init process does: reaping orphans,
// turning signals and the power button into power requests, supervising the
// agent's daemons, and taking the machine down cleanly.
package pid1

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// Reaper collects every child that exits, so orphans re-parented to init
// never linger as zombies.
type Reaper struct {
	Log *slog.Logger
}

// Run reaps until ctx is done.
func (r *Reaper) Run(ctx context.Context) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		reapAll(r.Log)
		select {
		case <-ctx.Done():
			return nil
		case <-sigs:
		}
	}
}

// reapAll reaps every exited child and reports whether any children remain.
func reapAll(log *slog.Logger) (remaining bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			return false
		case err != nil:
			log.Error("wait4", "err", err)
			return true
		case pid <= 0:
			return true // children remain, none exited yet
		}
		log.Debug("reaped", "pid", pid, "status", ws.ExitStatus(), "signal", ws.Signal())
	}
}
