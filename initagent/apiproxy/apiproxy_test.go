package apiproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// fastChecks keeps the tests short; the logic is the same as with the
// defaults. The timeout stays generous: a check that times out on a loaded
// machine would change the backend states the tests wait for.
func fastChecks(cfg Config) Config {
	cfg.CheckInterval = 500 * time.Millisecond
	cfg.CheckTimeout = 450 * time.Millisecond
	cfg.KeepAlive = time.Second
	cfg.UserTimeout = 5 * time.Second
	if os.Getenv("APIPROXY_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func addrs(bs ...*testBackend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.addr)
	}
	return out
}

// startProxy runs a proxy until the test ends and returns it with its first
// frontend.
func startProxy(t *testing.T, cfg Config) (*Proxy, string) {
	t.Helper()
	if cfg.Frontends == nil {
		cfg.Frontends = []string{freeAddr(t)}
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "frontends listening", func() bool {
		for _, f := range p.Status().Frontends {
			if !f.Listening {
				return false
			}
		}
		return true
	})
	return p, cfg.Frontends[0]
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func backendState(p *Proxy, addr string) string {
	for _, b := range p.Status().Backends {
		if b.Addr == addr {
			return b.State
		}
	}
	return ""
}

func waitState(t *testing.T, p *Proxy, b *testBackend, state string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("backend %s %s", b.name, state), func() bool { return backendState(p, b.addr) == state })
}

// connectLoop connects through the proxy until stop is closed, counting
// the backends that answered and the failed connections.
type connectLoop struct {
	mu     sync.Mutex
	byName map[string]int
	fails  []error
	stop   chan struct{}
	done   chan struct{}
}

func startConnectLoop(addr string) *connectLoop {
	l := &connectLoop{byName: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			cl, name, err := dialID(addr)
			if err == nil {
				err = cl.echo("ping")
				cl.c.Close()
			}
			l.mu.Lock()
			if err != nil {
				l.fails = append(l.fails, err)
			} else {
				l.byName[name]++
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *connectLoop) halt() {
	close(l.stop)
	<-l.done
}

// snapshot returns and resets the counts.
func (l *connectLoop) snapshot() (map[string]int, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	by, fails := l.byName, l.fails
	l.byName, l.fails = map[string]int{}, nil
	return by, fails
}

func TestFailover(t *testing.T) {
	pki := newPKI(t)
	b1, b2, b3 := startBackend(t, "b1", pki), startBackend(t, "b2", pki), startBackend(t, "b3", pki)
	p, front := startProxy(t, fastChecks(Config{Backends: addrs(b1, b2, b3), PinnedSPKI: []string{pki.pin}}))
	for _, b := range []*testBackend{b1, b2, b3} {
		waitState(t, p, b, StateUp)
	}

	// Long-lived connections, one per survivor.
	long := map[string]*client{}
	waitFor(t, "long-lived connections to b2 and b3", func() bool {
		cl, name, err := dialID(front)
		if err != nil {
			t.Fatal(err)
		}
		if name == "b1" || long[name] != nil {
			cl.c.Close()
		} else {
			long[name] = cl
		}
		return len(long) == 2
	})
	defer func() {
		for _, cl := range long {
			cl.c.Close()
		}
	}()

	loop := startConnectLoop(front)
	waitFor(t, "traffic on all backends", func() bool {
		loop.mu.Lock()
		defer loop.mu.Unlock()
		return loop.byName["b1"] > 0 && loop.byName["b2"] > 0 && loop.byName["b3"] > 0
	})
	// No connection may be in flight to b1 when it dies: those would
	// break by design. Every connection opened after the kill must work.
	loop.halt()
	if _, fails := loop.snapshot(); len(fails) > 0 {
		t.Fatalf("connections failed before the kill: %v", fails)
	}
	b1.kill()
	loop = startConnectLoop(front)
	waitState(t, p, b1, StateDown)
	_, fails := loop.snapshot()
	if len(fails) > 0 {
		t.Errorf("%d connections failed while b1 was being detected, first: %v", len(fails), fails[0])
	}
	// After detection: nothing reaches b1, nothing fails.
	waitFor(t, "100 connections after detection", func() bool {
		loop.mu.Lock()
		defer loop.mu.Unlock()
		return loop.byName["b2"]+loop.byName["b3"] >= 100
	})
	by, fails := loop.snapshot()
	if len(fails) > 0 || by["b1"] > 0 {
		t.Errorf("after b1 was marked down: %d failures (%v), %d connections to b1", len(fails), fails, by["b1"])
	}
	for name, cl := range long {
		if err := cl.echo("still there"); err != nil {
			t.Errorf("long-lived connection to %s: %v", name, err)
		}
	}

	b1.start()
	waitState(t, p, b1, StateUp)
	waitFor(t, "connections to b1 again", func() bool {
		loop.mu.Lock()
		defer loop.mu.Unlock()
		return loop.byName["b1"] > 0
	})
	loop.halt()
	if _, fails := loop.snapshot(); len(fails) > 0 {
		t.Errorf("%d connections failed after b1 came back, first: %v", len(fails), fails[0])
	}

	var metrics strings.Builder
	if err := p.WriteMetrics(&metrics); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`ballast_apiproxy_healthy_backends 3`,
		fmt.Sprintf(`ballast_apiproxy_backend_up{backend=%q} 1`, b1.addr),
		`# TYPE ballast_apiproxy_connections_accepted_total counter`,
		fmt.Sprintf(`ballast_apiproxy_connections_failed_total{frontend=%q} 0`, front),
	} {
		if !strings.Contains(metrics.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, metrics.String())
		}
	}
	st := p.Status()
	if st.Backends[0].ConnectFails == 0 && st.Backends[0].ChecksFailed == 0 {
		t.Errorf("b1 status counts no failure: %+v", st.Backends[0])
	}
}

