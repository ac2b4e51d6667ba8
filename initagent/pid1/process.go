package pid1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process runs an external program as a daemon: Run starts it, copies its
// output to Output line by line, and returns when it exits (an error: the
// Supervisor restarts it with backoff) or, once ctx ends, after stopping it
// with StopSignal and, past StopTimeout, SIGKILL.
type Process struct {
	Path string
	Args []string
	Env  []string // nil: the agent's environment
	Dir  string
	// Output receives stdout and stderr; nil discards them.
	Output io.Writer
	// StopSignal asks the program to stop; zero means SIGTERM.
	StopSignal syscall.Signal
	// StopTimeout is how long it may take before SIGKILL; zero means 10s.
	StopTimeout time.Duration
	// Reaper, when the agent is PID 1, collects the exit status; nil uses
	// exec.Cmd.Wait (tests, or not PID 1).
	Reaper *Reaper
	// Started, if set, is called with the pid after each start.
	Started func(pid int)
}

// Run runs the program once; see Process.
func (p *Process) Run(ctx context.Context) error {
	if p.StopSignal == 0 {
		p.StopSignal = syscall.SIGTERM
	}
	if p.StopTimeout == 0 {
		p.StopTimeout = 10 * time.Second
	}
	out := p.Output
	if out == nil {
		out = io.Discard
	}
	var tail lastLines // quoted in the exit error: why it failed, in the status and the log
	// An *os.File as stdout means no copying goroutine inside exec.Cmd,
	// whose Wait the reaper would make fail.
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(p.Path, p.Args...)
	cmd.Env, cmd.Dir = p.Env, p.Dir
	cmd.Stdout, cmd.Stderr = w, w
	// Its own process group, so a stop reaches helpers it forked too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	exited := make(chan unix.WaitStatus, 1)
	if p.Reaper != nil {
		var ch <-chan unix.WaitStatus
		if ch, err = p.Reaper.Start(cmd); err == nil {
			go func() { exited <- <-ch }()
		}
	} else if err = cmd.Start(); err == nil {
		go func() {
			_ = cmd.Wait()
			ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
			exited <- unix.WaitStatus(ws)
		}()
	}
	w.Close()
	if err != nil {
		r.Close()
		return fmt.Errorf("start %s: %w", p.Path, err)
	}
	if p.Started != nil {
		p.Started(cmd.Process.Pid)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(io.MultiWriter(out, &tail), r)
		r.Close()
	}()
	pid := cmd.Process.Pid
	var ws unix.WaitStatus
	stopped := false
	select {
	case ws = <-exited:
	case <-ctx.Done():
		stopped = true
		_ = unix.Kill(-pid, p.StopSignal)
		select {
		case ws = <-exited:
		case <-time.After(p.StopTimeout):
			_ = unix.Kill(-pid, unix.SIGKILL)
			ws = <-exited
		}
	}
	// Children left in the group could hold the pipe open forever.
	_ = unix.Kill(-pid, unix.SIGKILL)
	select {
	case <-copied:
	case <-time.After(time.Second):
		r.Close()
	}
	if p.Reaper != nil {
		_ = cmd.Process.Release()
	}
	if stopped {
		return nil
	}
	err = exitError(p.Path, ws)
	if last := tail.String(); last != "" && !errors.Is(err, ErrExited) {
		err = fmt.Errorf("%w; last output: %s", err, last)
	}
	return err
}

// lastLines keeps the last few lines written to it.
type lastLines struct {
	mu sync.Mutex
	b  []byte
}

const lastLinesKept = 5

func (l *lastLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	if len(l.b) > 8<<10 {
		l.b = l.b[len(l.b)-4<<10:]
	}
	return len(p), nil
}

func (l *lastLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(string(l.b)), "\n")
	if len(lines) > lastLinesKept {
		lines = lines[len(lines)-lastLinesKept:]
	}
	return strings.Join(lines, " | ")
}

func exitError(path string, ws unix.WaitStatus) error {
	switch {
	case ws.Signaled():
		return fmt.Errorf("%s killed by signal %s", path, ws.Signal())
	case ws.ExitStatus() != 0:
		return fmt.Errorf("%s exited with status %d", path, ws.ExitStatus())
	}
	return fmt.Errorf("%s %w", path, ErrExited)
}

// ErrExited is Run's error when the program exited with status 0: an
// error for a daemon, success for a one-shot command (check with errors.Is).
var ErrExited = errors.New("exited with status 0")
