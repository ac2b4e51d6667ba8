package image

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Progress reports build stages: one line per finished stage with its
// duration, and a redrawn bar for the running stage when out is a terminal.
type Progress struct {
	out   io.Writer
	tty   bool
	total int

	mu    sync.Mutex
	n     int
	name  string
	start time.Time
	stop  chan struct{}
	done  chan struct{}
}

// NewProgress reports total stages to out. A nil out discards reports.
func NewProgress(out io.Writer, total int) *Progress {
	if out == nil {
		out = io.Discard
	}
	p := &Progress{out: out, total: total}
	if f, ok := out.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			p.tty = true
		}
	}
	return p
}

// Stage runs fn as the next stage. detail, if fn returns one, is printed
// after the duration.
func (p *Progress) Stage(name string, fn func() (detail string, err error)) error {
	p.begin(name)
	detail, err := fn()
	p.end(detail, err)
	return err
}

func (p *Progress) begin(name string) {
	p.mu.Lock()
	p.n++
	p.name, p.start = name, time.Now()
	p.mu.Unlock()
	if !p.tty {
		return
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go p.draw()
}

func (p *Progress) draw() {
	defer close(p.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		p.mu.Lock()
		const width = 20
		filled := width * (p.n - 1) / p.total
		bar := strings.Repeat("#", filled) + strings.Repeat("-", width-filled)
		fmt.Fprintf(p.out, "\r[%s] %d/%d %s %.1fs\033[K", bar, p.n, p.total, p.name, time.Since(p.start).Seconds())
		p.mu.Unlock()
		select {
		case <-p.stop:
			fmt.Fprint(p.out, "\r\033[K")
			return
		case <-t.C:
		}
	}
}

func (p *Progress) end(detail string, err error) {
	if p.tty {
		close(p.stop)
		<-p.done
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	status := detail
	if err != nil {
		status = "FAILED"
	}
	fmt.Fprintf(p.out, "[%d/%d] %-10s %6.2fs  %s\n", p.n, p.total, p.name, time.Since(p.start).Seconds(), status)
}
