package dns

import (
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkServe measures the handler chain without sockets.
func BenchmarkServe(b *testing.B) {
	s, err := New(Config{Records: testRecords(), RateLimit: RateLimit{QPS: -1}})
	if err != nil {
		b.Fatal(err)
	}
	cached := new(dns.Msg)
	cached.SetQuestion("cached.test.", dns.TypeA)
	up := new(dns.Msg)
	up.SetReply(cached)
	up.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "cached.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: net.IPv4(192, 0, 2, 1)}}
	s.cache.set(keyOf(cached), up)
	for _, q := range []string{"api.prod.example.com.", "x.apps.prod.example.com.", "cached.test."} {
		b.Run(q, func(b *testing.B) {
			r := new(dns.Msg)
			r.SetQuestion(q, dns.TypeA)
			w := &fakeWriter{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}
			b.ReportAllocs()
			for b.Loop() {
				s.ServeDNS(w, r)
			}
		})
	}
}

// BenchmarkFastUDP measures the UDP fast path without sockets.
func BenchmarkFastUDP(b *testing.B) {
	s := fastPathServer(b, RateLimit{QPS: -1})
	client := netip.MustParseAddr("127.0.0.1")
	for _, q := range []string{"api.prod.example.com.", "x.apps.prod.example.com.", "a.test."} {
		b.Run(q, func(b *testing.B) {
			r := new(dns.Msg)
			r.SetQuestion(q, dns.TypeA)
			pkt, _ := r.Pack()
			fb := &fastBuf{}
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := s.fastUDP(pkt, client, fb); !ok {
					b.Fatal("not on the fast path")
				}
			}
		})
	}
}

// BenchmarkFastUDPRateLimit measures what the rate limiter that ships on
// costs the node's own queries (exempt: loopback, a node address) and a
// pod's (a token bucket per client; the clock stands still with a bucket
// big enough for the run, so every query is answered).
func BenchmarkFastUDPRateLimit(b *testing.B) {
	r := new(dns.Msg)
	r.SetQuestion("api.prod.example.com.", dns.TypeA)
	pkt, _ := r.Pack()
	for _, tc := range []struct {
		name   string
		rl     RateLimit
		client string
	}{
		{"off", RateLimit{QPS: -1}, "127.0.0.1"},
		{"defaults/loopback", RateLimit{}, "127.0.0.1"},
		{"defaults/node-address", RateLimit{}, "192.0.2.1"},
		{"pod", RateLimit{QPS: 1000, Burst: 1 << 30}, "10.244.0.5"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := fastPathServer(b, tc.rl)
			s.SetNodeAddrs([]netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("192.0.2.1")})
			client := netip.MustParseAddr(tc.client)
			fb := &fastBuf{}
			b.ReportAllocs()
			for b.Loop() {
				out, ok := s.fastUDP(pkt, client, fb)
				if !ok || out[3]&0xF != dns.RcodeSuccess {
					b.Fatal("not answered on the fast path")
				}
			}
		})
	}
}
