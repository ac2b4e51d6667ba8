package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Records are the names the server answers authoritatively. The cluster zone
// is <Cluster>.<Domain>; inside it NXDOMAIN and NODATA carry the zone's SOA.
type Records struct {
	// Cluster and Domain make the zone, e.g. "prod" and "example.com" give
	// prod.example.com. Both required.
	Cluster, Domain string
	// APIVIPs answer api.<zone> and api-int.<zone>, with SRV records
	// _https._tcp.api.<zone> and _https._tcp.api-int.<zone>.
	APIVIPs []netip.Addr
	// IngressVIPs answer every name below apps.<zone> (*.apps).
	IngressVIPs []netip.Addr
	// Nodes maps node names (one label, e.g. "cp-1") to their addresses;
	// each answers as "cp-1." and "cp-1.<zone>.", with PTR records.
	Nodes map[string][]netip.Addr
	// Hosts are static entries from the machine config. A name without a
	// dot is treated like a node name; other names answer exactly as
	// given (inside or outside the zone), with PTR records.
	Hosts map[string][]netip.Addr
	// APIPort is the port in the API SRV records. Default: 6443.
	APIPort uint16
	// TTL of every local record, and the negative TTL of the zone.
	// Default: 30 (seconds).
	TTL uint32
}

// ErrBadRecord is wrapped by errors about Records.
var ErrBadRecord = errors.New("invalid DNS record")

type recordSet struct {
	zone    string // lower case, fully qualified
	ttl     uint32
	names   map[string][]netip.Addr // owner → addresses
	srv     map[string][]*dns.SRV
	ents    map[string]bool // every name that exists inside the zone, with or without data
	apps    string          // ".apps.<zone>"
	ingress []netip.Addr
	ptr     map[string]string // reverse name → target
	soa     *dns.SOA

	// tmpl holds packed replies for the UDP fast path, keyed by lower-case
	// name and qtype, built on first use; bounded by maxLocalTmpl because
	// *.apps matches any name.
	tmplMu sync.RWMutex
	tmpl   map[string]*wireTmpl
}

const maxLocalTmpl = 4096

func normAddrs(field string, in []netip.Addr) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(in))
	for _, a := range in {
		if !a.IsValid() || a.IsUnspecified() {
			return nil, fmt.Errorf("%w: %s: address %q is not a usable address", ErrBadRecord, field, a)
		}
		if isV4Compatible(a) {
			b := a.As16()
			return nil, fmt.Errorf("%w: %s: %q is an IPv4-compatible IPv6 address (deprecated by RFC 4291 §2.5.5.1); write the IPv4 address %s", ErrBadRecord, field, a, netip.AddrFrom4([4]byte(b[12:])))
		}
		a = a.Unmap().WithZone("")
		dup := false
		for _, o := range out {
			dup = dup || o == a
		}
		if !dup {
			out = append(out, a)
		}
	}
	return out, nil
}

// isV4Compatible reports ::a.b.c.d (but not :: and ::1).
func isV4Compatible(a netip.Addr) bool {
	if !a.Is6() || a.Is4In6() {
		return false
	}
	b := a.As16()
	for _, x := range b[:12] {
		if x != 0 {
			return false
		}
	}
	return b[12]|b[13]|b[14] != 0 || b[15] > 1
}

