package vip

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// track is one health signal, shared by the routers that list it.
type track struct {
	cfg     TrackConfig
	routers []*router

	mu      sync.Mutex
	healthy bool
	reason  string
	changed time.Time
}

// routerTrack is a router's use of a track.
type routerTrack struct {
	t      *track
	weight uint8
	fault  bool
}

func newTrack(cfg TrackConfig) *track {
	return &track{cfg: cfg, reason: "no report yet", changed: time.Now()}
}

func (t *track) checked() bool { return t.cfg.HTTP != "" || t.cfg.TCP != "" }

func (t *track) get() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.healthy
}

// set records the track's health and wakes its routers when it changed.
func (t *track) set(healthy bool, reason string) {
	t.mu.Lock()
	changed := t.healthy != healthy
	t.reason = reason
	if changed {
		t.healthy = healthy
		t.changed = time.Now()
	}
	t.mu.Unlock()
	if changed {
		for _, r := range t.routers {
			r.poke()
		}
	}
}

func (t *track) status(weight uint8, fault bool) TrackStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	return TrackStatus{Name: t.cfg.Name, Healthy: t.healthy, Weight: weight, Fault: fault, Reason: t.reason, Changed: t.changed}
}

// run checks the track every Interval until ctx is cancelled. The first
// result decides the state; after that Fall failures in a row fail a
// healthy track and Rise successes heal a failed one.
func (t *track) run(ctx context.Context, log *slog.Logger) {
	log = log.With("track", t.cfg.Name)
	client := &http.Client{
		Timeout: t.cfg.Timeout,
		// A check follows no redirects: it asks one endpoint.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{DisableKeepAlives: true},
	}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	first := true
	streak := 0 // >0: successes in a row, <0: failures in a row
	for {
		err := t.check(ctx, client)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			streak = max(streak, 0) + 1
		} else {
			streak = min(streak, 0) - 1
		}
		healthy := t.get()
		switch {
		case first || (!healthy && streak >= t.cfg.Rise):
			if err == nil && !healthy {
				log.Info("track healthy")
			}
			if err != nil && (healthy || first) {
				log.Warn("track failed", "err", err)
			}
			t.set(err == nil, reason(err))
		case healthy && -streak >= t.cfg.Fall:
			log.Warn("track failed", "err", err)
			t.set(false, reason(err))
		}
		first = false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func reason(err error) string {
	if err != nil {
		return err.Error()
	}
	return "check passed"
}

func (t *track) check(ctx context.Context, client *http.Client) error {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	defer cancel()
	if t.cfg.TCP != "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", t.cfg.TCP)
		if err != nil {
			return err
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.cfg.HTTP, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s", t.cfg.HTTP, resp.Status)
	}
	return nil
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
