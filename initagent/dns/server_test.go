package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
)

// These tests run inside the namespace nstest.Main made: every server
// listens on its own 127.0.0.x:53.

type dnsmasq struct {
	cmd   *exec.Cmd
	addr  string
	log   string
	marks int
}

// startDnsmasq runs a dnsmasq upstream on addr:53 that logs every query.
func startDnsmasq(t *testing.T, addr string, args ...string) *dnsmasq {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (apt-get install dnsmasq-base)")
	}
	d := &dnsmasq{addr: addr, log: t.TempDir() + "/dnsmasq.log"}
	d.cmd = exec.Command("dnsmasq", append([]string{"--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--listen-address=" + addr, "--bind-interfaces", "--port=53", "--log-queries", "--log-facility=" + d.log,
		"--pid-file=", "--user=root", "--group=root"}, args...)...)
	var stderr strings.Builder
	d.cmd.Stderr = &stderr
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dnsmasq on %s:\n%s", addr, stderr.String())
		}
	})
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	t.Cleanup(d.stop)
	waitDNS(t, addr+":53", ".")
	return d
}

func (d *dnsmasq) stop() {
	if d.cmd.ProcessState == nil {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	}
}

// queries counts the queries dnsmasq received for name and type. dnsmasq
// writes its log after answering, in order: a marker query asked now and
// found in the log means every query before it is there too.
func (d *dnsmasq) queries(t *testing.T, qtype, name string) int {
	t.Helper()
	d.marks++
	marker := fmt.Sprintf("mark-%d.sync.test", d.marks)
	m := new(dns.Msg)
	m.SetQuestion(marker+".", dns.TypeTXT)
	if _, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, d.addr+":53"); err != nil {
		t.Fatalf("marker query to dnsmasq: %v", err)
	}
	var log string
	waitFor(t, 5*time.Second, "dnsmasq to log "+marker, func() bool {
		b, err := os.ReadFile(d.log)
		log = string(b)
		return err == nil && strings.Contains(log, "query[TXT] "+marker+" from")
	})
	return strings.Count(log, "query["+qtype+"] "+name+" from")
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}

// addLoopbackAddr puts addr on lo in the tests' namespace, so queries can
// come from it: a pod's or a node's address.
func addLoopbackAddr(t *testing.T, h *netlink.Handle, addr string) {
	t.Helper()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr(addr)
	nl := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
	if err := h.AddrReplace(lo, nl); err != nil {
		t.Fatalf("add %s to lo: %v", addr, err)
	}
	t.Cleanup(func() { _ = h.AddrDel(lo, nl) })
}

// waitDNS waits until something answers on addr.
func waitDNS(t *testing.T, addr, name string) {
	t.Helper()
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeNS)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, _, err := c.Exchange(m, addr); err == nil {
			return
		}
	}
	t.Fatalf("nothing answers DNS on %s", addr)
}

// fakeUpstream is a miekg server on addr:53 (UDP and TCP) with exact control
// over TTLs, SOAs and truncation.
type fakeUpstream struct {
	udp, tcp *dns.Server
	mu       sync.Mutex
	seen     map[string]int // "udp/name" → count
}

func startUpstream(t *testing.T, addr string, h func(w dns.ResponseWriter, r *dns.Msg)) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{seen: map[string]int{}}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.mu.Lock()
		u.seen[w.RemoteAddr().Network()+"/"+r.Question[0].Name]++
		u.mu.Unlock()
		h(w, r)
	})
	pc, err := net.ListenPacket("udp", addr+":53")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr+":53")
	if err != nil {
		t.Fatal(err)
	}
	u.udp = &dns.Server{PacketConn: pc, Handler: handler}
	u.tcp = &dns.Server{Listener: l, Handler: handler}
	for _, s := range []*dns.Server{u.udp, u.tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
	}
	t.Cleanup(func() { u.udp.Shutdown(); u.tcp.Shutdown() })
	return u
}

func (u *fakeUpstream) count(netw, name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[netw+"/"+name]
}

