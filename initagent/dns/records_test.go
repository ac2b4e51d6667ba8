package dns

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func testRecords() Records {
	return Records{
		Cluster:     "prod",
		Domain:      "example.com",
		APIVIPs:     []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::10")},
		IngressVIPs: []netip.Addr{netip.MustParseAddr("10.0.0.20")},
		Nodes: map[string][]netip.Addr{
			"cp-1": {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
			"W-2":  {netip.MustParseAddr("::ffff:10.0.0.2")},
		},
		Hosts: map[string][]netip.Addr{
			"registry.corp.test": {netip.MustParseAddr("192.0.2.50")},
			"ntp":                {netip.MustParseAddr("10.0.0.30")},
		},
	}
}

func rrs(t *testing.T, lines ...string) []dns.RR {
	t.Helper()
	var out []dns.RR
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("NewRR(%q): %v", l, err)
		}
		out = append(out, rr)
	}
	return out
}

func sameRRs(a, b []dns.RR) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !dns.IsDuplicate(a[i], b[i]) || a[i].Header().Ttl != b[i].Header().Ttl {
			return false
		}
	}
	return true
}

func TestRecordsAnswer(t *testing.T) {
	rs, err := buildRecords(testRecords())
	if err != nil {
		t.Fatal(err)
	}
	soa := "prod.example.com. 30 IN SOA ns.prod.example.com. hostmaster.prod.example.com. 1 3600 600 86400 30"
	for _, tc := range []struct {
		qname  string
		qtype  uint16
		rcode  int
		answer []string
		ns     []string
		extra  []string
		next   bool // not ours: passed to the next handler
	}{
		{qname: "api.prod.example.com.", qtype: dns.TypeA, answer: []string{"api.prod.example.com. 30 IN A 10.0.0.10"}},
		{qname: "API.Prod.Example.com.", qtype: dns.TypeA, answer: []string{"API.Prod.Example.com. 30 IN A 10.0.0.10"}},
		{qname: "api-int.prod.example.com.", qtype: dns.TypeAAAA, answer: []string{"api-int.prod.example.com. 30 IN AAAA fd00::10"}},
		{qname: "console.apps.prod.example.com.", qtype: dns.TypeA, answer: []string{"console.apps.prod.example.com. 30 IN A 10.0.0.20"}},
		{qname: "a.b.apps.prod.example.com.", qtype: dns.TypeA, answer: []string{"a.b.apps.prod.example.com. 30 IN A 10.0.0.20"}},
		{qname: "x.apps.prod.example.com.", qtype: dns.TypeAAAA, ns: []string{soa}},
		{qname: "apps.prod.example.com.", qtype: dns.TypeA, ns: []string{soa}},
		{qname: "cp-1.prod.example.com.", qtype: dns.TypeA, answer: []string{"cp-1.prod.example.com. 30 IN A 10.0.0.1"}},
		{qname: "cp-1.", qtype: dns.TypeAAAA, answer: []string{"cp-1. 30 IN AAAA fd00::1"}},
		{qname: "w-2.", qtype: dns.TypeA, answer: []string{"w-2. 30 IN A 10.0.0.2"}},
		{qname: "w-2.", qtype: dns.TypeAAAA},
		{qname: "ntp.prod.example.com.", qtype: dns.TypeA, answer: []string{"ntp.prod.example.com. 30 IN A 10.0.0.30"}},
		{qname: "registry.corp.test.", qtype: dns.TypeA, answer: []string{"registry.corp.test. 30 IN A 192.0.2.50"}},
		{qname: "registry.corp.test.", qtype: dns.TypeMX},
		{qname: "other.corp.test.", qtype: dns.TypeA, next: true},
		{qname: "example.com.", qtype: dns.TypeSOA, next: true},
		{qname: "nope.prod.example.com.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: []string{soa}},
		{qname: "api.prod.example.com.", qtype: dns.TypeMX, ns: []string{soa}},
		{qname: "prod.example.com.", qtype: dns.TypeSOA, answer: []string{soa}},
		{qname: "prod.example.com.", qtype: dns.TypeA, ns: []string{soa}},
		{qname: "_tcp.api.prod.example.com.", qtype: dns.TypeSRV, ns: []string{soa}},
		{qname: "_https._tcp.api.prod.example.com.", qtype: dns.TypeSRV,
			answer: []string{"_https._tcp.api.prod.example.com. 30 IN SRV 0 0 6443 api.prod.example.com."},
			extra:  []string{"api.prod.example.com. 30 IN A 10.0.0.10", "api.prod.example.com. 30 IN AAAA fd00::10"}},
		{qname: "1.0.0.10.in-addr.arpa.", qtype: dns.TypePTR, answer: []string{"1.0.0.10.in-addr.arpa. 30 IN PTR cp-1.prod.example.com."}},
		{qname: "10.0.0.10.in-addr.arpa.", qtype: dns.TypePTR, answer: []string{"10.0.0.10.in-addr.arpa. 30 IN PTR api.prod.example.com."}},
		{qname: "50.2.0.192.in-addr.arpa.", qtype: dns.TypePTR, answer: []string{"50.2.0.192.in-addr.arpa. 30 IN PTR registry.corp.test."}},
		{qname: "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", qtype: dns.TypePTR,
			answer: []string{"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 30 IN PTR cp-1.prod.example.com."}},
		{qname: "99.0.0.10.in-addr.arpa.", qtype: dns.TypePTR, next: true},
	} {
		t.Run(tc.qname+"/"+dns.TypeToString[tc.qtype], func(t *testing.T) {
			r := new(dns.Msg)
			r.SetQuestion(tc.qname, tc.qtype)
			m := rs.answer(r)
			if tc.next {
				if m != nil {
					t.Fatalf("answer(%s) = %v, want nil (forwarded)", tc.qname, m)
				}
				return
			}
			if m == nil {
				t.Fatalf("answer(%s) = nil, want an answer", tc.qname)
			}
			if m.Rcode != tc.rcode || !m.Authoritative {
				t.Errorf("rcode = %s aa=%v, want %s aa=true", dns.RcodeToString[m.Rcode], m.Authoritative, dns.RcodeToString[tc.rcode])
			}
			for _, sec := range []struct {
				name      string
				got, want []dns.RR
			}{{"answer", m.Answer, rrs(t, tc.answer...)}, {"authority", m.Ns, rrs(t, tc.ns...)}, {"additional", m.Extra, rrs(t, tc.extra...)}} {
				if !sameRRs(sec.got, sec.want) {
					t.Errorf("%s = %v, want %v", sec.name, sec.got, sec.want)
				}
			}
		})
	}
}

func TestBuildRecordsErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Records)
		want string
	}{
		{"no zone", func(r *Records) { r.Cluster = "" }, "cluster zone required"},
		{"dotted cluster", func(r *Records) { r.Cluster = "a.b" }, "must be one label"},
		{"dotted node", func(r *Records) { r.Nodes = map[string][]netip.Addr{"a.b": nil} }, "single label"},
		{"v4-compatible", func(r *Records) { r.APIVIPs = []netip.Addr{netip.MustParseAddr("::10.0.0.1")} }, "IPv4-compatible"},
		{"unspecified", func(r *Records) { r.IngressVIPs = []netip.Addr{netip.IPv4Unspecified()} }, "not a usable address"},
		{"bad host", func(r *Records) { r.Hosts = map[string][]netip.Addr{"a..b": nil} }, "not a valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRecords()
			tc.mod(&r)
			_, err := buildRecords(r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("buildRecords = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func netipAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