func buildRecords(r Records) (*recordSet, error) {
	if r.Cluster == "" || r.Domain == "" {
		return nil, ErrNoZone
	}
	zone := dns.CanonicalName(r.Cluster + "." + strings.TrimSuffix(r.Domain, "."))
	if _, ok := dns.IsDomainName(zone); !ok || strings.Contains(r.Cluster, ".") {
		return nil, fmt.Errorf("%w: cluster zone %q: Cluster must be one label and Domain a domain name", ErrBadRecord, zone)
	}
	if r.TTL == 0 {
		r.TTL = 30
	}
	if r.APIPort == 0 {
		r.APIPort = 6443
	}
	rs := &recordSet{
		zone:  zone,
		ttl:   r.TTL,
		names: map[string][]netip.Addr{},
		srv:   map[string][]*dns.SRV{},
		ents:  map[string]bool{zone: true},
		apps:  ".apps." + zone,
		ptr:   map[string]string{},
		tmpl:  map[string]*wireTmpl{},
	}
	add := func(name string, addrs []netip.Addr) {
		merged, _ := normAddrs("", append(append([]netip.Addr{}, rs.names[name]...), addrs...))
		rs.names[name] = merged
		rs.exist(name)
	}
	addPTR := func(name string, addrs []netip.Addr) {
		for _, a := range addrs {
			rev, err := dns.ReverseAddr(a.String())
			if err != nil {
				continue
			}
			if _, ok := rs.ptr[rev]; !ok { // first one wins: nodes, then hosts, then api
				rs.ptr[rev] = name
			}
		}
	}
	label := func(field, n string) (string, error) {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n == "" || strings.Contains(n, ".") {
			return "", fmt.Errorf("%w: %s: %q must be a single label", ErrBadRecord, field, n)
		}
		if _, ok := dns.IsDomainName(n); !ok {
			return "", fmt.Errorf("%w: %s: %q is not a valid DNS label", ErrBadRecord, field, n)
		}
		return n, nil
	}

	for _, n := range sortedKeys(r.Nodes) {
		l, err := label("Nodes", n)
		if err != nil {
			return nil, err
		}
		addrs, err := normAddrs("Nodes["+n+"]", r.Nodes[n])
		if err != nil {
			return nil, err
		}
		add(l+".", addrs)
		add(l+"."+zone, addrs)
		addPTR(l+"."+zone, addrs)
	}
	for _, n := range sortedKeys(r.Hosts) {
		addrs, err := normAddrs("Hosts["+n+"]", r.Hosts[n])
		if err != nil {
			return nil, err
		}
		if !strings.Contains(strings.TrimSuffix(n, "."), ".") {
			l, err := label("Hosts", n)
			if err != nil {
				return nil, err
			}
			add(l+".", addrs)
			add(l+"."+zone, addrs)
			addPTR(l+"."+zone, addrs)
			continue
		}
		fq := dns.CanonicalName(n)
		if _, ok := dns.IsDomainName(fq); !ok {
			return nil, fmt.Errorf("%w: Hosts: %q is not a valid domain name", ErrBadRecord, n)
		}
		add(fq, addrs)
		addPTR(fq, addrs)
	}
	api, err := normAddrs("APIVIPs", r.APIVIPs)
	if err != nil {
		return nil, err
	}
	if len(api) > 0 {
		for _, n := range []string{"api." + zone, "api-int." + zone} {
			add(n, api)
			srvName := "_https._tcp." + n
			rs.srv[srvName] = []*dns.SRV{{Priority: 0, Weight: 0, Port: r.APIPort, Target: n}}
			rs.exist(srvName)
		}
		addPTR("api."+zone, api)
	}
	if rs.ingress, err = normAddrs("IngressVIPs", r.IngressVIPs); err != nil {
		return nil, err
	}
	if len(rs.ingress) > 0 {
		rs.exist("apps." + zone)
	}
	rs.soa = &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: r.TTL},
		Ns:      "ns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 3600, Retry: 600, Expire: 86400,
		Minttl: r.TTL, // RFC 2308 §4: the negative TTL
	}
	return rs, nil
}

// exist marks name and its ancestors inside the zone as existing, so empty
// non-terminals get NODATA rather than NXDOMAIN (RFC 8020).
func (rs *recordSet) exist(name string) {
	if !dns.IsSubDomain(rs.zone, name) {
		return
	}
	for n := name; n != rs.zone && n != "."; {
		rs.ents[n] = true
		i, end := dns.NextLabel(n, 0)
		if end {
			break
		}
		n = n[i:]
	}
}