func TestHealthExport(t *testing.T) {
	pki := newPKI(t)
	b1, b2 := startBackend(t, "b1", pki), startBackend(t, "b2", pki)
	p, err := New(fastChecks(Config{Frontends: []string{freeAddr(t)}, Backends: addrs(b1, b2), PinnedSPKI: []string{pki.pin}}))
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan bool, 100)
	p.OnHealth(func(h bool) { events <- h })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	next := func(want bool) {
		t.Helper()
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("health event = %v, want %v", got, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no health event (want %v)", want)
		}
	}
	next(false) // the value at subscription
	next(true)
	waitState(t, p, b1, StateUp)
	waitState(t, p, b2, StateUp)

	b1.kill()
	waitState(t, p, b1, StateDown)
	if !p.Healthy() {
		t.Error("Healthy() = false with b2 up")
	}
	b2.kill()
	next(false)
	if p.Healthy() {
		t.Error("Healthy() = true with every backend down")
	}
	b2.start()
	next(true)
	b2.kill()
	next(false)
	b1.start()
	next(true)
	select {
	case h := <-events:
		t.Errorf("extra health event %v", h)
	case <-time.After(3 * p.cfg.CheckInterval):
	}
}

func TestDrain(t *testing.T) {
	pki := newPKI(t)
	for _, tc := range []struct {
		name    string
		timeout time.Duration
	}{
		{"until closed", time.Hour},
		{"until timeout", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b1, b2 := startBackend(t, "b1", pki), startBackend(t, "b2", pki)
			cfg := fastChecks(Config{Backends: addrs(b1, b2), PinnedSPKI: []string{pki.pin}, DrainTimeout: tc.timeout})
			p, front := startProxy(t, cfg)
			waitState(t, p, b1, StateUp)
			waitState(t, p, b2, StateUp)
			var cl *client
			waitFor(t, "a connection to b1", func() bool {
				c, name, err := dialID(front)
				if err != nil {
					t.Fatal(err)
				}
				if name != "b1" {
					c.c.Close()
					return false
				}
				cl = c
				return true
			})
			defer cl.c.Close()

			p.SetBackends([]string{b2.addr})
			if got := backendState(p, b1.addr); got != StateDraining {
				t.Fatalf("removed backend state = %q, want %q", got, StateDraining)
			}
			for range 10 {
				c, name, err := dialID(front)
				if err != nil {
					t.Fatal(err)
				}
				c.c.Close()
				if name != "b2" {
					t.Fatalf("new connection went to removed backend %s", name)
				}
			}
			if tc.timeout == time.Hour {
				time.Sleep(3 * cfg.CheckInterval) // several check rounds: nothing may touch it
				if err := cl.echo("draining"); err != nil {
					t.Fatalf("connection to the draining backend: %v", err)
				}
				cl.c.Close()
			} else if err := cl.waitClosed(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "b1 drained", func() bool { return backendState(p, b1.addr) == "" })
		})
	}
}

