// Package dns is the node-local DNS server: it answers the cluster's own names
// (api, api-int, *.apps, node names, static hosts) authoritatively, forwards
// everything else to the upstreams from the machine config or DHCP, caches the
// answers and serves them stale (RFC 8767) when every upstream is down.
//
// It is a short handler chain in the style of CoreDNS, assembled once in New:
//
//	ratelimit → records → acl → cache → forward
//
// Usage:
//
//	srv, err := dns.New(dns.Config{
//		Listen:  []string{"127.0.0.53:53", "169.254.20.10:53"},
//		Records: dns.Records{Cluster: "prod", Domain: "example.com", APIVIPs: vips},
//		Upstreams: upstreams,
//		AllowedNets: podAndServiceNets,
//		NodeAddrs: addrs, // e.g. from HostAddrs
//	})
//	if err != nil { ... }
//	go srv.Run(ctx)
//	srv.SetUpstreams(fromDHCP) // no restart, no cache flush
//	srv.SetNodeAddrs(newAddrs) // when the node's addresses change
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// Config configures a Server. Every field's zero value has a usable default.
type Config struct {
	// Listen are the addr:port pairs served over both UDP and TCP.
	// Default: 127.0.0.53:53.
	Listen []string
	// Records are the names the server answers authoritatively.
	// Cluster and Domain are required.
	Records
	// Upstreams receive every query the records do not answer, tried in
	// order. Default: none (non-local names get SERVFAIL unless cached).
	Upstreams []netip.AddrPort
	// AllowedNets are the clients allowed to resolve non-local names
	// (forwarding and cache). Others only get the cluster's own names and
	// REFUSED for the rest, so the node is never an open resolver.
	// Default: loopback only (127.0.0.0/8, ::1/128). The NodeAddrs are
	// allowed too.
	AllowedNets []netip.Prefix
	// NodeAddrs are the node's own addresses. The node itself (these,
	// loopback and the listen addresses) may recurse and is never rate
	// limited: only pods and other clients are. Keep them current with
	// SetNodeAddrs.
	NodeAddrs []netip.Addr
	// MaxCacheEntries bounds the cache. Default: 10000. Negative disables
	// the cache (and serve-stale).
	MaxCacheEntries int
	// RateLimit limits queries per client address, except the node's own
	// (loopback, NodeAddrs, the listen addresses).
	// Default: 1000 qps with a burst of 2000.
	RateLimit RateLimit
	// Stubs send the names under a zone to servers of their own instead of
	// the Upstreams (the cluster's DNS Service for svc.<cluster domain>).
	// The most specific zone wins; the records are answered first.
	Stubs []Stub
	// UpstreamTimeout is the time one upstream gets to answer one query.
	// Default: 2s.
	UpstreamTimeout time.Duration
	// HealthInterval is how often an upstream marked down is probed.
	// Default: 1s.
	HealthInterval time.Duration
	// Log receives the server's logs. Default: discard.
	Log *slog.Logger

	// now is the clock of the cache (TTLs, serve-stale) and the rate
	// limiter; tests set it. Default: time.Now.
	now func() time.Time
}

// Stub is a zone forwarded to servers of its own.
type Stub struct {
	Zone    string // e.g. svc.cluster.local
	Servers []netip.AddrPort
}

// RateLimit is a per-client token bucket.
type RateLimit struct {
	// QPS is the sustained rate per client address. Zero means 1000;
	// negative disables rate limiting.
	QPS float64
	// Burst is the bucket size. Zero means 2×QPS.
	Burst int
}

// Errors returned by New.
var (
	ErrNoZone      = errors.New("cluster zone required: set Records.Cluster and Records.Domain (e.g. \"prod\" and \"example.com\")")
	ErrBadListen   = errors.New("invalid listen address: use addr:port, e.g. 127.0.0.53:53")
	ErrBadUpstream = errors.New("invalid upstream")
)

// Server is the node-local DNS server. Create it with New and run it with Run.
type Server struct {
	cfg   Config
	log   *slog.Logger
	chain Handler

	// The records and the ACL are read by every query and replaced whole,
	// so they are atomic pointers rather than behind a lock.
	rec     atomic.Pointer[recordSet]
	allowed atomic.Pointer[[]netip.Prefix]
	// own holds the node's addresses (NodeAddrs and the listen
	// addresses), never rate limited and allowed to recurse.
	own atomic.Pointer[map[netip.Addr]struct{}]

	cache   *cache
	fwd     *forwarder
	stubs   []stubZone // fixed at New, most specific zone first
	limiter *limiter

	baseCtx atomic.Pointer[context.Context]

	stats counters
}

