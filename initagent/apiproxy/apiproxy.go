// Package apiproxy is the node's L4 load balancer in front of the
// kube-apiservers: it listens on VIP:6443 on control-plane nodes and on
// 127.0.0.1:7445 on every node, health-checks the apiservers with HTTPS
// GET /readyz and splices client connections to a healthy one.
//
// Usage:
//
//	p, err := apiproxy.New(apiproxy.Config{
//		Frontends:  []string{"10.0.0.10:6443", "127.0.0.1:7445"},
//		Backends:   []string{"10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"},
//		PinnedSPKI: []string{"9f86d081884c7d65…"}, // until the cluster CA is known
//	})
//	if err != nil { ... }
//	p.OnHealth(vipSpeaker.SetProxyHealthy) // see Timing below
//	go p.Run(ctx)
//	p.AddBackend("10.0.0.14:6443") // a control-plane node learned at run time
//	p.SetRootCAs(clusterCA)
//
// # Timing
//
// With the defaults (CheckInterval 1s, CheckTimeout 750ms, Fall 2, Rise 1) a
// dead backend stops receiving new connections:
//   - at once, when a connect to it fails (refused, unreachable, or
//     DialTimeout): the backend is marked down and the connection is retried
//     on another backend, so the client does not see the failure;
//   - otherwise after Fall failed checks: at most Fall×CheckInterval +
//     CheckTimeout = 2.75s after it stopped answering (2s when it refuses
//     connections, as a killed apiserver does). DetectionTime returns this
//     bound.
//
// The VIP speaker only sees the aggregate signal (Healthy / OnHealth: "at
// least one backend is up"), which turns false no later than DetectionTime
// after the last backend died. The speaker must therefore wait longer than
// DetectionTime before it gives the VIP up, or the VIP would flap while this
// proxy is still switching to a surviving backend.
package apiproxy

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Balance algorithms.
const (
	RoundRobin = "round-robin"
	LeastConn  = "least-conn"
)

// Config configures a Proxy. Every field's zero value has a usable default,
// except that the health checks need a way to authenticate the apiservers:
// RootCAs, PinnedSPKI or InsecureUntilCA.
type Config struct {
	// Logger receives the proxy's logs. Default: discard.
	Logger *slog.Logger
	// Frontends are the ip:port addresses to listen on, bound with
	// IP_FREEBIND so a VIP can be listened on before this node holds it.
	// Default: 127.0.0.1:7445.
	Frontends []string
	// Backends are the apiservers as host:port. More can be added while
	// running with SetBackends and AddBackend. Default: none.
	Backends []string
	// RootCAs verifies the apiservers' serving certificates in health
	// checks (the cluster CA). Can be set later with SetRootCAs.
	RootCAs *x509.CertPool
	// CheckServerName is the name verified against the serving certificate
	// when RootCAs is set. Default: the backend's host.
	CheckServerName string
	// PinnedSPKI are hex SHA-256 digests of the apiservers' public keys
	// (SubjectPublicKeyInfo), accepted in health checks while RootCAs is
	// nil, e.g. `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
	PinnedSPKI []string
	// InsecureUntilCA lets health checks accept any certificate while
	// RootCAs is nil and PinnedSPKI is empty. Default: false.
	InsecureUntilCA bool
	// CheckInterval is the time between health checks of one backend.
	// Default: 1s.
	CheckInterval time.Duration
	// CheckTimeout bounds one health check; it must be shorter than
	// CheckInterval. Default: 3/4 of CheckInterval.
	CheckTimeout time.Duration
	// Fall is the number of consecutive failed checks that mark a backend
	// down. Default: 2.
	Fall int
	// Rise is the number of consecutive passed checks that mark a backend
	// up. Default: 1.
	Rise int
	// Balance is RoundRobin or LeastConn. Default: RoundRobin.
	Balance string
	// DrainTimeout is how long connections to a removed backend may stay
	// open. Default: 5m.
	DrainTimeout time.Duration
	// DialTimeout bounds a connect to a backend. Default: 2s.
	DialTimeout time.Duration
	// UserTimeout is TCP_USER_TIMEOUT on both sides: how long sent data
	// may stay unacknowledged before the connection is dropped.
	// Default: 30s. Negative leaves the kernel default.
	UserTimeout time.Duration
	// KeepAlive is the TCP keepalive idle time and probe interval on both
	// sides; UserTimeout ends a connection whose probes go unanswered (3
	// probes when UserTimeout is negative). Default: 15s. Negative disables
	// keepalives. Client sockets inherit both options from the listening
	// socket; backend sockets get them once the connection has lasted 1–2s,
	// which spares the many short connections four system calls.
	KeepAlive time.Duration
	// MaxConns bounds the open client connections over all frontends;
	// connections beyond it are closed at once and counted as refused.
	// Default: 10000.
	MaxConns int
	// ShutdownGrace is how long Run waits for open connections to end
	// after its context is cancelled before it closes them. Default: 5s.
	ShutdownGrace time.Duration
}