func TestMaxConns(t *testing.T) {
	pki := newPKI(t)
	b1 := startBackend(t, "b1", pki)
	p, front := startProxy(t, fastChecks(Config{Backends: addrs(b1), PinnedSPKI: []string{pki.pin}, MaxConns: 2}))
	waitState(t, p, b1, StateUp)
	var open []*client
	for range 2 {
		cl, _, err := dialID(front)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, cl)
	}
	if _, _, err := dialID(front); err == nil {
		t.Fatal("third connection with MaxConns 2 was proxied")
	}
	if got := p.Status().Frontends[0].Refused; got != 1 {
		t.Errorf("refused = %d, want 1", got)
	}
	open[0].c.Close()
	waitFor(t, "one connection closed", func() bool { return p.Status().ActiveConns == 1 })
	cl, _, err := dialID(front)
	if err != nil {
		t.Fatalf("connection after one closed: %v", err)
	}
	cl.c.Close()
	open[1].c.Close()
}

func TestLeastConn(t *testing.T) {
	pki := newPKI(t)
	b1, b2 := startBackend(t, "b1", pki), startBackend(t, "b2", pki)
	p, front := startProxy(t, fastChecks(Config{Backends: addrs(b1, b2), PinnedSPKI: []string{pki.pin}, Balance: LeastConn}))
	waitState(t, p, b1, StateUp)
	waitState(t, p, b2, StateUp)
	conns := map[string][]*client{}
	defer func() {
		for _, cs := range conns {
			for _, c := range cs {
				c.c.Close()
			}
		}
	}()
	open := func() string {
		t.Helper()
		cl, name, err := dialID(front)
		if err != nil {
			t.Fatal(err)
		}
		conns[name] = append(conns[name], cl)
		return name
	}
	for range 6 {
		open()
		if d := len(conns["b1"]) - len(conns["b2"]); d < -1 || d > 1 {
			t.Fatalf("unbalanced: b1 %d, b2 %d connections", len(conns["b1"]), len(conns["b2"]))
		}
	}
	// Free two slots on b1: the next two connections must both go there,
	// where round robin would alternate.
	for _, c := range conns["b1"][:2] {
		c.c.Close()
	}
	conns["b1"] = conns["b1"][2:]
	waitFor(t, "b1 connections closed", func() bool {
		for _, b := range p.Status().Backends {
			if b.Addr == b1.addr {
				return b.ActiveConns == 1
			}
		}
		return false
	})
	if a, b := open(), open(); a != "b1" || b != "b1" {
		t.Errorf("with b1 at 1 and b2 at 3 connections, least-conn picked %s then %s, want b1 twice", a, b)
	}
}

