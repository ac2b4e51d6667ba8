package vip

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestHTTPTrackFallRise(t *testing.T) {
	var fail atomic.Bool
	var failures, successes atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if fail.Load() {
			failures.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		successes.Add(1)
	}))
	defer srv.Close()
	tc := TrackConfig{Name: "ingress", Weight: 50, HTTP: srv.URL + "/healthz", Interval: 10 * time.Millisecond, Fall: 3, Rise: 2}
	if err := normalizeTrack(&tc); err != nil {
		t.Fatal(err)
	}
	tr := newTrack(tc)
	if tr.get() {
		t.Fatal("a track is healthy before its first check")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { tr.run(ctx, discard()) })
	defer func() { cancel(); wg.Wait() }()

	waitFor(t, "the track to become healthy", tr.get)
	fail.Store(true)
	waitFor(t, "the track to fail", func() bool { return !tr.get() })
	if n := failures.Load(); n < 3 {
		t.Errorf("track failed after %d failed checks, want Fall=3", n)
	}
	if st := tr.status(50, false); st.Reason == "" || st.Healthy {
		t.Errorf("status %+v, want failed with a reason", st)
	}
	before := successes.Load()
	fail.Store(false)
	waitFor(t, "the track to recover", tr.get)
	if n := successes.Load() - before; n < 2 {
		t.Errorf("track recovered after %d good checks, want Rise=2", n)
	}
}

func TestTCPTrack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tc := TrackConfig{Name: "tcp", Fault: true, TCP: ln.Addr().String(), Interval: 10 * time.Millisecond, Fall: 1, Rise: 1}
	if err := normalizeTrack(&tc); err != nil {
		t.Fatal(err)
	}
	tr := newTrack(tc)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { tr.run(ctx, discard()) })
	defer func() { cancel(); wg.Wait() }()
	waitFor(t, "the TCP track to become healthy", tr.get)
	ln.Close()
	waitFor(t, "the TCP track to fail once the port is closed", func() bool { return !tr.get() })
}
