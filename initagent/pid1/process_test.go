package pid1

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

// processHelper runs Processes while a Reaper collects every child, as
// initagent does as PID 1: exit statuses must still reach Process.Run.
func processHelper() int {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &Reaper{Log: slog.New(slog.DiscardHandler)}
	go r.Run(ctx)
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
		return 1
	}
	for i := 0; i < 20; i++ { // many short runs: any race with the reaper shows up
		var out lockedBuffer
		p := &Process{Path: "/bin/sh", Args: []string{"-c", "echo out; echo err >&2; sleep 0.01 & exit 3"}, Output: &out, Reaper: r}
		err := p.Run(ctx)
		if err == nil || !strings.Contains(err.Error(), "exited with status 3") {
			return fail("run %d: %v", i, err)
		}
		if got := out.String(); got != "out\nerr\n" {
			return fail("run %d output %q", i, got)
		}
	}
	// A program that ignores SIGTERM is killed after StopTimeout.
	sctx, stop := context.WithCancel(ctx)
	started := make(chan int, 1)
	p := &Process{Path: "/bin/sh", Args: []string{"-c", "trap '' TERM; echo ready; while :; do sleep 1; done"},
		StopTimeout: 300 * time.Millisecond, Reaper: r, Started: func(pid int) { started <- pid }}
	done := make(chan error, 1)
	go func() { done <- p.Run(sctx) }()
	pid := <-started
	time.Sleep(200 * time.Millisecond)
	stop()
	if err := <-done; err != nil {
		return fail("stopped process: %v", err)
	}
	if unix.Kill(pid, 0) == nil {
		return fail("process %d still alive after Run returned", pid)
	}
	return 0
}

func TestProcessUnderReaper(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=process")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

func TestProcessStopsGracefully(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out lockedBuffer
	started := make(chan int, 1)
	p := &Process{Path: "/bin/sh", Args: []string{"-c", "trap 'echo bye; exit 0' TERM; echo hi; while :; do sleep 0.05; done"},
		Output: &out, Started: func(pid int) { started <- pid }}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	<-started
	for !strings.Contains(out.String(), "hi") {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "bye") {
		t.Errorf("no graceful stop: %q", out.String())
	}
	if err := (&Process{Path: "/nonexistent"}).Run(context.Background()); err == nil || !strings.Contains(err.Error(), "start /nonexistent") {
		t.Errorf("missing binary: %v", err)
	}
}

// TestProcessErrorQuotesLastOutput: a failing program's error carries its
// last lines (what the status and the restart log show); a clean exit is
// ErrExited, which one-shot callers treat as success.
func TestProcessErrorQuotesLastOutput(t *testing.T) {
	p := &Process{Path: "/bin/sh", Args: []string{"-c", "for i in 1 2 3 4 5 6 7; do echo line $i; done; echo 'E1125 config: cgroup missing' >&2; exit 3"}}
	err := p.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "exited with status 3; last output: line 4 | line 5 | line 6 | line 7 | E1125 config: cgroup missing") {
		t.Fatalf("error %v", err)
	}
	err = (&Process{Path: "/bin/true"}).Run(context.Background())
	if !errors.Is(err, ErrExited) {
		t.Fatalf("clean exit: %v", err)
	}
}