func TestHalfClose(t *testing.T) {
	pki := newPKI(t)
	b1 := startBackend(t, "b1", pki)
	p, front := startProxy(t, fastChecks(Config{Backends: addrs(b1), PinnedSPKI: []string{pki.pin}}))
	waitState(t, p, b1, StateUp)
	msg := strings.Repeat("half-close ", 100000) // larger than the socket buffers

	t.Run("client closes first", func(t *testing.T) {
		// The backend answers only after it saw our FIN, so the answer
		// arrives only if the proxy passed the FIN on and kept the other
		// direction open.
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, "C"+msg); err != nil {
			t.Fatal(err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprint(len(msg)); string(got) != want {
			t.Fatalf("backend counted %q bytes, want %s", got, want)
		}
	})

	t.Run("echo both ways", func(t *testing.T) {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		go func() {
			io.WriteString(c, "E"+msg)
			c.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(c) // ends only if the backend saw our FIN and sent its own
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != msg {
			t.Fatalf("echo after half-close: got %d bytes, want %d", len(got), len(msg))
		}
	})
	waitFor(t, "byte counters", func() bool {
		b := p.Status().Backends[0]
		return b.BytesToBackend == 2*uint64(len(msg)+1) && b.BytesToClient == uint64(len(msg)+len(fmt.Sprint(len(msg))))
	})
}

// TestIPv6Backend relays to a backend on an IPv6 address (an IPv6-only
// control plane) from an IPv4 and an IPv6 frontend.
func TestIPv6Backend(t *testing.T) {
	pki := newPKI(t)
	b6 := startBackendAt(t, "b6", pki, "[::1]:0")
	front6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	front6Addr := front6.Addr().String()
	front6.Close()
	p, front4 := startProxy(t, fastChecks(Config{
		Frontends:  []string{freeAddr(t), front6Addr},
		Backends:   addrs(b6),
		PinnedSPKI: []string{pki.pin},
	}))
	waitState(t, p, b6, StateUp)
	for _, front := range []string{front4, front6Addr} {
		cl, name, err := dialID(front)
		if err != nil {
			t.Fatalf("through %s: %v", front, err)
		}
		if name != "b6" {
			t.Errorf("through %s: answered by %q, want b6", front, name)
		}
		if err := cl.echo("over IPv6"); err != nil {
			t.Errorf("through %s: %v", front, err)
		}
		cl.c.Close()
	}
}

func TestChecks(t *testing.T) {
	pki := newPKI(t)
	other := newPKI(t)
	for _, tc := range []struct {
		name   string
		cfg    Config
		up     bool
		errHas string
	}{
		{"pinned key", Config{PinnedSPKI: []string{pki.pin}}, true, ""},
		{"wrong pin", Config{PinnedSPKI: []string{other.pin}}, false, "PinnedSPKI"},
		{"cluster CA", Config{RootCAs: pki.pool}, true, ""},
		{"other CA", Config{RootCAs: other.pool}, false, "certificate"},
		{"CA and name", Config{RootCAs: pki.pool, CheckServerName: "kubernetes"}, true, ""},
		{"insecure until CA", Config{InsecureUntilCA: true}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBackend(t, "b", pki)
			tc.cfg.Backends = []string{b.addr}
			p, _ := startProxy(t, fastChecks(tc.cfg))
			if tc.up {
				waitState(t, p, b, StateUp)
				return
			}
			waitFor(t, "a check failing with "+tc.errHas, func() bool {
				s := p.Status().Backends[0]
				return s.ChecksFailed >= 2 && strings.Contains(s.LastCheck.Error, tc.errHas)
			})
			if s := p.Status().Backends[0]; s.ChecksOK > 0 || s.State != StateDown {
				t.Errorf("%d checks passed, state %s; want none, down", s.ChecksOK, s.State)
			}
		})
	}

	t.Run("readyz 500", func(t *testing.T) {
		b := startBackend(t, "b", pki)
		p, _ := startProxy(t, fastChecks(Config{Backends: []string{b.addr}, PinnedSPKI: []string{pki.pin}, Fall: 3}))
		waitState(t, p, b, StateUp)
		b.readyStatus.Store(http.StatusInternalServerError)
		waitState(t, p, b, StateDown)
		s := p.Status().Backends[0]
		if !strings.Contains(s.LastCheck.Error, "500") {
			t.Errorf("last check error %q lacks the status", s.LastCheck.Error)
		}
		if s.ChecksFailed < 3 {
			t.Errorf("marked down after %d failed checks, want Fall = 3", s.ChecksFailed)
		}
		b.readyStatus.Store(http.StatusOK)
		waitState(t, p, b, StateUp)
	})

	t.Run("SetRootCAs", func(t *testing.T) {
		b := startBackend(t, "b", pki)
		p, _ := startProxy(t, fastChecks(Config{Backends: []string{b.addr}, PinnedSPKI: []string{pki.pin}}))
		waitState(t, p, b, StateUp)
		p.SetRootCAs(other.pool) // the CA now wins over the pin, and it does not match
		waitState(t, p, b, StateDown)
		p.SetRootCAs(pki.pool)
		waitState(t, p, b, StateUp)
	})
}

func TestAddBackendWhileRunning(t *testing.T) {
	pki := newPKI(t)
	b1, b2 := startBackend(t, "b1", pki), startBackend(t, "b2", pki)
	p, front := startProxy(t, fastChecks(Config{Backends: addrs(b1), PinnedSPKI: []string{pki.pin}}))
	waitState(t, p, b1, StateUp)
	if err := p.AddBackend(b2.addr); err != nil {
		t.Fatal(err)
	}
	if err := p.AddBackend("no-port"); err == nil {
		t.Error("AddBackend accepted an address without port")
	}
	waitState(t, p, b2, StateUp)
	seen := map[string]bool{}
	waitFor(t, "both backends used", func() bool {
		cl, name, err := dialID(front)
		if err != nil {
			t.Fatal(err)
		}
		cl.c.Close()
		seen[name] = true
		return seen["b1"] && seen["b2"]
	})
}

// TestNoBackendUp: when every check fails but the port accepts, connections
// are still tried rather than refused.
func TestNoBackendUp(t *testing.T) {
	pki := newPKI(t)
	b1 := startBackend(t, "b1", pki)
	b1.readyStatus.Store(http.StatusServiceUnavailable)
	p, front := startProxy(t, fastChecks(Config{Backends: addrs(b1), PinnedSPKI: []string{pki.pin}}))
	waitFor(t, "a failed check", func() bool { return p.Status().Backends[0].ChecksFailed > 0 })
	cl, _, err := dialID(front)
	if err != nil {
		t.Fatalf("connection with no backend up: %v", err)
	}
	cl.c.Close()

	b1.kill()
	if _, _, err := dialID(front); err == nil {
		t.Fatal("connection succeeded with the only backend dead")
	}
	waitFor(t, "failed counter", func() bool { return p.Status().Frontends[0].Failed == 1 })
}

func TestShutdown(t *testing.T) {
	pki := newPKI(t)
	b1 := startBackend(t, "b1", pki)
	p, err := New(fastChecks(Config{Frontends: []string{freeAddr(t)}, Backends: addrs(b1), PinnedSPKI: []string{pki.pin}, ShutdownGrace: 200 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	waitFor(t, "b1 up", func() bool { return backendState(p, b1.addr) == StateUp })
	cl, _, err := dialID(p.cfg.Frontends[0])
	if err != nil {
		t.Fatal(err)
	}
	defer cl.c.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the grace period")
	}
	if err := cl.waitClosed(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", p.cfg.Frontends[0]); err == nil {
		t.Error("frontend still accepts after Run returned")
	}
	if err := p.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

// TestFreebind binds a VIP frontend before the address exists, as on a
// control-plane node that does not hold the VIP yet.
func TestFreebind(t *testing.T) {
	h := nstest.Handle(t)
	pki := newPKI(t)
	b1 := startBackend(t, "b1", pki)
	const vip = "10.99.0.1"
	p, front := startProxy(t, fastChecks(Config{Frontends: []string{vip + ":6443"}, Backends: addrs(b1), PinnedSPKI: []string{pki.pin}}))
	waitState(t, p, b1, StateUp)

	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(vip + "/32")
	if err := h.AddrAdd(lo, addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.AddrDel(lo, addr) })
	cl, name, err := dialID(front)
	if err != nil {
		t.Fatalf("connect to the VIP after it was added: %v", err)
	}
	defer cl.c.Close()
	if name != "b1" {
		t.Errorf("backend = %q", name)
	}
}

// TestSocketOptions checks that accepted sockets inherit TCP_NODELAY,
// keepalive and TCP_USER_TIMEOUT from the listening socket, which the proxy
// relies on: it sets none of them per connection.
func TestSocketOptions(t *testing.T) {
	p, err := New(Config{InsecureUntilCA: true, KeepAlive: 7 * time.Second, UserTimeout: 9 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	lfd, err := p.listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := unix.Poll([]unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}, 30000); err != nil {
		t.Fatal(err)
	}
	fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 7},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 7},
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 9000},
	} {
		if got, err := unix.GetsockoptInt(fd, o.level, o.opt); err != nil || got != o.want {
			t.Errorf("accepted socket %s = %d (%v), want %d", o.name, got, err, o.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	pin := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"no trust", Config{}, "RootCAs"},
		{"frontend without port", Config{InsecureUntilCA: true, Frontends: []string{"10.0.0.1"}}, "Frontends[0]"},
		{"frontend hostname", Config{InsecureUntilCA: true, Frontends: []string{"127.0.0.1:7445", "api:6443"}}, "Frontends[1]"},
		{"frontend twice", Config{InsecureUntilCA: true, Frontends: []string{"127.0.0.1:7445", "127.0.0.1:7445"}}, "Frontends[1]"},
		{"backend without port", Config{InsecureUntilCA: true, Backends: []string{"10.0.0.1"}}, "Backends[0]"},
		{"backend port", Config{InsecureUntilCA: true, Backends: []string{"10.0.0.1:http"}}, "Backends[0]"},
		{"short pin", Config{PinnedSPKI: []string{"abcd"}}, "PinnedSPKI[0]"},
		{"timeout over interval", Config{PinnedSPKI: []string{pin}, CheckInterval: time.Second, CheckTimeout: time.Second}, "CheckTimeout"},
		{"balance", Config{PinnedSPKI: []string{pin}, Balance: "random"}, "Balance"},
		{"fall", Config{PinnedSPKI: []string{pin}, Fall: -1}, "Fall"},
		{"drain", Config{PinnedSPKI: []string{pin}, DrainTimeout: -time.Second}, "DrainTimeout"},
		{"max conns", Config{PinnedSPKI: []string{pin}, MaxConns: -1}, "MaxConns"},
		{"keepalive", Config{PinnedSPKI: []string{pin}, KeepAlive: time.Millisecond}, "KeepAlive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("New = %v, want an ErrConfig naming %s", err, tc.field)
			}
		})
	}
	p, err := New(Config{PinnedSPKI: []string{pin}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.DetectionTime(), 2750*time.Millisecond; got != want {
		t.Errorf("DetectionTime with defaults = %v, want %v", got, want)
	}
	if !slices.Equal(p.cfg.Frontends, []string{"127.0.0.1:7445"}) {
		t.Errorf("default frontends = %v", p.cfg.Frontends)
	}
}

func TestRunBindError(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Frontends: []string{busy.Addr().String()}, InsecureUntilCA: true})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("Run with the frontend taken = %v, want an error naming it", err)
	}
	busy.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	waitFor(t, "frontend listening", func() bool { return p.Status().Frontends[0].Listening })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("second Run = %v", err)
	}
}

