// Package pid1 holds what only the init process does: reaping orphans,
// turning signals and the power button into power requests, supervising the
// agent's daemons, and taking the machine down cleanly.
package pid1

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Reaper collects every child that exits, so orphans re-parented to init
// never linger as zombies. Children started with Start get their exit
// status delivered instead of lost to the reaper.
type Reaper struct {
	Log *slog.Logger

	mu      sync.Mutex // held while starting a child and while reaping
	waiting map[int]chan unix.WaitStatus
}

// Start starts cmd and returns a channel that receives its exit status.
// Holding the lock across the start means the child is registered before
// the reaper can collect it. Never call cmd.Wait on it: the status belongs
// to the reaper.
func (r *Reaper) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if r.waiting == nil {
		r.waiting = map[int]chan unix.WaitStatus{}
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiting[cmd.Process.Pid] = ch
	return ch, nil
}

// Run reaps until ctx is done.
func (r *Reaper) Run(ctx context.Context) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		r.mu.Lock()
		reapAll(r.Log, r.waiting)
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-sigs:
		}
	}
}

// reapAll reaps every exited child, handing the status of the registered
// ones to their waiters, and reports whether any children remain.
func reapAll(log *slog.Logger, waiting map[int]chan unix.WaitStatus) (remaining bool) {
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
		if ch, ok := waiting[pid]; ok {
			ch <- ws
			delete(waiting, pid)
			continue
		}
		log.Debug("reaped", "pid", pid, "status", ws.ExitStatus(), "signal", ws.Signal())
	}
}
