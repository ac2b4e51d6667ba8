package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ErrNoUpstream is returned when no upstream answered.
var ErrNoUpstream = errors.New("no upstream answered")

type upstream struct {
	addr    netip.AddrPort
	down    bool
	lastOK  time.Time
	lastErr string
}

// forwarder sends queries to the upstreams one after another. An upstream
// that fails to answer is marked down and skipped until a probe or a query
// gets an answer from it again; when every upstream is down they are all
// tried anyway, since the health state may be the thing that is wrong.
type forwarder struct {
	mu      sync.Mutex
	ups     []*upstream
	timeout time.Duration
	log     *slog.Logger
	udp     *dns.Client
	tcp     *dns.Client
	// stub is set on a stub zone's forwarder: its queries carry the stub
	// mark (see stubMarkOption).
	stub bool
}

// stubMarkOption is an EDNS0 option (from the local/experimental range,
// RFC 6891 §9) on every query sent to a stub zone's servers. The cluster
// DNS sends the names of those zones it has no record for (the reverse name
// of an unassigned Service address) on to its own upstream, which is this
// server on some node: a query that comes back with the mark goes to the
// Upstreams, as the cluster DNS meant, instead of round the loop again.
const stubMarkOption = 65301

func hasStubMark(r *dns.Msg) bool {
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if o.Option() == stubMarkOption {
				return true
			}
		}
	}
	return false
}

// setStubMark adds the mark to r (a copy the caller owns), with an OPT
// record if r had none, or removes it.
func setStubMark(r *dns.Msg, on bool) {
	opt := r.IsEdns0()
	if opt == nil {
		if !on {
			return
		}
		r.SetEdns0(ednsSize, false)
		opt = r.IsEdns0()
	}
	kept := opt.Option[:0]
	for _, o := range opt.Option {
		if o.Option() != stubMarkOption {
			kept = append(kept, o)
		}
	}
	opt.Option = kept
	if on {
		opt.Option = append(opt.Option, &dns.EDNS0_LOCAL{Code: stubMarkOption, Data: []byte("ballast")})
	}
}

// removeOPT drops the OPT record from a reply to a query that had none
// (RFC 6891 §7).
func removeOPT(m *dns.Msg) {
	kept := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			kept = append(kept, rr)
		}
	}
	m.Extra = kept
}

func newForwarder(ups []netip.AddrPort, timeout time.Duration, log *slog.Logger) *forwarder {
	f := &forwarder{
		timeout: timeout,
		log:     log,
		// 8 KiB covers every EDNS buffer size in use (1232 since DNS flag day 2020, at
		// most 4096 in practice); a 64 KiB buffer per forwarded query only cost memory.
		// A larger reply is refused by its server with TC and comes over TCP.
		udp: &dns.Client{Net: "udp", Timeout: timeout, UDPSize: 8192},
		tcp: &dns.Client{Net: "tcp", Timeout: timeout},
	}
	f.setUpstreams(ups)
	return f
}

func (f *forwarder) setUpstreams(addrs []netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := map[netip.AddrPort]*upstream{}
	for _, u := range f.ups {
		old[u.addr] = u
	}
	ups := make([]*upstream, 0, len(addrs))
	for _, a := range addrs {
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		if u, ok := old[a]; ok {
			ups = append(ups, u)
			continue
		}
		ups = append(ups, &upstream{addr: a})
	}
	f.ups = ups
}

func (f *forwarder) status() []UpstreamStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]UpstreamStatus, 0, len(f.ups))
	for _, u := range f.ups {
		out = append(out, UpstreamStatus{Addr: u.addr, Healthy: !u.down, LastOK: u.lastOK, LastError: u.lastErr})
	}
	return out
}

// order returns the upstreams to try: the healthy ones in configured order,
// or all of them when none is healthy.
func (f *forwarder) order() []*upstream {
	f.mu.Lock()
	defer f.mu.Unlock()
	var up []*upstream
	for _, u := range f.ups {
		if !u.down {
			up = append(up, u)
		}
	}
	if len(up) == 0 {
		up = append(up, f.ups...)
	}
	return up
}

func (f *forwarder) mark(u *upstream, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		if u.down {
			f.log.Info("dns: upstream is back", "upstream", u.addr)
		}
		u.down, u.lastOK, u.lastErr = false, time.Now(), ""
		return
	}
	if !u.down {
		f.log.Warn("dns: upstream down", "upstream", u.addr, "err", err)
	}
	u.down, u.lastErr = true, err.Error()
}

// exchange sends r to one upstream over UDP, and again over TCP when the
// reply is truncated (RFC 7766 §5).
func (f *forwarder) exchange(ctx context.Context, u *upstream, r *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	addr := u.addr.String()
	m, _, err := f.udp.ExchangeContext(ctx, r, addr)
	if err == nil && m.Truncated {
		m, _, err = f.tcp.ExchangeContext(ctx, r, addr)
	}
	if err != nil {
		return nil, err
	}
	if len(m.Question) != 1 || !equalQuestion(m.Question[0], r.Question[0]) {
		return nil, fmt.Errorf("reply for another question")
	}
	return m, nil
}

func equalQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && dns.CanonicalName(a.Name) == dns.CanonicalName(b.Name)
}