// TestBackendSocketOptions checks that a backend connection that lasts
// gets keepalive and TCP_USER_TIMEOUT (lateSockopts), over the raw dial
// path (an IP backend) and the net.Dialer one (a host name).
func TestBackendSocketOptions(t *testing.T) {
	pki := newPKI(t)
	b1 := startBackend(t, "b1", pki)
	_, port, _ := net.SplitHostPort(b1.addr)
	for _, addr := range []string{b1.addr, net.JoinHostPort("localhost", port)} {
		t.Run(addr, func(t *testing.T) {
			cfg := fastChecks(Config{Backends: []string{addr}, PinnedSPKI: []string{pki.pin}, CheckServerName: "127.0.0.1"})
			cfg.KeepAlive, cfg.UserTimeout = 3*time.Second, 7*time.Second
			p, front := startProxy(t, cfg)
			waitFor(t, "backend up", func() bool { return p.Healthy() })
			c, err := net.Dial("tcp", front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, 5)
			if _, err := io.WriteString(c, "Ehello"); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
				t.Fatalf("echo: %q, %v", buf, err)
			}
			opts := []struct {
				name       string
				level, opt int
				want       int
			}{
				{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
				{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 3},
				{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 3},
				{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 7000},
				{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
			}
			var got string
			waitFor(t, "backend socket options", func() bool {
				p.connMu.Lock()
				var pcs []*proxyConn
				for pc := range p.conns {
					pcs = append(pcs, pc)
				}
				p.connMu.Unlock()
				for _, pc := range pcs {
					got = "closed"
					pc.l.do(func() {
						if pc.sfd < 0 {
							return
						}
						got = ""
						for _, o := range opts {
							if v, err := unix.GetsockoptInt(pc.sfd, o.level, o.opt); err != nil || v != o.want {
								got += fmt.Sprintf(" %s=%d (%v, want %d)", o.name, v, err, o.want)
							}
						}
					})
					return got == ""
				}
				return false
			})
		})
	}
}
