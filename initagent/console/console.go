// Package console writes the agent's output to the node's consoles without
// ever making it wait for them. The kernel hands init one console
// (/dev/console: the last console= on the cmdline); a server usually has
// two, VGA (tty0) and serial (ttyS0), and an operator may be looking at
// either. Every line goes to /dev/console; the readiness line and warnings
// and errors also go to every other console the kernel has active
// (/sys/class/tty/console/active).
//
// A console at 115200 baud takes about 10 KB/s: a boot's log would hold the
// node up for seconds if writes were synchronous. Each console has its own
// queue and writer goroutine instead; when a queue is full, lines are
// dropped and the count is written once there is room again.
package console

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// queueLines is how many lines a console holds before it drops new ones.
const queueLines = 4096

// Consoles fans output out to the kernel's consoles.
type Consoles struct {
	primary *sink

	mu     sync.Mutex
	extras []*sink
}

// New writes to primary (the process's stdout, /dev/console on a node)
// until Discover finds the other consoles.
func New(primary io.Writer) *Consoles {
	return &Consoles{primary: newSink("console", primary)}
}

// Write queues p (whole lines) for /dev/console.
func (c *Consoles) Write(p []byte) (int, error) {
	c.primary.put(p)
	return len(p), nil
}

// Important returns a writer whose lines go to every console: /dev/console
// and the others Discover found. Use it for the readiness line and, through
// a second log handler, for warnings and errors.
func (c *Consoles) Important() io.Writer { return importantWriter{c} }

// ImportantExtrasOnly is Important without /dev/console, for a log handler
// that runs beside the one writing everything to /dev/console.
func (c *Consoles) ImportantExtrasOnly() io.Writer { return extrasWriter{c} }

type importantWriter struct{ c *Consoles }

func (w importantWriter) Write(p []byte) (int, error) {
	w.c.primary.put(p)
	return extrasWriter(w).Write(p)
}

type extrasWriter struct{ c *Consoles }

func (w extrasWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	extras := w.c.extras
	w.c.mu.Unlock()
	for _, s := range extras {
		s.put(p)
	}
	return len(p), nil
}

// Discover opens every active kernel console other than the one
// /dev/console is (root is "/" on a node: it needs /sys and /dev mounted)
// and returns their names. A console that cannot be opened is skipped.
func (c *Consoles) Discover(root string) []string {
	data, err := os.ReadFile(filepath.Join(root, "sys/class/tty/console/active"))
	if err != nil {
		return nil
	}
	primaryDev, err := consoleDevice(filepath.Join(root, "dev/console"))
	if err != nil {
		primaryDev = ^uint64(0) // unknown: no console is skipped as the primary
	}
	var names []string
	for _, name := range strings.Fields(string(data)) {
		path := filepath.Join(root, "dev", name)
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil || st.Rdev == primaryDev {
			continue
		}
		// O_NONBLOCK at open: a serial port waiting for carrier must not hang us.
		f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err != nil {
			continue
		}
		c.mu.Lock()
		c.extras = append(c.extras, newSink(name, f))
		c.mu.Unlock()
		names = append(names, name)
	}
	return names
}

// consoleDevice is the device number of the tty behind /dev/console
// (TIOCGDEV), so the primary console is not written twice.
func consoleDevice(path string) (uint64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	dev, err := unix.IoctlGetUint32(int(f.Fd()), unix.TIOCGDEV)
	if err != nil {
		return 0, err
	}
	return uint64(unix.Mkdev(unix.Major(uint64(dev)), unix.Minor(uint64(dev)))), nil
}

// Flush waits until every console has written what was queued before it,
// or ctx ends (a node about to power off shows its last lines).
func (c *Consoles) Flush(ctx context.Context) {
	c.mu.Lock()
	sinks := append([]*sink{c.primary}, c.extras...)
	c.mu.Unlock()
	for _, s := range sinks {
		s.flush(ctx)
	}
}

// Close writes what is queued (bounded by ctx) and stops the writers. PID 1
// never calls it; tests do.
func (c *Consoles) Close(ctx context.Context) {
	c.Flush(ctx)
	c.mu.Lock()
	sinks := append([]*sink{c.primary}, c.extras...)
	c.mu.Unlock()
	for _, s := range sinks {
		s.close()
	}
}

// Dropped reports lines each console dropped because it could not keep up.
func (c *Consoles) Dropped() map[string]uint64 {
	c.mu.Lock()
	sinks := append([]*sink{c.primary}, c.extras...)
	c.mu.Unlock()
	out := map[string]uint64{}
	for _, s := range sinks {
		s.mu.Lock()
		out[s.name] = s.droppedTotal
		s.mu.Unlock()
	}
	return out
}

// sink is one console: a queue of lines and the goroutine writing them.
type sink struct {
	name string
	w    io.Writer

	mu           sync.Mutex
	closed       bool
	queue        [][]byte
	dropped      uint64 // since the last line written
	droppedTotal uint64
	wake         chan struct{}
	writing      bool
}

func newSink(name string, w io.Writer) *sink {
	s := &sink{name: name, w: w, wake: make(chan struct{}, 1)}
	go s.run()
	return s
}

func (s *sink) put(p []byte) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if len(s.queue) >= queueLines {
		s.dropped++
		s.droppedTotal++
	} else {
		s.queue = append(s.queue, bytes.Clone(p))
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	s.mu.Unlock()
}

func (s *sink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.wake)
	}
}

// run writes queued lines for the life of the process (a console outlives
// every context: init's last words go there too).
func (s *sink) run() {
	for range s.wake {
		for {
			s.mu.Lock()
			if len(s.queue) == 0 {
				s.writing = false
				s.mu.Unlock()
				break
			}
			batch := s.queue
			s.queue = nil
			dropped := s.dropped
			s.dropped = 0
			s.writing = true
			s.mu.Unlock()
			if dropped > 0 {
				fmt.Fprintf(s.w, "ballast: console %s could not keep up: %d lines dropped\n", s.name, dropped)
			}
			for _, line := range batch {
				// A tty opened O_NONBLOCK waits in Go's poller, not in a thread.
				_, _ = s.w.Write(line)
			}
		}
	}
}

func (s *sink) flush(ctx context.Context) {
	for {
		s.mu.Lock()
		busy := len(s.queue) > 0 || s.writing
		s.mu.Unlock()
		if !busy {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}