// ErrConfig is wrapped by every validation error New returns.
var ErrConfig = errors.New("invalid apiproxy config")

func configErr(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, args...))
}

// Proxy is the API proxy. Create it with New, run it with Run.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	pins      [][32]byte
	roots     atomic.Pointer[x509.CertPool]
	fronts    []*frontend
	leastConn bool

	mu       sync.Mutex
	backends []*backend            // the current set, in the order given
	draining map[*backend]struct{} // removed, waiting for their connections to end
	runCtx   context.Context       // nil until Run starts, done once it stops
	stopping bool                  // set when Run stops: start no more goroutines
	started  bool
	wg       sync.WaitGroup // checks and drains, started under mu

	up      atomic.Pointer[[]*backend] // the backends that are up, in set order
	all     atomic.Pointer[[]*backend] // the current set, tried when none is up
	healthy atomic.Bool
	rr      atomic.Uint64

	pipes    pipePool
	active   atomic.Int64 // open client connections
	connMu   sync.Mutex
	conns    map[*proxyConn]struct{}
	fresh    []*proxyConn // registered in the last second, for lateSockopts
	lateOpts bool         // KeepAlive or UserTimeout set

	localPorts portRange // backends on these ports are checked for a self-connect

	dialers sync.WaitGroup // net.Dialer for host name backends
	connWG  sync.WaitGroup // accepted connections not closed yet

	subMu sync.Mutex
	subs  []*subscriber
	wake  chan struct{}
}

type frontend struct {
	addr      string
	listening atomic.Bool
	accepted  atomic.Uint64
	refused   atomic.Uint64 // over MaxConns
	failed    atomic.Uint64 // no backend could be reached
}