func sortedKeys(m map[string][]netip.Addr) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// answer builds the reply for r from the records, or returns nil when the
// name is not one of ours and the next handler must answer.
func (rs *recordSet) answer(r *dns.Msg) *dns.Msg {
	q := r.Question[0]
	if q.Qclass != dns.ClassINET {
		return nil
	}
	name := strings.ToLower(q.Name)
	inZone := dns.IsSubDomain(rs.zone, name)
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = true

	if target, ok := rs.ptr[name]; ok {
		if q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, &dns.PTR{Hdr: rs.hdr(q.Name, dns.TypePTR), Ptr: target})
		}
		return m
	}

	addrs, ok := rs.names[name]
	srv, srvOK := rs.srv[name]
	switch {
	case ok || srvOK:
	case inZone && strings.HasSuffix(name, rs.apps) && len(rs.ingress) > 0:
		addrs, ok = rs.ingress, true // *.apps wildcard (RFC 4592)
	case !inZone:
		return nil
	}

	if name == rs.zone && (q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY) {
		soa := dns.Copy(rs.soa)
		soa.Header().Name = q.Name
		m.Answer = append(m.Answer, soa)
	}
	if ok {
		m.Answer = append(m.Answer, rs.addrRRs(q.Name, q.Qtype, addrs)...)
	}
	if srvOK && (q.Qtype == dns.TypeSRV || q.Qtype == dns.TypeANY) {
		for _, s := range srv {
			rr := *s
			rr.Hdr = rs.hdr(q.Name, dns.TypeSRV)
			m.Answer = append(m.Answer, &rr)
			m.Extra = append(m.Extra, rs.addrRRs(s.Target, dns.TypeANY, rs.names[s.Target])...)
		}
	}
	if len(m.Answer) > 0 {
		return m
	}
	if inZone {
		if !ok && !srvOK && !rs.ents[name] {
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = append(m.Ns, rs.soa) // RFC 2308 §3: SOA in authority for negative answers
	}
	return m
}

// owns reports whether answer answers a question for name (lower case) and
// qclass, rather than returning nil.
func (rs *recordSet) owns(name []byte, qclass uint16) bool {
	if qclass != dns.ClassINET {
		return false
	}
	if _, ok := rs.ptr[string(name)]; ok {
		return true
	}
	if _, ok := rs.names[string(name)]; ok {
		return true
	}
	if _, ok := rs.srv[string(name)]; ok {
		return true
	}
	// dns.IsSubDomain(rs.zone, name), for a name without escapes.
	z := len(rs.zone)
	return len(name) == z && string(name) == rs.zone ||
		len(name) > z && string(name[len(name)-z:]) == rs.zone && name[len(name)-z-1] == '.'
}

// wireAnswer returns the packed reply to an IN question for name (lower
// case, owned by rs) and qtype, with ID 0 and RD and CD clear; key is
// scratch space. Nil if it does not pack.
func (rs *recordSet) wireAnswer(name []byte, qtype uint16, key []byte) *wireTmpl {
	key = append(append(key, name...), byte(qtype>>8), byte(qtype))
	rs.tmplMu.RLock()
	t, ok := rs.tmpl[string(key)]
	n := len(rs.tmpl)
	rs.tmplMu.RUnlock()
	if ok {
		return t
	}
	r := &dns.Msg{Question: []dns.Question{{Name: string(name), Qtype: qtype, Qclass: dns.ClassINET}}}
	m := rs.answer(r)
	if m == nil {
		return nil
	}
	t = newWireTmpl(m, false)
	if t != nil && n < maxLocalTmpl {
		rs.tmplMu.Lock()
		rs.tmpl[string(key)] = t
		rs.tmplMu.Unlock()
	}
	return t
}

func (rs *recordSet) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: rs.ttl}
}

func (rs *recordSet) addrRRs(owner string, qtype uint16, addrs []netip.Addr) []dns.RR {
	var out []dns.RR
	for _, a := range addrs {
		switch {
		case a.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
			out = append(out, &dns.A{Hdr: rs.hdr(owner, dns.TypeA), A: a.AsSlice()})
		case a.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
			out = append(out, &dns.AAAA{Hdr: rs.hdr(owner, dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
	return out
}

// recordsHandler answers the cluster's own names, for every client.
type recordsHandler struct {
	s    *Server
	next Handler
}

func (h *recordsHandler) Name() string { return "records" }

func (h *recordsHandler) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	m := h.s.records().answer(r)
	if m == nil {
		return h.next.ServeDNS(ctx, w, r)
	}
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(ednsSize, opt.Do())
	}
	h.s.stats.local.Add(1)
	return m.Rcode, w.WriteMsg(m)
}

// ednsSize is the UDP payload size we advertise: 1232 avoids IP fragmentation
// on any path with an MTU of 1280 (DNS flag day 2020).
const ednsSize = 1232
