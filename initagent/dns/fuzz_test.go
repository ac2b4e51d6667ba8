package dns

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeWriter is a dns.ResponseWriter that keeps the reply.
type fakeWriter struct {
	remote net.Addr
	reply  *dns.Msg
}

func (w *fakeWriter) LocalAddr() net.Addr       { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 53), Port: 53} }
func (w *fakeWriter) RemoteAddr() net.Addr      { return w.remote }
func (w *fakeWriter) WriteMsg(m *dns.Msg) error { w.reply = m; return nil }
func (w *fakeWriter) Write(b []byte) (int, error) {
	w.reply = new(dns.Msg)
	return len(b), w.reply.Unpack(b)
}
func (w *fakeWriter) Close() error        { return nil }
func (w *fakeWriter) TsigStatus() error   { return nil }
func (w *fakeWriter) TsigTimersOnly(bool) {}
func (w *fakeWriter) Hijack()             {}

func fuzzSeeds() [][]byte {
	var seeds [][]byte
	add := func(m *dns.Msg) {
		b, err := m.Pack()
		if err == nil {
			seeds = append(seeds, b)
		}
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"api.prod.example.com.", dns.TypeA}, {"x.apps.prod.example.com.", dns.TypeAAAA},
		{"nope.prod.example.com.", dns.TypeSRV}, {"1.0.0.10.in-addr.arpa.", dns.TypePTR},
		{"cached.test.", dns.TypeA}, {".", dns.TypeANY}, {"prod.example.com.", dns.TypeAXFR},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		add(m)
		m.SetEdns0(4096, true)
		add(m)
	}
	m := new(dns.Msg)
	m.SetQuestion("api.prod.example.com.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	add(m)
	m = new(dns.Msg)
	m.SetNotify("prod.example.com.")
	add(m)
	seeds = append(seeds, nil, []byte{0}, make([]byte, 12),
		[]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}, // compression pointer loop
		[]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 41, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff})
	return seeds
}

// FuzzServe feeds arbitrary packets through the whole request path (accept
// check, unpack, chain, reply packing) with a warm cache; it must never
// panic, hang, or produce a reply that does not pack.
func FuzzServe(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s, true)
	}
	s, err := New(Config{Records: testRecords(), RateLimit: RateLimit{QPS: -1},
		AllowedNets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	if err != nil {
		f.Fatal(err)
	}
	r := new(dns.Msg)
	r.SetQuestion("cached.test.", dns.TypeA)
	up := new(dns.Msg)
	up.SetReply(r)
	up.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "cached.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
	s.cache.set(keyOf(r), up)

	f.Fuzz(func(t *testing.T, b []byte, allowed bool) {
		if len(b) < 12 {
			return
		}
		var h dns.Header
		h.Id = uint16(b[0])<<8 | uint16(b[1])
		h.Bits = uint16(b[2])<<8 | uint16(b[3])
		h.Qdcount = uint16(b[4])<<8 | uint16(b[5])
		h.Ancount = uint16(b[6])<<8 | uint16(b[7])
		h.Nscount = uint16(b[8])<<8 | uint16(b[9])
		h.Arcount = uint16(b[10])<<8 | uint16(b[11])
		if acceptFunc(h) != dns.MsgAccept {
			return
		}
		req := new(dns.Msg)
		if err := req.Unpack(b); err != nil {
			return
		}
		ip := net.IPv4(198, 51, 100, 1)
		if allowed {
			ip = net.IPv4(192, 0, 2, 9)
		}
		w := &fakeWriter{remote: &net.UDPAddr{IP: ip, Port: 5353}}
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.ServeDNS(w, req)
		}()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Fatalf("ServeDNS hangs on %x", b)
		}
		if w.reply == nil {
			t.Fatalf("no reply to %x", b)
		}
		if _, err := w.reply.Pack(); err != nil {
			t.Fatalf("reply to %x does not pack: %v\n%v", b, err, w.reply)
		}
	})
}

// FuzzUpstreamReply feeds arbitrary upstream replies through the cache
// (TTL and negative-TTL logic, stale rewriting); whatever an upstream sends,
// the reply to the client must pack.
func FuzzUpstreamReply(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	r := new(dns.Msg)
	r.SetQuestion("x.test.", dns.TypeA)
	for _, m := range []*dns.Msg{
		msgFor(&testing.T{}, "x.test.", dns.TypeA, dns.RcodeNameError, nil, []string{"test. 60 IN SOA ns.test. h.test. 1 2 3 4 5"}),
		msgFor(&testing.T{}, "x.test.", dns.TypeA, 0, []string{"x.test. 60 IN A 192.0.2.1"}, nil),
	} {
		m.SetEdns0(1232, true)
		if b, err := m.Pack(); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		up := new(dns.Msg)
		if up.Unpack(b) != nil {
			return
		}
		clk := newFakeClock()
		c := newCache(4, clk.now)
		req := r.Copy()
		req.SetEdns0(1232, len(b)%2 == 0)
		k := keyOf(req)
		c.set(k, up)
		for _, d := range []time.Duration{0, time.Hour, 2 * time.Hour} {
			clk.add(d)
			for _, stale := range []bool{false, true} {
				if m := c.get(k, req, stale); m != nil {
					if _, err := m.Pack(); err != nil {
						t.Fatalf("cached reply does not pack: %v\n%v", err, m)
					}
				}
			}
		}
	})
}