type counters struct {
	queries, local, cacheHits, cacheMisses, stale, forwarded, refused, rateLimited, servfail atomic.Uint64
}

// Status is a snapshot of the server's state for the node API.
type Status struct {
	Upstreams    []UpstreamStatus
	CacheEntries int
	Queries      uint64 // every query received
	Local        uint64 // answered from the cluster records
	CacheHits    uint64 // answered from fresh cache entries
	CacheMisses  uint64
	Stale        uint64 // answered from expired entries because every upstream failed
	Forwarded    uint64 // answers that came from an upstream
	Refused      uint64 // non-local names asked by clients outside AllowedNets
	RateLimited  uint64
	ServFail     uint64
}

// UpstreamStatus is the health of one upstream.
type UpstreamStatus struct {
	Zone      string `json:",omitempty"` // a stub zone's; empty for the Upstreams
	Addr      netip.AddrPort
	Healthy   bool
	LastOK    time.Time
	LastError string
}

// New validates cfg and builds the server; it does not bind any socket.
func New(cfg Config) (*Server, error) {
	if len(cfg.Listen) == 0 {
		cfg.Listen = []string{HostResolver + ":53"}
	}
	for _, l := range cfg.Listen {
		if _, err := netip.ParseAddrPort(l); err != nil {
			return nil, fmt.Errorf("%w: %q: %v", ErrBadListen, l, err)
		}
	}
	if len(cfg.AllowedNets) == 0 {
		cfg.AllowedNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	if cfg.MaxCacheEntries == 0 {
		cfg.MaxCacheEntries = 10000
	}
	if cfg.RateLimit.QPS == 0 {
		cfg.RateLimit.QPS = 1000
	}
	if cfg.RateLimit.Burst == 0 {
		cfg.RateLimit.Burst = int(2 * cfg.RateLimit.QPS)
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 2 * time.Second
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	rs, err := buildRecords(cfg.Records)
	if err != nil {
		return nil, err
	}
	if err := checkUpstreams(cfg.Upstreams); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log}
	s.rec.Store(rs)
	allowed := normPrefixes(cfg.AllowedNets)
	s.allowed.Store(&allowed)
	s.setOwn(cfg.NodeAddrs)
	s.fwd = newForwarder(cfg.Upstreams, cfg.UpstreamTimeout, cfg.Log)
	if s.stubs, err = newStubs(cfg.Stubs, cfg.UpstreamTimeout, cfg.Log); err != nil {
		return nil, err
	}
	if cfg.MaxCacheEntries > 0 {
		s.cache = newCache(cfg.MaxCacheEntries, cfg.now)
	}
	if cfg.RateLimit.QPS > 0 {
		s.limiter = newLimiter(cfg.RateLimit.QPS, cfg.RateLimit.Burst, cfg.now)
	}
	plugins := []Plugin{
		func(next Handler) Handler { return &rateLimitHandler{s: s, next: next} },
		func(next Handler) Handler { return &recordsHandler{s: s, next: next} },
		func(next Handler) Handler { return &aclHandler{s: s, next: next} },
	}
	if s.cache != nil {
		plugins = append(plugins, func(next Handler) Handler { return &cacheHandler{s: s, c: s.cache, next: next} })
	}
	// Build the chain in reverse, as CoreDNS's dnsserver does.
	var h Handler = &forwardHandler{s: s}
	for i := len(plugins) - 1; i >= 0; i-- {
		h = plugins[i](h)
	}
	s.chain = h
	return s, nil
}

func checkUpstreams(ups []netip.AddrPort) error {
	for _, u := range ups {
		if !u.IsValid() || u.Port() == 0 || u.Addr().IsUnspecified() {
			return fmt.Errorf("%w: %q: need a specified address and a port, e.g. 192.0.2.1:53", ErrBadUpstream, u)
		}
	}
	return nil
}

func normPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out
}

