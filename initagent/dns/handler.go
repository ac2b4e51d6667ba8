package dns

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// Handler is one link of the chain. ServeDNS either writes a reply to w and
// returns its rcode with a nil error, or writes nothing and returns an error
// rcode (SERVFAIL, REFUSED, FORMERR, NOTIMP): the server then writes that
// error reply itself. A handler that does not answer calls the next one.
type Handler interface {
	ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error)
	Name() string
}

// Plugin wraps the next handler of the chain.
type Plugin func(next Handler) Handler

// queryTimeout bounds the whole handling of one query, across upstreams.
const queryTimeout = 5 * time.Second

// ServeDNS implements dns.Handler: it runs the chain and writes the error
// reply when a handler returned an error rcode without writing.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	s.stats.queries.Add(1)
	base := context.Background()
	if p := s.baseCtx.Load(); p != nil {
		base = *p
	}
	// The forwarder bounds its own time (queryTimeout); local answers need
	// no timer, which keeps the hot path free of per-query allocations.
	rw := &trackWriter{ResponseWriter: w, req: r}
	rcode, _ := s.serve(base, rw, r)
	if rw.written || rw.drop {
		return
	}
	if rcode == dns.RcodeServerFailure {
		s.stats.servfail.Add(1)
	}
	m := new(dns.Msg)
	m.SetRcode(r, rcode)
	m.RecursionAvailable = true
	_ = rw.WriteMsg(m)
}

// serve checks the request and runs the chain.
func (s *Server) serve(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if r.Response || len(r.Question) != 1 {
		return dns.RcodeFormatError, nil
	}
	if r.Opcode != dns.OpcodeQuery {
		return dns.RcodeNotImplemented, nil
	}
	if opt := r.IsEdns0(); opt != nil && opt.Version() != 0 {
		// RFC 6891 §6.1.3: unknown EDNS version → BADVERS with our OPT.
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeBadVers)
		m.SetEdns0(dns.DefaultMsgSize, false)
		_ = w.WriteMsg(m)
		return dns.RcodeBadVers, nil
	}
	q := r.Question[0]
	if q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		return dns.RcodeRefused, nil
	}
	return s.chain.ServeDNS(ctx, w, r)
}

// trackWriter notes whether a reply was written and truncates UDP replies to
// what the client can receive (RFC 1035 §4.2.1, RFC 6891 §6.2.5).
type trackWriter struct {
	dns.ResponseWriter
	req     *dns.Msg
	written bool
	drop    bool
}

func (w *trackWriter) WriteMsg(m *dns.Msg) error {
	w.written = true
	if _, ok := w.RemoteAddr().(*net.UDPAddr); !ok {
		return w.ResponseWriter.WriteMsg(m)
	}
	size := dns.MinMsgSize
	if opt := w.req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
		size = int(opt.UDPSize())
	}
	// Pack once; only an oversized reply is truncated and packed again.
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		return err
	}
	if len(b) > size {
		m = m.Copy()
		m.Truncate(size)
		if b, err = m.Pack(); err != nil {
			return err
		}
	}
	_, err = w.ResponseWriter.Write(b)
	return err
}

// clientAddr is the client's address, IPv4-mapped addresses normalised to IPv4.
func clientAddr(w dns.ResponseWriter) netip.Addr {
	var ip net.IP
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

// rateLimitHandler refuses queries from a client over its rate; the node
// itself (loopback, its own addresses) is never limited.
type rateLimitHandler struct {
	s    *Server
	next Handler
}

func (h *rateLimitHandler) Name() string { return "ratelimit" }

func (h *rateLimitHandler) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if h.s.limited(clientAddr(w)) {
		h.s.stats.rateLimited.Add(1)
		return dns.RcodeRefused, nil
	}
	return h.next.ServeDNS(ctx, w, r)
}

// aclHandler stops clients outside AllowedNets before the cache and the
// forwarder: the node answers its own names to anyone but is no open resolver.
type aclHandler struct {
	s    *Server
	next Handler
}

func (h *aclHandler) Name() string { return "acl" }

func (h *aclHandler) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if !h.s.allowedClient(clientAddr(w)) {
		h.s.stats.refused.Add(1)
		return dns.RcodeRefused, nil
	}
	return h.next.ServeDNS(ctx, w, r)
}