// startServer runs a Server with cfg until the test ends.
func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	nstest.Handle(t)
	if cfg.Cluster == "" {
		cfg.Records = testRecords()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return 5s after cancel")
		}
	})
	waitDNS(t, cfg.Listen[0], "api."+s.records().zone)
	return s
}

func query(t *testing.T, c *dns.Client, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	if c == nil {
		c = &dns.Client{Timeout: 4 * time.Second}
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s %s @%s: %v", name, dns.TypeToString[qtype], server, err)
	}
	return r
}

// firstA returns the first A record's address and TTL, or "" and 0.
func firstA(m *dns.Msg) (string, uint32) {
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String(), a.Hdr.Ttl
		}
	}
	return "", 0
}

func dig(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed (apt-get install dnsutils)")
	}
	out, err := exec.Command("dig", append([]string{"+time=3", "+tries=1"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestLocalAndForwarded(t *testing.T) {
	nstest.Handle(t)
	up := startDnsmasq(t, "127.0.0.2", "--address=/example.test/192.0.2.7", "--local-ttl=60")
	srv := "127.0.0.53:53"
	s := startServer(t, Config{Listen: []string{srv}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.2:53")}})

	for _, netw := range []string{"udp", "tcp"} {
		m := query(t, &dns.Client{Net: netw, Timeout: 2 * time.Second}, srv, "api.prod.example.com.", dns.TypeA)
		if a, _ := firstA(m); a != "10.0.0.10" || !m.Authoritative {
			t.Errorf("%s: api A = %v, want 10.0.0.10 authoritative", netw, m)
		}
	}
	if out := dig(t, "@127.0.0.53", "+short", "cp-1.prod.example.com", "AAAA"); strings.TrimSpace(out) != "fd00::1" {
		t.Errorf("dig cp-1 AAAA = %q, want fd00::1", out)
	}
	if out := dig(t, "@127.0.0.53", "+short", "-x", "10.0.0.1"); strings.TrimSpace(out) != "cp-1.prod.example.com." {
		t.Errorf("dig -x 10.0.0.1 = %q, want cp-1.prod.example.com.", out)
	}
	if out := dig(t, "@127.0.0.53", "nope.prod.example.com"); !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "IN\tSOA") {
		t.Errorf("dig nope.prod.example.com: want NXDOMAIN with SOA, got\n%s", out)
	}
	if up.queries(t, "A", "api.prod.example.com") != 0 {
		t.Error("a local name reached the upstream")
	}

	// Forwarded, then cached: dnsmasq sees one query for five lookups.
	for i := range 5 {
		m := query(t, nil, srv, "www.example.test.", dns.TypeA)
		if a, ttl := firstA(m); a != "192.0.2.7" || ttl > 60 {
			t.Fatalf("lookup %d: www.example.test = %v, want 192.0.2.7 with TTL ≤ 60", i, m)
		}
	}
	if out := dig(t, "@127.0.0.53", "+short", "www.example.test"); strings.TrimSpace(out) != "192.0.2.7" {
		t.Errorf("dig www.example.test = %q, want 192.0.2.7", out)
	}
	if n := up.queries(t, "A", "www.example.test"); n != 1 {
		t.Errorf("dnsmasq saw %d queries for www.example.test, want 1 (the rest from the cache)", n)
	}
	st := s.Status()
	if st.CacheHits < 5 || st.Forwarded != 1 || st.CacheEntries != 1 || len(st.Upstreams) != 1 || !st.Upstreams[0].Healthy {
		t.Errorf("Status = %+v, want ≥5 cache hits, 1 forwarded, 1 entry, a healthy upstream", st)
	}
}

func TestUpstreamOutageServesStale(t *testing.T) {
	nstest.Handle(t)
	up := startDnsmasq(t, "127.0.0.3", "--address=/example.test/192.0.2.7", "--local-ttl=1")
	srv := "127.0.0.54:53"
	clk := newFakeClock()
	s := startServer(t, Config{Listen: []string{srv}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.3:53")},
		HealthInterval: 100 * time.Millisecond, now: clk.now})

	if a, _ := firstA(query(t, nil, srv, "old.example.test.", dns.TypeA)); a != "192.0.2.7" {
		t.Fatalf("old.example.test = %q, want 192.0.2.7", a)
	}
	up.stop()
	clk.add(1100 * time.Millisecond) // the 1 s TTL has expired

	m := query(t, nil, srv, "old.example.test.", dns.TypeA)
	if a, ttl := firstA(m); a != "192.0.2.7" || ttl != staleTTL || m.Rcode != dns.RcodeSuccess {
		t.Errorf("with the upstream down, old.example.test = %v, want the stale 192.0.2.7 with TTL %d", m, staleTTL)
	}
	if m := query(t, nil, srv, "api.prod.example.com.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Errorf("with the upstream down, api = %v, want an answer", m)
	}
	if m := query(t, nil, srv, "never.example.test.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("with the upstream down, an uncached name = %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	st := s.Status()
	if st.Stale == 0 || st.Upstreams[0].Healthy {
		t.Errorf("Status = %+v, want stale answers and the upstream down", st)
	}

	// The upstream comes back with new data: fresh answers again.
	// The stale answer stops at maxStale past expiry.
	clk.add(maxStale)
	if m := query(t, nil, srv, "old.example.test.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("%s past expiry with the upstream down, old.example.test = %v, want SERVFAIL", maxStale, m)
	}
	startDnsmasq(t, "127.0.0.3", "--address=/example.test/192.0.2.8", "--local-ttl=1")
	// The cache holds nothing fresh, so the next query goes upstream even
	// though the upstream is still marked down (all down: all are tried).
	if a, ttl := firstA(query(t, nil, srv, "old.example.test.", dns.TypeA)); a != "192.0.2.8" || ttl != 1 {
		t.Fatalf("after the upstream came back, old.example.test = %s TTL %d, want fresh 192.0.2.8 TTL 1", a, ttl)
	}
	if !s.Status().Upstreams[0].Healthy {
		t.Error("upstream still marked down after it answered")
	}
}

func TestTTLAndNegativeCaching(t *testing.T) {
	nstest.Handle(t)
	up := startUpstream(t, "127.0.0.4", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		switch r.Question[0].Name {
		case "short.test.":
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "short.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(192, 0, 2, 1)}}
		case "nx.test.", "nosoa.test.":
			m.Rcode = dns.RcodeNameError
			if r.Question[0].Name == "nx.test." {
				m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
					Ns: "ns.test.", Mbox: "h.test.", Serial: 1, Minttl: 1}}
			}
		}
		w.WriteMsg(m)
	})
	srv := "127.0.0.55:53"
	clk := newFakeClock()
	startServer(t, Config{Listen: []string{srv}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.4:53")}, now: clk.now})

	for range 3 {
		query(t, nil, srv, "short.test.", dns.TypeA)
		if m := query(t, nil, srv, "nx.test.", dns.TypeA); m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 {
			t.Fatalf("nx.test = %v, want NXDOMAIN with the SOA", m)
		}
		query(t, nil, srv, "nosoa.test.", dns.TypeA)
	}
	for name, want := range map[string]int{"short.test.": 1, "nx.test.": 1, "nosoa.test.": 3} {
		if n := up.count("udp", name); n != want {
			t.Errorf("upstream saw %d queries for %s, want %d", n, name, want)
		}
	}
	clk.add(900 * time.Millisecond) // not yet expired
	query(t, nil, srv, "short.test.", dns.TypeA)
	query(t, nil, srv, "nx.test.", dns.TypeA)
	for _, name := range []string{"short.test.", "nx.test."} {
		if n := up.count("udp", name); n != 1 {
			t.Errorf("0.9 s after caching, upstream saw %d queries for %s, want 1", n, name)
		}
	}
	clk.add(200 * time.Millisecond) // both 1 s TTLs expire
	query(t, nil, srv, "short.test.", dns.TypeA)
	query(t, nil, srv, "nx.test.", dns.TypeA)
	for _, name := range []string{"short.test.", "nx.test."} {
		if n := up.count("udp", name); n != 2 {
			t.Errorf("after expiry, upstream saw %d queries for %s, want 2", n, name)
		}
	}
}

func TestTruncationRetriesOverTCP(t *testing.T) {
	nstest.Handle(t)
	up := startUpstream(t, "127.0.0.5", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if w.RemoteAddr().Network() == "udp" {
			m.Truncated = true
		} else {
			for i := range 60 {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, byte(i))})
			}
		}
		w.WriteMsg(m)
	})
	srv := "127.0.0.56:53"
	startServer(t, Config{Listen: []string{srv}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.5:53")}})

	c := &dns.Client{Timeout: 3 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("big.test.", dns.TypeA)
	m.SetEdns0(4096, false)
	r, _, err := c.Exchange(m, srv)
	if err != nil || len(r.Answer) != 60 || r.Truncated {
		t.Fatalf("big.test with EDNS 4096 = %v, %v; want 60 records, not truncated", r, err)
	}
	if up.count("tcp", "big.test.") != 1 {
		t.Errorf("upstream saw %d TCP queries, want 1 (retry after TC)", up.count("tcp", "big.test."))
	}
	// A client without EDNS gets TC (512 bytes), and dig retries over TCP.
	r = query(t, nil, srv, "big.test.", dns.TypeA)
	r.Compress = true
	if !r.Truncated || r.Len() > dns.MinMsgSize || len(r.Answer) == 60 {
		t.Errorf("big.test without EDNS: TC=%v len=%d, %d records; want TC within 512 bytes", r.Truncated, r.Len(), len(r.Answer))
	}
	if out := dig(t, "@127.0.0.56", "+noedns", "+short", "big.test"); strings.Count(out, "192.0.2.") != 60 {
		t.Errorf("dig big.test = %d addresses, want 60:\n%s", strings.Count(out, "192.0.2."), out)
	}
}

// fromClient is a client whose queries come from src.
func fromClient(src string) *dns.Client {
	return &dns.Client{Timeout: 2 * time.Second, Dialer: &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}}}
}

func TestNoOpenResolver(t *testing.T) {
	nstest.Handle(t)
	startDnsmasq(t, "127.0.0.6", "--address=/example.test/192.0.2.7", "--local-ttl=60")
	srv := "127.0.0.57:53"
	s := startServer(t, Config{Listen: []string{srv}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.6:53")},
		AllowedNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})

	outsider := fromClient("127.0.0.99")
	if a, _ := firstA(query(t, outsider, srv, "api.prod.example.com.", dns.TypeA)); a != "10.0.0.10" {
		t.Errorf("outsider asking a local name got %q, want 10.0.0.10", a)
	}
	// Warm the cache from an allowed client: the outsider must not read it either.
	if a, _ := firstA(query(t, fromClient("127.0.0.1"), srv, "www.example.test.", dns.TypeA)); a != "192.0.2.7" {
		t.Errorf("allowed client got %q, want 192.0.2.7", a)
	}
	if m := query(t, outsider, srv, "www.example.test.", dns.TypeA); m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
		t.Errorf("outsider asking a forwarded name got %v, want REFUSED", m)
	}
	if s.Status().Refused != 1 {
		t.Errorf("Refused = %d, want 1", s.Status().Refused)
	}
	s.SetAllowedNets([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	if m := query(t, outsider, srv, "www.example.test.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Errorf("after SetAllowedNets, outsider got %s, want NOERROR", dns.RcodeToString[m.Rcode])
	}
}

// answered sends n queries for name from src over netw and counts the
// NOERROR and REFUSED replies.
func answered(t *testing.T, netw, src, srv, name string, n int) (ok, refused int) {
	t.Helper()
	c := fromClient(src)
	c.Net = netw
	if netw == "tcp" {
		c.Dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	for range n {
		switch query(t, c, srv, name, dns.TypeA).Rcode {
		case dns.RcodeSuccess:
			ok++
		case dns.RcodeRefused:
			refused++
		}
	}
	return ok, refused
}

func TestRateLimit(t *testing.T) {
	h := nstest.Handle(t)
	addLoopbackAddr(t, h, "10.244.0.7")
	addLoopbackAddr(t, h, "10.244.0.8")
	srv := "127.0.0.58:53"
	clk := newFakeClock() // stands still: no token comes back during the test
	s := startServer(t, Config{Listen: []string{srv}, RateLimit: RateLimit{QPS: 1, Burst: 5}, now: clk.now})
	if ok, refused := answered(t, "udp", "10.244.0.7", srv, "api.prod.example.com.", 10); ok != 5 || refused != 5 {
		t.Errorf("10 queries at once with burst 5: %d answered, %d refused; want 5 and 5", ok, refused)
	}
	if ok, _ := answered(t, "udp", "10.244.0.8", srv, "api.prod.example.com.", 1); ok != 1 {
		t.Error("another client was refused, want NOERROR")
	}
	clk.add(2 * time.Second) // two tokens back
	if ok, refused := answered(t, "tcp", "10.244.0.7", srv, "api.prod.example.com.", 3); ok != 2 || refused != 1 {
		t.Errorf("2 s later at 1 qps: %d answered, %d refused; want 2 and 1", ok, refused)
	}
	if s.Status().RateLimited != 6 {
		t.Errorf("RateLimited = %d, want 6", s.Status().RateLimited)
	}
}

// TestRateLimitSparesTheNode: the per-client limit is for pods and other
// clients; the node's own processes (loopback, its addresses, even one that
// appears after the start) are never refused, and a new node address may
// recurse once SetNodeAddrs has it.
func TestRateLimitSparesTheNode(t *testing.T) {
	h := nstest.Handle(t)
	startUpstream(t, "127.0.0.12", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 12)}}
		w.WriteMsg(m)
	})
	srv := "127.0.0.71:53"
	addrs, err := HostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	addLoopbackAddr(t, h, "10.244.0.9") // a pod: on lo here, but not among the node's addresses
	s := startServer(t, Config{Listen: []string{srv}, RateLimit: RateLimit{QPS: 1, Burst: 5}, now: newFakeClock().now,
		Upstreams:   []netip.AddrPort{netip.MustParseAddrPort("127.0.0.12:53")},
		AllowedNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.244.0.0/16")},
		NodeAddrs:   addrs})

	for _, netw := range []string{"udp", "tcp"} {
		for _, name := range []string{"api.prod.example.com.", "fwd.test."} {
			if ok, _ := answered(t, netw, "127.0.0.1", srv, name, 20); ok != 20 {
				t.Errorf("node process on loopback, %s %s at 1 qps: %d of 20 answered, want all", netw, name, ok)
			}
		}
	}
	if ok, refused := answered(t, "udp", "10.244.0.9", srv, "api.prod.example.com.", 20); ok != 5 || refused != 15 {
		t.Errorf("pod at 1 qps, burst 5: %d answered, %d refused; want 5 and 15", ok, refused)
	}

	// DHCP gives the node a new address: the agent passes it on.
	addLoopbackAddr(t, h, "10.99.0.1")
	if ok, _ := answered(t, "udp", "10.99.0.1", srv, "fwd.test.", 1); ok != 0 {
		t.Error("an address the server does not know as the node's may recurse")
	}
	addrs, err = HostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	if !s.SetNodeAddrs(addrs) {
		t.Errorf("SetNodeAddrs(%v) = no change, want the new 10.99.0.1", addrs)
	}
	if s.SetNodeAddrs(addrs) {
		t.Error("SetNodeAddrs with the same addresses again = changed")
	}
	for _, name := range []string{"api.prod.example.com.", "fwd.test."} {
		if ok, _ := answered(t, "udp", "10.99.0.1", srv, name, 20); ok != 20 {
			t.Errorf("node process on its new address, %s at 1 qps: %d of 20 answered, want all", name, ok)
		}
	}
	if st := s.Status(); st.RateLimited != 15 || st.Refused != 1 {
		t.Errorf("RateLimited = %d, Refused = %d; want the pod's 15 and the unknown address's 1", st.RateLimited, st.Refused)
	}
}