// New validates cfg and builds the proxy; it does not bind any socket.
func New(cfg Config) (*Proxy, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Frontends) == 0 {
		cfg.Frontends = []string{"127.0.0.1:7445"}
	}
	seen := map[netip.AddrPort]bool{}
	for i, f := range cfg.Frontends {
		ap, err := netip.ParseAddrPort(f)
		if err != nil || ap.Port() == 0 {
			return nil, configErr(fmt.Sprintf("Frontends[%d]", i), "%q is not ip:port with a nonzero port, e.g. 127.0.0.1:7445 or 10.0.0.10:6443", f)
		}
		if seen[ap] {
			return nil, configErr(fmt.Sprintf("Frontends[%d]", i), "%q is listed twice", f)
		}
		seen[ap] = true
	}
	for i, b := range cfg.Backends {
		if err := checkBackendAddr(b); err != nil {
			return nil, configErr(fmt.Sprintf("Backends[%d]", i), "%v", err)
		}
	}
	var pins [][32]byte
	for i, s := range cfg.PinnedSPKI {
		raw, err := hex.DecodeString(s)
		if err != nil || len(raw) != 32 {
			return nil, configErr(fmt.Sprintf("PinnedSPKI[%d]", i), "%q is not a hex SHA-256 digest (64 hex digits) of a SubjectPublicKeyInfo", s)
		}
		pins = append(pins, [32]byte(raw))
	}
	if cfg.RootCAs == nil && len(pins) == 0 && !cfg.InsecureUntilCA {
		return nil, configErr("RootCAs", "health checks cannot authenticate the apiservers: set RootCAs (cluster CA) or PinnedSPKI, or InsecureUntilCA to accept any certificate until SetRootCAs is called")
	}
	if cfg.CheckInterval < 0 {
		return nil, configErr("CheckInterval", "%v is negative; use e.g. 1s", cfg.CheckInterval)
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = time.Second
	}
	if cfg.CheckTimeout < 0 {
		return nil, configErr("CheckTimeout", "%v is negative; use e.g. 750ms", cfg.CheckTimeout)
	}
	if cfg.CheckTimeout == 0 {
		cfg.CheckTimeout = cfg.CheckInterval * 3 / 4
	}
	if cfg.CheckTimeout >= cfg.CheckInterval {
		return nil, configErr("CheckTimeout", "%v must be shorter than CheckInterval (%v), or checks would overlap", cfg.CheckTimeout, cfg.CheckInterval)
	}
	if cfg.Fall < 0 || cfg.Rise < 0 {
		return nil, configErr("Fall/Rise", "must be positive (got Fall %d, Rise %d)", cfg.Fall, cfg.Rise)
	}
	if cfg.Fall == 0 {
		cfg.Fall = 2
	}
	if cfg.Rise == 0 {
		cfg.Rise = 1
	}
	switch cfg.Balance {
	case "":
		cfg.Balance = RoundRobin
	case RoundRobin, LeastConn:
	default:
		return nil, configErr("Balance", "%q is unknown; use %q or %q", cfg.Balance, RoundRobin, LeastConn)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"DrainTimeout", &cfg.DrainTimeout, 5 * time.Minute},
		{"DialTimeout", &cfg.DialTimeout, 2 * time.Second},
		{"ShutdownGrace", &cfg.ShutdownGrace, 5 * time.Second},
	} {
		if *d.v < 0 {
			return nil, configErr(d.name, "%v is negative", *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.UserTimeout == 0 {
		cfg.UserTimeout = 30 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.KeepAlive > 0 && cfg.KeepAlive < time.Second {
		return nil, configErr("KeepAlive", "%v is below the kernel's 1s granularity", cfg.KeepAlive)
	}
	if cfg.MaxConns < 0 {
		return nil, configErr("MaxConns", "%d is negative", cfg.MaxConns)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 10000
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Logger,
		pins:      pins,
		leastConn: cfg.Balance == LeastConn,
		draining:  map[*backend]struct{}{},
		conns:     map[*proxyConn]struct{}{},
		wake:      make(chan struct{}, 1),
		pipes:     make(pipePool, 128),
		lateOpts:  cfg.KeepAlive > 0 || cfg.UserTimeout > 0,

		localPorts: readLocalPortRange(),
	}
	p.roots.Store(cfg.RootCAs)
	for _, f := range cfg.Frontends {
		p.fronts = append(p.fronts, &frontend{addr: f})
	}
	p.up.Store(&[]*backend{})
	p.all.Store(&[]*backend{})
	p.SetBackends(cfg.Backends)
	return p, nil
}

func checkBackendAddr(b string) error {
	host, port, err := net.SplitHostPort(b)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not host:port, e.g. 10.0.0.11:6443", b)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%q: port %q is not a number in 1-65535", b, port)
	}
	return nil
}

// DetectionTime is the longest time a backend that stopped answering keeps
// receiving new connections (when connects to it still succeed; a failed
// connect drops it at once): Fall×CheckInterval + CheckTimeout.
func (p *Proxy) DetectionTime() time.Duration {
	return time.Duration(p.cfg.Fall)*p.cfg.CheckInterval + p.cfg.CheckTimeout
}

// SetRootCAs sets the CA that health checks verify the apiservers with,
// replacing pinned keys and InsecureUntilCA from then on.
func (p *Proxy) SetRootCAs(pool *x509.CertPool) {
	if pool != nil {
		p.roots.Store(pool)
	}
}

// SetBackends replaces the backend set. Backends that stay keep their state
// and connections; new ones start down and are checked at once; removed
// ones drain: their open connections stay until they close or DrainTimeout
// passes. Invalid addresses are logged and skipped.
func (p *Proxy) SetBackends(addrs []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := map[string]*backend{}
	for _, b := range p.backends {
		old[b.addr] = b
	}
	var next []*backend
	for _, a := range addrs {
		if err := checkBackendAddr(a); err != nil {
			p.log.Warn("ignoring backend", "err", err)
			continue
		}
		if slices.ContainsFunc(next, func(b *backend) bool { return b.addr == a }) {
			continue
		}
		if b, ok := old[a]; ok {
			next = append(next, b)
			delete(old, a)
			continue
		}
		b := newBackend(a)
		next = append(next, b)
		p.startCheckLocked(b)
		p.log.Info("backend added", "backend", a)
	}
	p.backends = next
	for _, b := range old {
		p.drainLocked(b)
	}
	p.recomputeLocked()
}

// AddBackend adds one backend to the set, if it is not there yet.
func (p *Proxy) AddBackend(addr string) error {
	if err := checkBackendAddr(addr); err != nil {
		return fmt.Errorf("add backend: %w", err)
	}
	p.mu.Lock()
	addrs := make([]string, 0, len(p.backends)+1)
	for _, b := range p.backends {
		addrs = append(addrs, b.addr)
	}
	p.mu.Unlock()
	p.SetBackends(append(addrs, addr))
	return nil
}

// RemoveBackend removes one backend from the set; it drains.
func (p *Proxy) RemoveBackend(addr string) {
	p.mu.Lock()
	var addrs []string
	for _, b := range p.backends {
		if b.addr != addr {
			addrs = append(addrs, b.addr)
		}
	}
	p.mu.Unlock()
	p.SetBackends(addrs)
}

// Healthy reports whether at least one backend is up.
func (p *Proxy) Healthy() bool { return p.healthy.Load() }

// recomputeLocked rebuilds the up and all snapshots after a state or set
// change and publishes a change of the aggregate health.
func (p *Proxy) recomputeLocked() {
	up := make([]*backend, 0, len(p.backends))
	for _, b := range p.backends {
		if b.up {
			up = append(up, b)
		}
	}
	all := slices.Clone(p.backends)
	p.up.Store(&up)
	p.all.Store(&all)
	healthy := len(up) > 0
	if p.healthy.Swap(healthy) != healthy {
		p.log.Info("health changed", "healthy", healthy, "up", len(up), "backends", len(all))
		p.publish(healthy)
	}
}
