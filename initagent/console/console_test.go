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
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for the writer goroutine and the test.
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

// TestSlowConsoleNeverBlocks: a console that does not read (a serial line
// at 115200 baud, or a stuck one) never holds up the writer; what did not
// fit is counted and reported on the console once it drains.
func TestSlowConsoleNeverBlocks(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := New(w)
	start := time.Now()
	const lines = 3 * queueLines
	for i := range lines {
		fmt.Fprintf(c, "line %d %s\n", i, strings.Repeat("x", 100))
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("%d writes to a console nobody reads took %v", lines, d)
	}
	dropped := c.Dropped()["console"]
	if dropped == 0 || dropped >= lines {
		t.Fatalf("dropped %d of %d lines: want some dropped, some kept", dropped, lines)
	}
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		got <- string(b)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.Flush(ctx)
	fmt.Fprintln(c, "after the jam")
	c.Close(ctx)
	w.Close()
	out := <-got
	for _, want := range []string{"line 0 x", "lines dropped\n", "after the jam\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("console output lacks %q", want)
		}
	}
}

// TestOtherConsolesGetImportantLines: Discover opens the kernel's other
// active consoles; everything goes to /dev/console, the important lines to
// all of them.
func TestOtherConsolesGetImportantLines(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"sys/class/tty/console", "dev"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "sys/class/tty/console/active"), []byte("tty0 ttyS1\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"tty0", "ttyS1"} {
		if err := os.WriteFile(filepath.Join(root, "dev", n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	primary := &lockedBuffer{}
	c := New(primary)
	if got := c.Discover(root); strings.Join(got, " ") != "tty0 ttyS1" {
		t.Fatalf("Discover = %v, want tty0 ttyS1", got)
	}
	fmt.Fprintln(c, "routine line")
	fmt.Fprintln(c.Important(), "ballast: ready")
	fmt.Fprintln(c.ImportantExtrasOnly(), "level=ERROR msg=broken")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.Close(ctx)
	if p := primary.String(); p != "routine line\nballast: ready\n" {
		t.Errorf("/dev/console got %q", p)
	}
	for _, n := range []string{"tty0", "ttyS1"} {
		b, _ := os.ReadFile(filepath.Join(root, "dev", n))
		if string(b) != "ballast: ready\nlevel=ERROR msg=broken\n" {
			t.Errorf("%s got %q", n, b)
		}
	}
}