func TestSetUpstreamsAndRecords(t *testing.T) {
	nstest.Handle(t)
	answer := func(ip net.IP) func(w dns.ResponseWriter, r *dns.Msg) {
		return func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip}}
			w.WriteMsg(m)
		}
	}
	startUpstream(t, "127.0.0.10", answer(net.IPv4(192, 0, 2, 10)))
	startUpstream(t, "127.0.0.11", answer(net.IPv4(192, 0, 2, 11)))
	srv := "127.0.0.59:53"
	s := startServer(t, Config{Listen: []string{srv}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.10:53")}})
	if a, _ := firstA(query(t, nil, srv, "one.test.", dns.TypeA)); a != "192.0.2.10" {
		t.Errorf("one.test = %q, want 192.0.2.10", a)
	}
	if err := s.SetUpstreams([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.11:53")}); err != nil {
		t.Fatal(err)
	}
	if a, _ := firstA(query(t, nil, srv, "two.test.", dns.TypeA)); a != "192.0.2.11" {
		t.Errorf("after SetUpstreams, two.test = %q, want 192.0.2.11", a)
	}
	if a, _ := firstA(query(t, nil, srv, "one.test.", dns.TypeA)); a != "192.0.2.10" {
		t.Errorf("after SetUpstreams, cached one.test = %q, want 192.0.2.10 (the cache is kept)", a)
	}
	r := testRecords()
	r.APIVIPs = []netip.Addr{netip.MustParseAddr("10.0.0.99")}
	if err := s.SetRecords(r); err != nil {
		t.Fatal(err)
	}
	if a, _ := firstA(query(t, nil, srv, "api.prod.example.com.", dns.TypeA)); a != "10.0.0.99" {
		t.Errorf("after SetRecords, api = %q, want 10.0.0.99", a)
	}
	if err := s.SetUpstreams([]netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")}); err == nil {
		t.Error("SetUpstreams(0.0.0.0:53) = nil, want an error")
	}
}

// TestMalformedPackets sends garbage over UDP and TCP; the server must keep
// answering.
func TestMalformedPackets(t *testing.T) {
	nstest.Handle(t)
	srv := "127.0.0.60:53"
	startServer(t, Config{Listen: []string{srv}, RateLimit: RateLimit{QPS: -1}})
	good := new(dns.Msg)
	good.SetQuestion("api.prod.example.com.", dns.TypeA)
	packed, _ := good.Pack()
	var garbage [][]byte
	for _, s := range fuzzSeeds() {
		garbage = append(garbage, s)
	}
	for i := range len(packed) {
		garbage = append(garbage, packed[:i])
	}
	u, err := net.Dial("udp", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, g := range garbage {
		u.Write(g)
	}
	for _, g := range garbage {
		c, err := net.Dial("tcp", srv)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(append([]byte{byte(len(g) >> 8), byte(len(g))}, g...))
		c.Close()
	}
	// A length prefix with no body must not hold the server.
	c, _ := net.Dial("tcp", srv)
	c.Write([]byte{0xff, 0xff, 1, 2})
	defer c.Close()
	for _, netw := range []string{"udp", "tcp"} {
		if a, _ := firstA(query(t, &dns.Client{Net: netw, Timeout: 2 * time.Second}, srv, "api.prod.example.com.", dns.TypeA)); a != "10.0.0.10" {
			t.Errorf("after garbage, %s query = %q, want 10.0.0.10", netw, a)
		}
	}
}

func TestRunErrorsAndShutdown(t *testing.T) {
	nstest.Handle(t)
	l, err := net.ListenPacket("udp", "127.0.0.61:53")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := New(Config{Listen: []string{"127.0.0.62:53", "127.0.0.61:53"}, Records: testRecords()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "127.0.0.61:53") {
		t.Errorf("Run with a busy address = %v, want an error naming it", err)
	}
	// The first address must have been released.
	if pc, err := net.ListenPacket("udp", "127.0.0.62:53"); err != nil {
		t.Errorf("127.0.0.62:53 still bound after Run failed: %v", err)
	} else {
		pc.Close()
	}
	for _, cfg := range []Config{
		{Listen: []string{"localhost:53"}, Records: testRecords()},
		{Records: Records{}},
		{Records: testRecords(), Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:0")}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) = nil error, want one", cfg)
		}
	}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	s, _ = New(Config{Listen: []string{"127.0.0.63:53"}, Records: testRecords(), HealthInterval: 10 * time.Millisecond,
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.64:53")}})
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	waitDNS(t, "127.0.0.63:53", "api.prod.example.com.")
	// Queries in flight over UDP and TCP while shutting down.
	for _, netw := range []string{"udp", "tcp"} {
		query(t, &dns.Client{Net: netw, Timeout: time.Second}, "127.0.0.63:53", "fwd.test.", dns.TypeA)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, _, err := (&dns.Client{Timeout: 300 * time.Millisecond}).Exchange(new(dns.Msg).SetQuestion("api.prod.example.com.", dns.TypeA), "127.0.0.63:53"); err == nil {
		t.Error("server still answers after Run returned")
	}
	for deadline := time.Now().Add(2 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Run returned, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
	}
}

// The cluster's service zone goes to its own server (CoreDNS in a cluster),
// everything else to the upstreams; the node's own names never leave.
func TestStubZone(t *testing.T) {
	nstest.Handle(t)
	up := startDnsmasq(t, "127.0.0.2", "--address=/example.test/192.0.2.7", "--address=/svc.cluster.local/198.51.100.1")
	cluster := startDnsmasq(t, "127.0.0.3", "--address=/svc.cluster.local/10.96.0.20")
	srv := "127.0.0.53:53"
	s := startServer(t, Config{Listen: []string{srv}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.2:53")},
		Stubs: []Stub{{Zone: "svc.cluster.local", Servers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.3:53")}}}})

	if a, _ := firstA(query(t, nil, srv, "web.default.svc.cluster.local.", dns.TypeA)); a != "10.96.0.20" {
		t.Errorf("web.default.svc.cluster.local = %q, want the stub's 10.96.0.20", a)
	}
	if a, _ := firstA(query(t, nil, srv, "www.example.test.", dns.TypeA)); a != "192.0.2.7" {
		t.Errorf("www.example.test = %q, want the upstream's 192.0.2.7", a)
	}
	if cluster.queries(t, "A", "www.example.test") != 0 || up.queries(t, "A", "web.default.svc.cluster.local") != 0 {
		t.Error("a name went to the wrong server")
	}
	// The stub down: its names fail, the node's own and the rest still answer.
	cluster.stop()
	if m := query(t, nil, srv, "other.default.svc.cluster.local.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("stub down: other.default.svc = %s, want SERVFAIL (never the upstreams' answer)", dns.RcodeToString[m.Rcode])
	}
	if a, _ := firstA(query(t, nil, srv, "api.prod.example.com.", dns.TypeA)); a != "10.0.0.10" {
		t.Errorf("stub down: api = %q, want 10.0.0.10", a)
	}
	if a, _ := firstA(query(t, nil, srv, "new.example.test.", dns.TypeA)); a != "192.0.2.7" {
		t.Errorf("stub down: new.example.test = %q, want 192.0.2.7", a)
	}
	var stub *UpstreamStatus
	for _, u := range s.Status().Upstreams {
		if u.Zone == "svc.cluster.local" {
			stub = &u
		}
	}
	if stub == nil || stub.Healthy {
		t.Errorf("status upstreams %+v: want the stub listed and down", s.Status().Upstreams)
	}
	if _, err := New(Config{Records: testRecords(), Stubs: []Stub{{Zone: ".", Servers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.3:53")}}}}); err == nil {
		t.Error("a stub for the root zone was accepted")
	}
}

// A stub zone's server (CoreDNS) sends the names of the zone it has no
// record for on to its own upstream, which is this server: the query comes
// back once, carrying the stub mark, and goes to the upstreams instead of
// round the loop again. A known name is answered by the stub's server.
func TestStubLoopGoesUpstream(t *testing.T) {
	nstest.Handle(t)
	srv := "127.0.0.53:53"
	up := startDnsmasq(t, "127.0.0.2", "--ptr-record=20.0.96.10.in-addr.arpa,upstream-knows.example.test")
	fallthroughClient := &dns.Client{Timeout: 3 * time.Second}
	cluster := startUpstream(t, "127.0.0.3", func(w dns.ResponseWriter, r *dns.Msg) {
		if r.Question[0].Name == "10.0.96.10.in-addr.arpa." {
			m := new(dns.Msg)
			m.SetReply(r)
			m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 5},
				Ptr: "kube-dns.kube-system.svc.cluster.local."})
			_ = w.WriteMsg(m)
			return
		}
		// CoreDNS's kubernetes plugin falls through, its forward plugin
		// sends the query as received to the node's resolver.
		m, _, err := fallthroughClient.Exchange(r, srv)
		if err != nil {
			m = new(dns.Msg)
			m.SetRcode(r, dns.RcodeServerFailure)
		}
		m.Id = r.Id
		_ = w.WriteMsg(m)
	})
	zones, err := ReverseZones(netip.MustParsePrefix("10.96.0.0/12"))
	if err != nil {
		t.Fatal(err)
	}
	var stubs []Stub
	for _, z := range zones {
		stubs = append(stubs, Stub{Zone: z, Servers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.3:53")}})
	}
	startServer(t, Config{Listen: []string{srv}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.2:53")}, Stubs: stubs})

	m := query(t, nil, srv, "10.0.96.10.in-addr.arpa.", dns.TypePTR)
	if len(m.Answer) != 1 || m.Answer[0].(*dns.PTR).Ptr != "kube-dns.kube-system.svc.cluster.local." {
		t.Errorf("PTR 10.96.0.10 = %v, want the stub's kube-dns name", m.Answer)
	}
	if m.IsEdns0() != nil {
		t.Error("a query without EDNS got an OPT record back")
	}
	m = query(t, nil, srv, "20.0.96.10.in-addr.arpa.", dns.TypePTR)
	if len(m.Answer) != 1 || m.Answer[0].(*dns.PTR).Ptr != "upstream-knows.example.test." {
		t.Errorf("PTR 10.96.0.20 = %s %v, want the upstream's name through the stub's fallthrough", dns.RcodeToString[m.Rcode], m.Answer)
	}
	if n := cluster.count("udp", "20.0.96.10.in-addr.arpa."); n != 1 {
		t.Errorf("the stub's server saw 10.96.0.20's reverse name %d times, want once (no loop)", n)
	}
	if n := up.queries(t, "PTR", "20.0.96.10.in-addr.arpa"); n != 1 {
		t.Errorf("the upstream saw 10.96.0.20's reverse name %d times, want once", n)
	}
	if n := cluster.count("udp", "9.9.9.10.in-addr.arpa."); n != 0 {
		t.Errorf("a name outside 10.96.0.0/12 went to the stub (%d times)", n)
	}
}

func TestReverseZones(t *testing.T) {
	for _, c := range []struct {
		prefix string
		n      int
		first  string
		last   string
	}{
		{"10.96.0.0/12", 16, "96.10.in-addr.arpa.", "111.10.in-addr.arpa."},
		{"10.96.0.0/16", 1, "96.10.in-addr.arpa.", "96.10.in-addr.arpa."},
		{"10.96.5.0/24", 1, "5.96.10.in-addr.arpa.", "5.96.10.in-addr.arpa."},
		{"192.168.0.0/23", 2, "0.168.192.in-addr.arpa.", "1.168.192.in-addr.arpa."},
		{"10.96.0.128/25", 128, "128.0.96.10.in-addr.arpa.", "255.0.96.10.in-addr.arpa."},
		{"0.0.0.0/0", 1, "in-addr.arpa.", "in-addr.arpa."},
		{"fd00:10:96::/112", 1, "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.", ""},
		{"fd00:10:96::/110", 4, "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.",
			"3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."},
	} {
		zones, err := ReverseZones(netip.MustParsePrefix(c.prefix))
		if err != nil {
			t.Fatalf("%s: %v", c.prefix, err)
		}
		last := c.last
		if last == "" {
			last = c.first
		}
		if len(zones) != c.n || zones[0] != c.first || zones[len(zones)-1] != last {
			t.Errorf("%s: %d zones %s … %s, want %d %s … %s", c.prefix, len(zones), zones[0], zones[len(zones)-1], c.n, c.first, last)
		}
	}
}