// SetUpstreams replaces the upstreams without restarting; the health of
// upstreams present before is kept, and the cache is not flushed.
func (s *Server) SetUpstreams(ups []netip.AddrPort) error {
	if err := checkUpstreams(ups); err != nil {
		return err
	}
	s.fwd.setUpstreams(ups)
	s.log.Info("dns: upstreams changed", "upstreams", ups)
	return nil
}

// SetRecords replaces the cluster records; the new set is built outside the
// lock and swapped in, so queries never see a half-built set.
func (s *Server) SetRecords(r Records) error {
	rs, err := buildRecords(r)
	if err != nil {
		return err
	}
	s.rec.Store(rs)
	s.log.Info("dns: records changed", "zone", rs.zone)
	return nil
}

// SetAllowedNets replaces the clients allowed to recurse (e.g. when the
// node's addresses change).
func (s *Server) SetAllowedNets(ps []netip.Prefix) {
	n := normPrefixes(ps)
	s.allowed.Store(&n)
}

// SetNodeAddrs replaces the node's own addresses (Config.NodeAddrs), e.g.
// when DHCP or an applied config changed them: queries from them are never
// rate limited and may recurse. It reports whether the set changed.
func (s *Server) SetNodeAddrs(addrs []netip.Addr) bool {
	old := *s.own.Load()
	s.setOwn(addrs)
	now := *s.own.Load()
	// Logged as a difference: a node may hold many addresses (kube-proxy's
	// IPVS mode puts every service address on kube-ipvs0).
	var added, removed []netip.Addr
	for a := range now {
		if _, ok := old[a]; !ok {
			added = append(added, a)
		}
	}
	for a := range old {
		if _, ok := now[a]; !ok {
			removed = append(removed, a)
		}
	}
	if len(added) == 0 && len(removed) == 0 {
		return false
	}
	slices.SortFunc(added, netip.Addr.Compare)
	slices.SortFunc(removed, netip.Addr.Compare)
	s.log.Info("dns: node addresses changed", "added", added, "removed", removed, "count", len(now))
	return true
}

func (s *Server) setOwn(addrs []netip.Addr) {
	own := make(map[netip.Addr]struct{}, len(addrs)+len(s.cfg.Listen))
	for _, a := range addrs {
		if a.IsValid() && !a.IsUnspecified() {
			own[a.Unmap().WithZone("")] = struct{}{}
		}
	}
	for _, l := range s.cfg.Listen {
		if a := netip.MustParseAddrPort(l).Addr().Unmap().WithZone(""); !a.IsUnspecified() {
			own[a] = struct{}{}
		}
	}
	s.own.Store(&own)
}

