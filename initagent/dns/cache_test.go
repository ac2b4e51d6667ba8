package dns

import (
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeClock is a clock that moves only when told; safe for concurrent use,
// so a running server's cache and rate limiter can use it (Config.now).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1e9, 0)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func msgFor(t *testing.T, qname string, qtype uint16, rcode int, answer, ns []string) *dns.Msg {
	r := new(dns.Msg)
	r.SetQuestion(qname, qtype)
	m := new(dns.Msg)
	m.SetRcode(r, rcode)
	m.Answer = rrs(t, answer...)
	m.Ns = rrs(t, ns...)
	return m
}

func TestTTLOf(t *testing.T) {
	soa := "test. 300 IN SOA ns.test. h.test. 1 2 3 4 60"
	for _, tc := range []struct {
		name string
		m    *dns.Msg
		want uint32
	}{
		{"min of answers", msgFor(t, "a.test.", dns.TypeA, 0, []string{"a.test. 100 IN CNAME b.test.", "b.test. 40 IN A 192.0.2.1"}, nil), 40},
		{"capped", msgFor(t, "a.test.", dns.TypeA, 0, []string{"a.test. 86400 IN A 192.0.2.1"}, nil), maxTTL},
		{"nxdomain uses SOA minimum", msgFor(t, "a.test.", dns.TypeA, dns.RcodeNameError, nil, []string{soa}), 60},
		{"nodata uses SOA TTL when smaller", msgFor(t, "a.test.", dns.TypeA, 0, nil, []string{"test. 10 IN SOA ns.test. h.test. 1 2 3 4 60"}), 10},
		{"nxdomain without SOA", msgFor(t, "a.test.", dns.TypeA, dns.RcodeNameError, nil, nil), 0},
		{"servfail", msgFor(t, "a.test.", dns.TypeA, dns.RcodeServerFailure, nil, nil), 0},
		{"zero TTL", msgFor(t, "a.test.", dns.TypeA, 0, []string{"a.test. 0 IN A 192.0.2.1"}, nil), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ttlOf(tc.m); got != tc.want {
				t.Errorf("ttlOf = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestCacheAgeStaleEvict(t *testing.T) {
	clk := newFakeClock()
	c := newCache(2, clk.now)
	r := new(dns.Msg)
	r.SetQuestion("A.test.", dns.TypeA)
	r.SetEdns0(1232, false)
	k := keyOf(r)
	c.set(k, msgFor(t, "a.test.", dns.TypeA, 0, []string{"a.test. 10 IN A 192.0.2.1"}, nil))

	clk.add(4 * time.Second)
	m := c.get(k, r, false)
	if m == nil || m.Answer[0].Header().Ttl != 6 || m.Question[0].Name != "A.test." || m.Id != r.Id {
		t.Fatalf("get after 4s = %v, want TTL 6 with the client's question and id", m)
	}
	clk.add(7 * time.Second)
	if m := c.get(k, r, false); m != nil {
		t.Fatalf("get after expiry = %v, want nil", m)
	}
	m = c.get(k, r, true)
	if m == nil || m.Answer[0].Header().Ttl != staleTTL {
		t.Fatalf("stale get = %v, want TTL %d", m, staleTTL)
	}
	if o := m.IsEdns0(); o == nil || len(o.Option) != 1 || o.Option[0].(*dns.EDNS0_EDE).InfoCode != dns.ExtendedErrorCodeStaleAnswer {
		t.Errorf("stale answer lacks EDE Stale Answer: %v", m.IsEdns0())
	}
	clk.add(maxStale + time.Second)
	if m := c.get(k, r, true); m != nil {
		t.Errorf("stale get after maxStale = %v, want nil", m)
	}

	for _, n := range []string{"b.test.", "c.test.", "d.test."} {
		r := new(dns.Msg)
		r.SetQuestion(n, dns.TypeA)
		c.set(keyOf(r), msgFor(t, n, dns.TypeA, 0, []string{n + " 10 IN A 192.0.2.1"}, nil))
	}
	if n := c.len(); n != 2 {
		t.Errorf("len = %d, want the bound 2", n)
	}
}

func TestLimiter(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(10, 5, clk.now)
	a := netipAddr("192.0.2.1")
	n := 0
	for range 20 {
		if l.allow(a) {
			n++
		}
	}
	if n != 5 {
		t.Errorf("allowed %d of 20 at once, want the burst 5", n)
	}
	if !l.allow(netipAddr("192.0.2.2")) {
		t.Error("another client is limited too, want a bucket per client")
	}
	clk.add(300 * time.Millisecond)
	n = 0
	for range 20 {
		if l.allow(a) {
			n++
		}
	}
	if n != 3 {
		t.Errorf("allowed %d after 300ms at 10 qps, want 3", n)
	}
	clk.add(time.Minute)
	l.gc()
	if len(l.buckets) != 0 {
		t.Errorf("%d buckets after gc, want 0", len(l.buckets))
	}
}
