package pid1

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Daemon is one of the agent's long-running parts (DNS, VIP, proxy, …).
// Run returns when ctx is cancelled; an error return before that is a crash.
type Daemon struct {
	Name string
	Run  func(ctx context.Context) error
}

// Supervisor starts daemons in order, restarts crashed ones with backoff, and
// stops them in reverse order, each within a deadline.
type Supervisor struct {
	Log *slog.Logger
	// MaxBackoff caps the restart delay; zero means 30s.
	MaxBackoff time.Duration

	mu      sync.Mutex
	running []*supervised
}

type supervised struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	since    time.Time
	restarts int
	lastErr  string
}

// DaemonStatus is one supervised daemon, for the node status.
type DaemonStatus struct {
	Name      string    `json:"name"`
	Since     time.Time `json:"since"` // last (re)start
	Restarts  int       `json:"restarts"`
	LastError string    `json:"lastError,omitempty"`
}

// Status lists the running daemons in start order.
func (s *Supervisor) Status() []DaemonStatus {
	s.mu.Lock()
	running := append([]*supervised(nil), s.running...)
	s.mu.Unlock()
	out := make([]DaemonStatus, 0, len(running))
	for _, sv := range running {
		sv.mu.Lock()
		out = append(out, DaemonStatus{Name: sv.name, Since: sv.since, Restarts: sv.restarts, LastError: sv.lastErr})
		sv.mu.Unlock()
	}
	return out
}

// Start runs d under supervision until StopAll.
func (s *Supervisor) Start(ctx context.Context, d Daemon) {
	ctx, cancel := context.WithCancel(ctx)
	sv := &supervised{name: d.Name, cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	s.running = append(s.running, sv)
	s.mu.Unlock()
	maxBackoff := s.MaxBackoff
	if maxBackoff == 0 {
		maxBackoff = 30 * time.Second
	}
	go func() {
		defer close(sv.done)
		backoff := 100 * time.Millisecond
		for {
			start := time.Now()
			sv.mu.Lock()
			sv.since = start.UTC()
			sv.mu.Unlock()
			err := runRecovered(ctx, d)
			if ctx.Err() != nil {
				return
			}
			sv.mu.Lock()
			sv.restarts++
			sv.lastErr = err.Error()
			sv.mu.Unlock()
			if time.Since(start) > maxBackoff {
				backoff = 100 * time.Millisecond // it ran well for a while: not a crash loop
			}
			s.Log.Error("daemon exited, restarting", "daemon", d.Name, "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
		}
	}()
	s.Log.Info("started", "daemon", d.Name)
}

func runRecovered(ctx context.Context, d Daemon) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	err = d.Run(ctx)
	if err == nil && ctx.Err() == nil {
		err = errors.New("returned without error before being stopped")
	}
	return err
}

// StopAll stops the daemons in reverse start order, giving each up to
// timeout; it returns the names of those that did not stop in time.
func (s *Supervisor) StopAll(timeout time.Duration) []string {
	s.mu.Lock()
	running := s.running
	s.running = nil
	s.mu.Unlock()
	var stuck []string
	for i := len(running) - 1; i >= 0; i-- {
		sv := running[i]
		sv.cancel()
		select {
		case <-sv.done:
			s.Log.Info("stopped", "daemon", sv.name)
		case <-time.After(timeout):
			s.Log.Error("daemon did not stop in time", "daemon", sv.name, "timeout", timeout)
			stuck = append(stuck, sv.name)
		}
	}
	return stuck
}