// forward returns the first good reply. SERVFAIL and REFUSED send the query
// to the next upstream without marking this one down; network errors and
// timeouts mark it down.
func (f *forwarder) forward(ctx context.Context, r *dns.Msg) (*dns.Msg, error) {
	ups := f.order()
	if len(ups) == 0 {
		return nil, fmt.Errorf("%w: no upstreams configured", ErrNoUpstream)
	}
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	req := r.Copy()
	req.Id = dns.Id()
	setStubMark(req, f.stub)
	var errs []error
	for _, u := range ups {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		m, err := f.exchange(ctx, u, req)
		if err != nil {
			f.mark(u, err)
			errs = append(errs, fmt.Errorf("upstream %s: %w", u.addr, err))
			continue
		}
		f.mark(u, nil)
		if m.Rcode == dns.RcodeServerFailure || m.Rcode == dns.RcodeRefused {
			errs = append(errs, fmt.Errorf("upstream %s: %s", u.addr, dns.RcodeToString[m.Rcode]))
			continue
		}
		m.Id = r.Id
		m.Question = r.Question
		if r.IsEdns0() == nil {
			removeOPT(m)
		}
		return m, nil
	}
	return nil, fmt.Errorf("%w: %w", ErrNoUpstream, errors.Join(errs...))
}

// probeDown sends ". IN NS" to every upstream marked down; any reply, even
// an error rcode, proves it is reachable again.
func (f *forwarder) probeDown(ctx context.Context) {
	f.mu.Lock()
	var down []*upstream
	for _, u := range f.ups {
		if u.down {
			down = append(down, u)
		}
	}
	f.mu.Unlock()
	for _, u := range down {
		m := new(dns.Msg)
		m.SetQuestion(".", dns.TypeNS)
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		_, _, err := f.udp.ExchangeContext(ctx, m, u.addr.String())
		cancel()
		if err == nil {
			f.mark(u, nil)
		}
	}
}

// forwardHandler is the end of the chain.
type forwardHandler struct {
	s *Server
}

func (h *forwardHandler) Name() string { return "forward" }

func (h *forwardHandler) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	m, err := h.s.forwarderFor(r).forward(ctx, r)
	if err != nil {
		h.s.log.Debug("dns: forward failed", "name", r.Question[0].Name, "err", err)
		return dns.RcodeServerFailure, err
	}
	h.s.stats.forwarded.Add(1)
	return m.Rcode, w.WriteMsg(m)
}

// stubZone is one Config.Stubs entry with its own forwarder (and health).
type stubZone struct {
	zone string // canonical, with the trailing dot
	fwd  *forwarder
}

func newStubs(stubs []Stub, timeout time.Duration, log *slog.Logger) ([]stubZone, error) {
	var out []stubZone
	for i, st := range stubs {
		zone := dns.CanonicalName(st.Zone)
		if _, ok := dns.IsDomainName(zone); !ok || zone == "." {
			return nil, fmt.Errorf("dns stub %d: zone %q is not a domain name below the root", i, st.Zone)
		}
		if len(st.Servers) == 0 {
			return nil, fmt.Errorf("dns stub %s: no servers", zone)
		}
		if err := checkUpstreams(st.Servers); err != nil {
			return nil, fmt.Errorf("dns stub %s: %w", zone, err)
		}
		fwd := newForwarder(st.Servers, timeout, log.With("zone", zone))
		fwd.stub = true
		out = append(out, stubZone{zone: zone, fwd: fwd})
	}
	// Most specific first: more labels wins.
	sort.SliceStable(out, func(i, j int) bool { return dns.CountLabel(out[i].zone) > dns.CountLabel(out[j].zone) })
	return out, nil
}

// forwarderFor is the forwarder of the most specific stub zone holding the
// question's name, else (or when the query has been through a stub zone's
// servers already) the Upstreams'.
func (s *Server) forwarderFor(r *dns.Msg) *forwarder {
	if hasStubMark(r) {
		return s.fwd
	}
	name := r.Question[0].Name
	for _, z := range s.stubs {
		if dns.IsSubDomain(z.zone, dns.CanonicalName(name)) {
			return z.fwd
		}
	}
	return s.fwd
}

func (s *Server) upstreamStatus() []UpstreamStatus {
	out := s.fwd.status()
	for _, z := range s.stubs {
		for _, u := range z.fwd.status() {
			u.Zone = strings.TrimSuffix(z.zone, ".")
			out = append(out, u)
		}
	}
	return out
}

// ReverseZones returns the reverse-lookup zones (in-addr.arpa. or
// ip6.arpa.) that together hold exactly the addresses of p: one zone when
// p ends on an octet (IPv4) or nibble (IPv6) boundary, else one per
// combination of the bits up to the next boundary (at most 128), e.g. 16
// zones for 10.96.0.0/12.
func ReverseZones(p netip.Prefix) ([]string, error) {
	if !p.IsValid() {
		return nil, fmt.Errorf("reverse zones: invalid prefix")
	}
	p = p.Masked()
	unit, suffix := 8, "in-addr.arpa."
	if p.Addr().Is6() {
		unit, suffix = 4, "ip6.arpa."
	}
	boundary := (p.Bits() + unit - 1) / unit * unit
	if boundary == 0 {
		return []string{suffix}, nil
	}
	addr := p.Addr().AsSlice()
	var zones []string
	for i := range 1 << (boundary - p.Bits()) {
		a := slices.Clone(addr)
		// add i at the bit just above the boundary
		shift := len(a)*8 - boundary
		carry := uint(i) << (shift % 8)
		for j := len(a) - 1 - shift/8; j >= 0 && carry > 0; j-- {
			sum := uint(a[j]) + carry&0xff
			a[j] = byte(sum)
			carry = carry>>8 + sum>>8
		}
		var labels []string
		for k := boundary/unit - 1; k >= 0; k-- {
			if unit == 8 {
				labels = append(labels, strconv.Itoa(int(a[k])))
				continue
			}
			nib := a[k/2] >> 4
			if k%2 == 1 {
				nib = a[k/2] & 0xf
			}
			labels = append(labels, strconv.FormatUint(uint64(nib), 16))
		}
		zones = append(zones, strings.Join(labels, ".")+"."+suffix)
	}
	return zones, nil
}
