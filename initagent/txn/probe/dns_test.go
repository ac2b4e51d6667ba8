package probe

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startDnsmasq runs dnsmasq as a DNS server on 10.9.0.1 in the peer netns:
// probe.test has an A record, other names under test. are NXDOMAIN, and
// anything else is REFUSED (no upstream servers).
func (l *lab) startDnsmasq(t *testing.T) {
	t.Helper()
	path, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Skip("dnsmasq not installed (apt-get install dnsmasq-base)")
	}
	var stderr bytes.Buffer
	cmd := exec.Command(path, "--no-daemon", "--conf-file=/dev/null", "--no-hosts", "--log-facility=-",
		"--port=53", "--listen-address=10.9.0.1", "--bind-interfaces", "--no-resolv",
		"--address=/probe.test/10.9.0.50", "--local=/test/")
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	l.inPeer(t, cmd.Start)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("dnsmasq output:\n%s", stderr.String())
		}
	})
	// Wait until it answers.
	m := new(dns.Msg).SetQuestion("probe.test.", dns.TypeA)
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		c := &dns.Client{Timeout: 200 * time.Millisecond}
		if _, _, err := c.Exchange(m, "10.9.0.1:53"); err == nil {
			return
		} else if time.Since(start) > 5*time.Second {
			t.Fatalf("dnsmasq does not answer on 10.9.0.1:53 after 5s: %v\n%s", err, stderr.String())
		}
	}
}

// startTestDNS runs a miekg/dns server on 10.9.0.3:53 (UDP and TCP) in the
// peer netns that answers by name:
//
//	refused.test.   REFUSED
//	servfail.test.  SERVFAIL
//	big.test.       truncated (TC, no records) over UDP, an A record over TCP
//	garbage.test.   a response that does not parse
//	anything else   NOERROR, no records
//
// It returns a counter of queries that came over TCP.
func (l *lab) startTestDNS(t *testing.T) *atomic.Int32 {
	t.Helper()
	var tcpQueries atomic.Int32
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		_, overTCP := w.RemoteAddr().(*net.TCPAddr)
		if overTCP {
			tcpQueries.Add(1)
		}
		switch r.Question[0].Name {
		case "refused.test.":
			m.Rcode = dns.RcodeRefused
		case "servfail.test.":
			m.Rcode = dns.RcodeServerFailure
		case "big.test.":
			if !overTCP {
				m.Truncated = true
				break
			}
			rr, _ := dns.NewRR("big.test. 60 IN A 10.9.0.60")
			m.Answer = append(m.Answer, rr)
		case "garbage.test.":
			// The query's ID, ANCOUNT 1, and an answer whose owner name
			// has a 5-byte label with only 1 byte left in the message.
			_, _ = w.Write([]byte{byte(r.Id >> 8), byte(r.Id), 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0, 5, 'a'})
			return
		}
		_ = w.WriteMsg(m)
	})
	udp := &dns.Server{PacketConn: l.listenPacket(t, "10.9.0.3:53"), Handler: handler}
	tcp := &dns.Server{Listener: l.listen(t, "10.9.0.3:53"), Handler: handler}
	for _, srv := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.ActivateAndServe()
		}()
		<-started
		t.Cleanup(func() {
			_ = srv.Shutdown()
			<-done
		})
	}
	return &tcpQueries
}

func TestDNS(t *testing.T) {
	l := newLab(t)
	l.startDnsmasq(t)
	tcpQueries := l.startTestDNS(t)
	dnsmasq := netip.MustParseAddr("10.9.0.1")
	test := netip.MustParseAddr("10.9.0.3")
	for _, c := range []probeCase{
		{name: "dnsmasq answers", probe: DNS(dnsmasq, "probe.test")},
		{name: "NXDOMAIN is an answer", probe: DNS(dnsmasq, "nx.test")},
		{name: "dnsmasq without upstream refuses the root", probe: DNS(dnsmasq, ""),
			want: ErrWrongAnswer, wantMsg: []string{"dns 10.9.0.1", `REFUSED to ". NS"`}},
		{name: "default query", probe: DNS(test, "")},
		{name: "REFUSED", probe: DNS(test, "refused.test"),
			want: ErrWrongAnswer, wantMsg: []string{"dns 10.9.0.3", `server answered REFUSED to "refused.test. A"`}},
		{name: "SERVFAIL", probe: DNS(test, "servfail.test"),
			want: ErrWrongAnswer, wantMsg: []string{"SERVFAIL", "upstream"}},
		{name: "truncated over UDP, retried over TCP", probe: DNS(test, "big.test")},
		{name: "malformed", probe: DNS(test, "garbage.test"),
			want: ErrWrongAnswer, wantMsg: []string{"malformed answer"}},
		{name: "nobody", probe: DNS(netip.MustParseAddr("10.9.0.99"), "probe.test"), timeout: 700 * time.Millisecond,
			want: ErrTimeout, wantMsg: []string{"dns 10.9.0.99", `no answer to "probe.test. A"`, "listening on port 53"}},
		{name: "host up, no DNS server", probe: DNS(netip.MustParseAddr("10.9.0.4"), "probe.test"),
			want: ErrRefused, wantMsg: []string{"dns 10.9.0.4", "refused"}},
	} {
		t.Run(c.name, c.run)
	}
	if n := tcpQueries.Load(); n != 1 {
		t.Errorf("test server saw %d queries over TCP, want 1 (the retry of the truncated answer)", n)
	}
}

// TestDNSCancel checks that a canceled probe says so rather than timeout.
func TestDNSCancel(t *testing.T) {
	newLab(t)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	err := DNS(netip.MustParseAddr("10.9.0.99"), "").Run(ctx)
	if !errors.Is(err, ErrCanceled) {
		t.Errorf("Run() after cancel = %v, want kind %q", err, ErrCanceled)
	}
}
