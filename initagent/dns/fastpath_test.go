package dns

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/miekg/dns"
)

// rawWriter is a UDP dns.ResponseWriter that keeps the packed reply.
type rawWriter struct {
	fakeWriter
	raw []byte
}

func (w *rawWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (w *rawWriter) Write(b []byte) (int, error) {
	w.raw = append([]byte(nil), b...)
	return len(b), nil
}

// fastPathServer is a server with local records and a warm cache whose
// clock is 5 s past the stores, so cached TTLs are aged.
func fastPathServer(t testing.TB, rl RateLimit) *Server {
	clk := newFakeClock()
	s, err := New(Config{Records: testRecords(), RateLimit: rl, now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		m      *dns.Msg
		do, cd bool
	}{
		{m: msgFor(&testing.T{}, "a.test.", dns.TypeA, 0, []string{"a.test. 60 IN A 192.0.2.1", "a.test. 30 IN A 192.0.2.2"}, nil)},
		{m: msgFor(&testing.T{}, "a.test.", dns.TypeA, 0, []string{"a.test. 60 IN A 192.0.2.1"}, nil), do: true},
		{m: msgFor(&testing.T{}, "a.test.", dns.TypeA, 0, []string{"a.test. 60 IN A 192.0.2.9"}, nil), cd: true},
		{m: msgFor(&testing.T{}, "c.test.", dns.TypeA, 0, []string{"c.test. 100 IN CNAME a.test.", "a.test. 3 IN A 192.0.2.1"}, nil)},
		{m: msgFor(&testing.T{}, "nx.test.", dns.TypeA, dns.RcodeNameError, nil, []string{"test. 60 IN SOA ns.test. h.test. 1 2 3 4 60"})},
		{m: msgFor(&testing.T{}, "nodata.test.", dns.TypeAAAA, 0, nil, []string{"test. 60 IN SOA ns.test. h.test. 1 2 3 4 60"})},
		{m: msgFor(&testing.T{}, "big.test.", dns.TypeTXT, 0, bigTXT(), nil)},
	} {
		r := new(dns.Msg)
		r.SetQuestion(tc.m.Question[0].Name, tc.m.Question[0].Qtype)
		r.CheckingDisabled = tc.cd
		if tc.do {
			r.SetEdns0(1232, true)
		}
		tc.m.Authoritative = false
		tc.m.RecursionAvailable = true
		s.cache.set(keyOf(r), tc.m)
	}
	clk.add(5 * time.Second)
	return s
}

func bigTXT() []string {
	var out []string
	for range 20 {
		out = append(out, "big.test. 60 IN TXT \""+string(bytes.Repeat([]byte("x"), 40))+"\"")
	}
	return out
}

// fastQueries are packed queries covering what the fast path takes and
// what it must leave to the chain.
func fastQueries() [][]byte {
	var out [][]byte
	for _, name := range []string{"api.prod.example.com.", "API.prod.example.com.", "x.apps.prod.example.com.", "cp-1.", "cp-1.prod.example.com.",
		"_https._tcp.api.prod.example.com.", "prod.example.com.", "nope.prod.example.com.", "apps.prod.example.com.", "example.com.",
		"1.0.0.10.in-addr.arpa.", "registry.corp.test.", "a.test.", "A.test.", "c.test.", "nx.test.", "nodata.test.", "big.test.", "miss.test.", "."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypePTR, dns.TypeSOA, dns.TypeANY, dns.TypeTXT, dns.TypeAXFR} {
			for _, v := range []struct {
				rd, cd, edns, do bool
				size             uint16
				cookie           bool
			}{{rd: true}, {}, {cd: true}, {rd: true, edns: true, size: 1232}, {edns: true, do: true, size: 4096},
				{edns: true, size: 100}, {edns: true, size: 1232, cookie: true}, {edns: true, do: true, cd: true, size: 1232}} {
				m := new(dns.Msg)
				m.SetQuestion(name, qtype)
				m.Id = 0xBEEF
				m.RecursionDesired, m.CheckingDisabled = v.rd, v.cd
				if v.edns {
					m.SetEdns0(v.size, v.do)
					if v.cookie {
						o := m.IsEdns0()
						o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
					}
				}
				b, err := m.Pack()
				if err == nil {
					out = append(out, b)
				}
			}
		}
	}
	return out
}

// slowReply is the chain's reply to b, as the UDP slow path sends it.
func slowReply(t testing.TB, s *Server, b []byte, client netip.Addr) []byte {
	req := new(dns.Msg)
	if err := req.Unpack(b); err != nil {
		t.Fatalf("fast path answered %x, which does not unpack: %v", b, err)
	}
	w := &rawWriter{fakeWriter: fakeWriter{remote: net.UDPAddrFromAddrPort(netip.AddrPortFrom(client, 5353))}}
	s.ServeDNS(w, req)
	return w.raw
}

func TestFastPathMatchesChain(t *testing.T) {
	s := fastPathServer(t, RateLimit{QPS: -1})
	client := netip.MustParseAddr("127.0.0.1")
	fb := &fastBuf{}
	fast := 0
	for _, b := range fastQueries() {
		got, ok := s.fastUDP(b, client, fb)
		if !ok {
			continue
		}
		fast++
		got = append([]byte(nil), got...)
		if want := slowReply(t, s, b, client); !bytes.Equal(got, want) {
			req, g, w := new(dns.Msg), new(dns.Msg), new(dns.Msg)
			req.Unpack(b)
			g.Unpack(got)
			w.Unpack(want)
			t.Errorf("query %v\nfast path:\n%v\nchain:\n%v", req, g, w)
		}
	}
	if fast < 300 {
		t.Errorf("fast path took %d queries, want ≥ 300", fast)
	}
	// Outside AllowedNets: local names only.
	r := new(dns.Msg)
	r.SetQuestion("a.test.", dns.TypeA)
	b, _ := r.Pack()
	if _, ok := s.fastUDP(b, netip.MustParseAddr("192.0.2.1"), fb); ok {
		t.Error("fast path answered a cached name to a client outside AllowedNets")
	}
	r.SetQuestion("api.prod.example.com.", dns.TypeA)
	b, _ = r.Pack()
	if _, ok := s.fastUDP(b, netip.MustParseAddr("192.0.2.1"), fb); !ok {
		t.Error("fast path did not answer a local name to a client outside AllowedNets")
	}

	// Rate limited: the same REFUSED as the chain's.
	s = fastPathServer(t, RateLimit{QPS: 1, Burst: 1})
	pod := netip.MustParseAddr("10.244.0.5")
	s.fastUDP(b, pod, fb)
	got, ok := s.fastUDP(b, pod, fb)
	if want := slowReply(t, s, b, pod); !ok || !bytes.Equal(got, want) {
		t.Errorf("rate limited: fast path %x (%v), chain %x", got, ok, want)
	}
	if st := s.Status(); st.RateLimited != 2 || st.Queries != 3 {
		t.Errorf("Status = %+v, want 3 queries, 2 rate limited", st)
	}
	// The node itself (loopback, its own addresses) is not limited.
	s.SetNodeAddrs([]netip.Addr{netip.MustParseAddr("192.0.2.1")})
	for _, c := range []string{"127.0.0.1", "127.0.0.9", "192.0.2.1"} {
		for i := range 5 {
			out, ok := s.fastUDP(b, netip.MustParseAddr(c), fb)
			if m := new(dns.Msg); !ok || m.Unpack(out) != nil || m.Rcode != dns.RcodeSuccess {
				t.Fatalf("query %d from the node's %s at 1 qps: %v (fast path %v), want NOERROR", i, c, m, ok)
			}
		}
	}
}

// FuzzFastPath: whatever the fast path answers, the chain answers the same.
func FuzzFastPath(f *testing.F) {
	for _, b := range fastQueries() {
		f.Add(b)
	}
	s := fastPathServer(f, RateLimit{QPS: -1})
	client := netip.MustParseAddr("127.0.0.1")
	fb := &fastBuf{}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := s.fastUDP(b, client, fb)
		if !ok {
			return
		}
		got = append([]byte(nil), got...)
		if want := slowReply(t, s, b, client); !bytes.Equal(got, want) {
			t.Errorf("query %x: fast path %x, chain %x", b, got, want)
		}
	})
}

// TestUDPIPv6 checks the raw UDP sockets with an IPv6 listen address, on
// the fast path and the slow path.
func TestUDPIPv6(t *testing.T) {
	nstest.Handle(t)
	srv := "[::1]:53"
	startServer(t, Config{Listen: []string{srv}, AllowedNets: []netip.Prefix{netip.MustParsePrefix("::1/128")}})
	c := &dns.Client{Timeout: 2 * time.Second}
	if m := query(t, c, srv, "api.prod.example.com.", dns.TypeAAAA); len(m.Answer) != 1 {
		t.Errorf("api AAAA over IPv6 = %v, want fd00::10", m)
	}
	if m := query(t, c, srv, "API.prod.example.com.", dns.TypeA); len(m.Answer) != 1 || m.Question[0].Name != "API.prod.example.com." {
		t.Errorf("API A over IPv6 (slow path) = %v, want 10.0.0.10 with the question as asked", m)
	}
}
