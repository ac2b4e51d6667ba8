// Package logring keeps the node's recent log lines in memory, per service,
// for `nodectl logs`: the agent's own slog records (tee'd by Handler, the
// service taken from the "part" attribute) and lines written by the
// processes it supervises (Writer).
package logring

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Agent is the service name of the agent's records without a "part".
const Agent = "agent"

// Line is one log line.
type Line struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Service string    `json:"service"`
	Text    string    `json:"text"`
}

// Ring holds the last lines of every service.
type Ring struct {
	size int

	mu       sync.Mutex
	lines    []Line // circular, len ≤ size
	next     int
	seq      uint64
	services map[string]bool
	notify   chan struct{} // closed and replaced on every add
}

// New returns a ring keeping size lines in all.
func New(size int) *Ring {
	if size <= 0 {
		size = 10000
	}
	return &Ring{size: size, services: map[string]bool{}, notify: make(chan struct{})}
}

// Add stores one line of service's log.
func (r *Ring) Add(service, text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	l := Line{Seq: r.seq, Time: time.Now().UTC(), Service: service, Text: text}
	if len(r.lines) < r.size {
		r.lines = append(r.lines, l)
	} else {
		r.lines[r.next] = l
		r.next = (r.next + 1) % r.size
	}
	r.services[service] = true
	close(r.notify)
	r.notify = make(chan struct{})
}

// Services lists the services that logged.
func (r *Ring) Services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for s := range r.services {
		out = append(out, s)
	}
	return out
}

// Tail returns the last n lines of service ("" for all) after seq.
func (r *Ring) Tail(service string, n int, after uint64) []Line {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tail(service, n, after)
}

func (r *Ring) tail(service string, n int, after uint64) []Line {
	var out []Line
	for i := len(r.lines) - 1; i >= 0 && (n <= 0 || len(out) < n); i-- {
		l := r.lines[(r.next+i)%len(r.lines)]
		if l.Seq <= after {
			break
		}
		if service == "" || l.Service == service {
			out = append(out, l)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Follow sends the last n lines of service, then every new one, until ctx
// ends. A reader that falls more than the ring's size behind misses lines.
func (r *Ring) Follow(ctx context.Context, service string, n int, send func(Line) error) error {
	r.mu.Lock()
	lines, wake := r.tail(service, n, 0), r.notify
	last := r.seq
	r.mu.Unlock()
	for {
		for _, l := range lines {
			if err := send(l); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		}
		r.mu.Lock()
		lines, wake = r.tail(service, 0, last), r.notify
		last = r.seq
		r.mu.Unlock()
	}
}

// Writer returns an io.Writer storing each line written as service's.
func (r *Ring) Writer(service string) *Writer { return &Writer{r: r, service: service} }

// Writer splits what a process writes into lines.
type Writer struct {
	r       *Ring
	service string
	mu      sync.Mutex
	partial []byte
}

func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.r.Add(w.service, string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 64<<10 {
		w.r.Add(w.service, string(w.partial))
		w.partial = w.partial[:0]
	}
	return len(p), nil
}

// Handler tees next's records into the ring as text lines.
func (r *Ring) Handler(next slog.Handler) slog.Handler {
	return &handler{next: next, ring: r, service: Agent, text: slog.NewTextHandler(r.Writer(Agent), &slog.HandlerOptions{Level: slog.LevelDebug})}
}

type handler struct {
	next    slog.Handler
	ring    *Ring
	service string
	// ops replays WithAttrs/WithGroup on a fresh text handler when the service changes.
	ops  []func(slog.Handler) slog.Handler
	text slog.Handler
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, rec slog.Record) error {
	_ = h.text.Handle(ctx, rec)
	return h.next.Handle(ctx, rec)
}

func (h *handler) with(op func(slog.Handler) slog.Handler, service string) *handler {
	c := &handler{next: op(h.next), ring: h.ring, service: service, ops: append(h.ops[:len(h.ops):len(h.ops)], op)}
	if service == h.service {
		c.text = op(h.text)
		return c
	}
	c.text = slog.NewTextHandler(h.ring.Writer(service), &slog.HandlerOptions{Level: slog.LevelDebug})
	for _, o := range c.ops {
		c.text = o(c.text)
	}
	return c
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	service := h.service
	for _, a := range attrs {
		if a.Key == "part" {
			service = strings.ReplaceAll(a.Value.String(), " ", "-")
		}
	}
	return h.with(func(x slog.Handler) slog.Handler { return x.WithAttrs(attrs) }, service)
}

func (h *handler) WithGroup(name string) slog.Handler {
	return h.with(func(x slog.Handler) slog.Handler { return x.WithGroup(name) }, h.service)
}
