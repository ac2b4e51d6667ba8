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