// HostAddrs returns every address on this host's (network namespace's)
// interfaces, IPv4-mapped ones as IPv4, without zones: the node's own
// addresses for Config.NodeAddrs and SetNodeAddrs.
func HostAddrs() ([]netip.Addr, error) {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("dns: node addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(ifas))
	for _, ifa := range ifas {
		if n, ok := ifa.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}

func (s *Server) records() *recordSet { return s.rec.Load() }

// node reports whether a is the node itself: loopback or one of its own
// addresses. a is unmapped and has no zone (clientAddr, the UDP reader).
func (s *Server) node(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	_, ok := (*s.own.Load())[a]
	return ok
}

// limited reports whether a query from a is over its client's rate; the
// node itself is never limited.
func (s *Server) limited(a netip.Addr) bool {
	return s.limiter != nil && !s.node(a) && !s.limiter.allow(a)
}

func (s *Server) allowedClient(a netip.Addr) bool {
	if _, ok := (*s.own.Load())[a]; ok {
		return true
	}
	for _, p := range *s.allowed.Load() {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Status returns a snapshot of the server's counters and upstream health.
func (s *Server) Status() Status {
	st := Status{
		Upstreams:   s.upstreamStatus(),
		Queries:     s.stats.queries.Load(),
		Local:       s.stats.local.Load(),
		CacheHits:   s.stats.cacheHits.Load(),
		CacheMisses: s.stats.cacheMisses.Load(),
		Stale:       s.stats.stale.Load(),
		Forwarded:   s.stats.forwarded.Load(),
		Refused:     s.stats.refused.Load(),
		RateLimited: s.stats.rateLimited.Load(),
		ServFail:    s.stats.servfail.Load(),
	}
	if s.cache != nil {
		st.CacheEntries = s.cache.len()
	}
	return st
}

// Run binds every listen address over UDP and TCP and serves until ctx ends,
// then shuts the listeners down and waits for in-flight queries.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.baseCtx.Store(&ctx)

	var servers []*dns.Server
	var udps []*udpServer
	// closeAll stops the UDP readers; their sockets are closed by closeUDP
	// once the readers are gone, so no reader can use a reused descriptor.
	closeAll := func() {
		for _, u := range udps {
			u.stop()
		}
		for _, srv := range servers {
			if srv.PacketConn != nil {
				srv.PacketConn.Close()
			}
			if srv.Listener != nil {
				srv.Listener.Close()
			}
		}
	}
	closeUDP := func() {
		for _, u := range udps {
			u.conn.close()
		}
	}
	var lc net.ListenConfig
	// One UDP socket per CPU with SO_REUSEPORT: the kernel spreads clients
	// over them, so a single reader is not the bottleneck.
	reuse := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	procs := max(1, min(runtime.GOMAXPROCS(0), 8))
	for _, addr := range s.cfg.Listen {
		ap := netip.MustParseAddrPort(addr)
		// A wildcard address needs the reply sent from the address the
		// query came to (IP_PKTINFO), as dns.Server does.
		raw := !ap.Addr().IsUnspecified() && ap.Addr().Zone() == ""
		for range procs {
			if raw {
				c, err := listenRawUDP(ap)
				if err != nil {
					closeAll()
					closeUDP()
					return fmt.Errorf("dns: listen udp %q: %w", addr, err)
				}
				udps = append(udps, &udpServer{s: s, conn: c})
				continue
			}
			pc, err := reuse.ListenPacket(ctx, "udp", addr)
			if err != nil {
				closeAll()
				closeUDP()
				return fmt.Errorf("dns: listen udp %q: %w", addr, err)
			}
			servers = append(servers, &dns.Server{PacketConn: pc, Handler: s, MsgAcceptFunc: acceptFunc, UDPSize: dns.MinMsgSize})
		}
		l, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			closeAll()
			closeUDP()
			return fmt.Errorf("dns: listen tcp %q: %w", addr, err)
		}
		servers = append(servers, &dns.Server{Listener: l, Handler: s, MsgAcceptFunc: acceptFunc,
			ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }})
	}

	var wg sync.WaitGroup
	errc := make(chan error, len(servers)+len(udps))
	for _, u := range udps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One reader (OS thread) per socket: with a reader per CPU on
			// every socket, more threads than Ps wake and hand Ps to each
			// other, which measured 10–30% slower on the bench's 2 CPUs.
			if err := u.serve(1); err != nil && ctx.Err() == nil {
				errc <- err
			}
		}()
	}
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.ActivateAndServe(); err != nil && ctx.Err() == nil {
				errc <- err
			}
		}()
		// Wait until the server is started so ShutdownContext can stop it.
		select {
		case <-started:
		case err := <-errc:
			cancel()
			closeAll()
			wg.Wait()
			closeUDP()
			return fmt.Errorf("dns: serve: %w", err)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.background(ctx)
	}()
	s.log.Info("dns: serving", "listen", s.cfg.Listen, "zone", s.records().zone)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("dns: serve: %w", err)
		cancel()
	}
	shCtx, shCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer shCancel()
	for _, u := range udps {
		u.stop()
	}
	for _, srv := range servers {
		_ = srv.ShutdownContext(shCtx)
	}
	wg.Wait()
	closeUDP()
	return err
}

// background probes upstreams marked down and forgets idle rate-limit buckets.
func (s *Server) background(ctx context.Context) {
	t := time.NewTicker(s.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.fwd.probeDown(ctx)
			for _, z := range s.stubs {
				z.fwd.probeDown(ctx)
			}
			if s.limiter != nil {
				s.limiter.gc()
			}
		}
	}
}

// acceptFunc is dns.DefaultMsgAcceptFunc without NOTIFY: this server has no
// secondary zones, so a NOTIFY is answered NOTIMP.
func acceptFunc(dh dns.Header) dns.MsgAcceptAction {
	if opcode := int(dh.Bits>>11) & 0xF; opcode == dns.OpcodeNotify {
		if dh.Bits&(1<<15) != 0 {
			return dns.MsgIgnore
		}
		return dns.MsgRejectNotImplemented
	}
	return dns.DefaultMsgAcceptFunc(dh)
}
