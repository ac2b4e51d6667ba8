package netfilter

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// egressLab is three network namespaces: a pod behind a node that routes
// it to an outside host. The outside host routes the pod network back
// through the node, so what it sees as the source is exactly what the
// node's NAT made of it.
//
//	pod (10.244.1.2, fd00:244:1::2) ─ node ─ outside (203.0.113.2, 2001:db8:1::2)
//	                          203.0.113.1 + .50, 2001:db8:1::1 + ::50
type egressLab struct {
	t                  *testing.T
	pod, node, out     string // named namespaces
	conn               *nftables.Conn
	listen4, listen6   net.Listener
	pod4, pod6         netip.Addr
	primary4, snat4    netip.Addr
	primary6, snat6    netip.Addr
	outside4, outside6 netip.Addr
}

func newEgressLab(t *testing.T) *egressLab {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables)")
	}
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	l := &egressLab{t: t, pod: "nfpod" + id, node: "nfnode" + id, out: "nfout" + id,
		pod4: netip.MustParseAddr("10.244.1.2"), pod6: netip.MustParseAddr("fd00:244:1::2"),
		primary4: netip.MustParseAddr("203.0.113.1"), snat4: netip.MustParseAddr("203.0.113.50"),
		primary6: netip.MustParseAddr("2001:db8:1::1"), snat6: netip.MustParseAddr("2001:db8:1::50"),
		outside4: netip.MustParseAddr("203.0.113.2"), outside6: netip.MustParseAddr("2001:db8:1::2")}
	for _, ns := range []string{l.pod, l.node, l.out} {
		l.ip("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	l.ip("-n", l.node, "link", "add", "vp0", "type", "veth", "peer", "name", "vp1", "netns", l.pod)
	l.ip("-n", l.node, "link", "add", "vo0", "type", "veth", "peer", "name", "vo1", "netns", l.out)
	for _, c := range [][]string{
		{"-n", l.node, "addr", "add", "10.244.1.1/24", "dev", "vp0"},
		{"-n", l.node, "addr", "add", "fd00:244:1::1/64", "dev", "vp0", "nodad"},
		{"-n", l.node, "addr", "add", "203.0.113.1/24", "dev", "vo0"},
		{"-n", l.node, "addr", "add", "203.0.113.50/24", "dev", "vo0"},
		{"-n", l.node, "addr", "add", "2001:db8:1::1/64", "dev", "vo0", "nodad"},
		// Deprecated, so the kernel's source selection (masquerade) keeps ::1.
		{"-n", l.node, "addr", "add", "2001:db8:1::50/64", "dev", "vo0", "nodad", "preferred_lft", "0"},
		{"-n", l.pod, "addr", "add", "10.244.1.2/24", "dev", "vp1"},
		{"-n", l.pod, "addr", "add", "fd00:244:1::2/64", "dev", "vp1", "nodad"},
		{"-n", l.out, "addr", "add", "203.0.113.2/24", "dev", "vo1"},
		{"-n", l.out, "addr", "add", "2001:db8:1::2/64", "dev", "vo1", "nodad"},
		{"-n", l.node, "link", "set", "vp0", "up"}, {"-n", l.node, "link", "set", "vo0", "up"},
		{"-n", l.pod, "link", "set", "vp1", "up"}, {"-n", l.out, "link", "set", "vo1", "up"},
		{"-n", l.pod, "link", "set", "lo", "up"}, {"-n", l.out, "link", "set", "lo", "up"},
		{"-n", l.pod, "route", "add", "default", "via", "10.244.1.1"},
		{"-n", l.pod, "-6", "route", "add", "default", "via", "fd00:244:1::1"},
		{"-n", l.out, "route", "add", "10.244.0.0/16", "via", "203.0.113.1"},
		{"-n", l.out, "-6", "route", "add", "fd00:244::/32", "via", "2001:db8:1::1"},
	} {
		l.ip(c...)
	}
	for _, s := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"} {
		if out, err := exec.Command("ip", "netns", "exec", l.node, "sysctl", "-qw", s).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s: %v: %s", s, err, out)
		}
	}
	nodeNS, err := netns.GetFromName(l.node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nodeNS.Close() })
	if l.conn, err = New(int(nodeNS)); err != nil {
		t.Fatal(err)
	}
	l.listen4 = l.listenIn(l.out, netip.AddrPortFrom(l.outside4, 8080))
	l.listen6 = l.listenIn(l.out, netip.AddrPortFrom(l.outside6, 8080))
	return l
}

func (l *egressLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// inNS runs fn on a thread switched into the named namespace; sockets
// made there stay in it.
func inNS(t *testing.T, name string, fn func()) {
	t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(ns); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// listenIn serves TCP in namespace ns: each connection is told the source
// address it came from.
func (l *egressLab) listenIn(ns string, at netip.AddrPort) net.Listener {
	var ln net.Listener
	var err error
	inNS(l.t, ns, func() { ln, err = net.Listen("tcp", at.String()) })
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String())
			c.Close()
		}
	}()
	return ln
}

// seenFrom connects from the pod to the outside host and returns the
// source address the outside host saw.
func (l *egressLab) seenFrom(to netip.Addr) netip.Addr {
	l.t.Helper()
	var got []byte
	var err error
	inNS(l.t, l.pod, func() {
		var c net.Conn
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(to, 8080).String(), 5*time.Second)
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err = io.ReadAll(c)
	})
	if err != nil {
		l.t.Fatalf("pod → %s: %v", to, err)
	}
	return netip.MustParseAddr(string(got))
}

func (l *egressLab) apply(rs Ruleset) {
	l.t.Helper()
	if err := Apply(l.conn, rs); err != nil {
		l.t.Fatal(err)
	}
}

func TestEgressSourceNAT(t *testing.T) {
	l := newEgressLab(t)
	pods := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")}
	internal := append([]netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}, pods...)
	egress := func(rules ...EgressRule) Ruleset {
		return Ruleset{Egress: &Egress{Pods: pods, Internal: internal, Rules: rules}}
	}
	check := func(what string, want4, want6 netip.Addr) {
		t.Helper()
		if got := l.seenFrom(l.outside4); got != want4 {
			t.Errorf("%s: IPv4 pod traffic arrived from %s, want %s", what, got, want4)
		}
		if got := l.seenFrom(l.outside6); got != want6 {
			t.Errorf("%s: IPv6 pod traffic arrived from %s, want %s", what, got, want6)
		}
	}

	check("no table", l.pod4, l.pod6)

	l.apply(egress())
	check("default (masquerade)", l.primary4, l.primary6)

	l.apply(egress(
		EgressRule{To: netip.MustParsePrefix("203.0.113.0/24"), Interface: "vo0", Source: l.snat4},
		EgressRule{Source: l.snat6},
	))
	check("declared sources", l.snat4, l.snat6)

	// The first matching rule wins; an interface that is not the way out
	// does not match, and unmatched traffic keeps its pod address.
	l.apply(egress(
		EgressRule{Interface: "vp0", Source: l.snat4},
		EgressRule{To: netip.MustParsePrefix("198.51.100.0/24"), Source: l.snat4},
		EgressRule{To: netip.MustParsePrefix("2001:db8:1::/64")},
	))
	check("first match, unmatched kept", l.pod4, l.primary6)

	// The outside host's network declared internal: never rewritten.
	l.apply(Ruleset{Egress: &Egress{Pods: pods, Internal: append(internal, netip.MustParsePrefix("203.0.113.0/24")), Rules: nil}})
	check("internal destination", l.pod4, l.primary6)

	// A bad rule is refused and the table in the kernel stays as it was.
	if err := Apply(l.conn, egress(EgressRule{Interface: "a-name-that-is-too-long", Source: l.snat4})); err == nil {
		t.Error("an interface name of 23 bytes was accepted")
	}
	check("after a refused apply", l.pod4, l.primary6)

	if err := Remove(l.conn); err != nil {
		t.Fatal(err)
	}
	check("table removed", l.pod4, l.pod6)
	tables, err := l.conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == TableName {
			t.Errorf("table %s still there after Remove", TableName)
		}
	}
}

// serveIn listens on TCP and UDP port in namespace ns (all addresses): TCP
// connections get "ok", UDP datagrams are echoed.
func (l *egressLab) serveIn(ns string, port int) {
	var ln net.Listener
	var pc net.PacketConn
	var err error
	inNS(l.t, ns, func() {
		if ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err == nil {
			pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		}
	})
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "ok")
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// reach reports whether a TCP connection (or a UDP echo) from namespace ns
// to to:port gets an answer within a second; refused says a TCP connection
// was refused (RST) rather than left unanswered.
func (l *egressLab) reach(ns, network string, to netip.Addr, port int) (ok, refused bool) {
	inNS(l.t, ns, func() {
		c, err := net.DialTimeout(network, netip.AddrPortFrom(to, uint16(port)).String(), time.Second)
		if err != nil {
			refused = strings.Contains(err.Error(), "refused")
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if network == "udp" {
			_, _ = c.Write([]byte("ping"))
		}
		buf := make([]byte, 8)
		n, _ := c.Read(buf)
		ok = n > 0
	})
	return ok, refused
}

func TestFirewall(t *testing.T) {
	l := newEgressLab(t)
	for _, p := range []int{8001, 8002, 8003, 31000} {
		l.serveIn(l.node, p)
	}
	fw := &Firewall{Openings: []Opening{
		{Name: "open to all", Protocol: TCP, Ports: []PortRange{{First: 8001}}},
		{Name: "open to all, udp", Protocol: UDP, Ports: []PortRange{{First: 8001}}},
		{Name: "pods only", Protocol: TCP, Ports: []PortRange{{First: 8002}}, From: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")}},
		{Name: "node ports", Protocol: TCP, Ports: []PortRange{{First: 30000, Last: 32767}}, To: []netip.Addr{l.primary4, l.primary6}},
	}}
	l.apply(Ruleset{Firewall: fw})

	for _, tc := range []struct {
		from, network string
		to            netip.Addr
		port          int
		want          bool
	}{
		{l.out, "tcp", l.primary4, 8001, true},
		{l.out, "tcp", l.primary6, 8001, true}, // IPv6 also needs neighbour discovery through the firewall
		{l.out, "udp", l.primary4, 8001, true},
		{l.out, "tcp", l.primary4, 8002, false},
		{l.out, "tcp", l.primary6, 8002, false},
		{l.pod, "tcp", netip.MustParseAddr("10.244.1.1"), 8002, true},
		{l.pod, "tcp", netip.MustParseAddr("fd00:244:1::1"), 8002, true},
		{l.out, "tcp", l.primary4, 8003, false},
		{l.out, "udp", l.primary4, 8003, false},
		{l.out, "tcp", l.primary4, 31000, true},
		{l.out, "tcp", l.snat4, 31000, false}, // opened to the primary address only
	} {
		ok, refused := l.reach(tc.from, tc.network, tc.to, tc.port)
		if ok != tc.want {
			t.Errorf("%s → %s %s:%d answered %v, want %v", tc.from, tc.network, tc.to, tc.port, ok, tc.want)
		}
		if refused {
			t.Errorf("%s → %s %s:%d was refused: a firewall drop leaves no trace", tc.from, tc.network, tc.to, tc.port)
		}
	}
	// Replies to the node's own connections come back; ICMP echo is answered.
	if got := func() (err error) {
		inNS(t, l.node, func() {
			var c net.Conn
			if c, err = net.DialTimeout("tcp", netip.AddrPortFrom(l.outside4, 8080).String(), 2*time.Second); err == nil {
				c.Close()
			}
		})
		return err
	}(); got != nil {
		t.Errorf("the node's own connection out: %v", got)
	}
	if out, err := exec.Command("ip", "netns", "exec", l.out, "ping", "-c", "1", "-W", "2", l.primary4.String()).CombinedOutput(); err != nil {
		t.Errorf("ping the node through the firewall: %v\n%s", err, out)
	}

	// A refused change leaves the firewall as it was; removing it opens all.
	if err := Apply(l.conn, Ruleset{Firewall: &Firewall{Openings: []Opening{{Name: "bad", Protocol: "sctp"}}}}); err == nil {
		t.Error("protocol sctp was accepted")
	}
	if ok, _ := l.reach(l.out, "tcp", l.primary4, 8002); ok {
		t.Error("after a refused change, 8002 answers from outside")
	}
	if err := Remove(l.conn); err != nil {
		t.Fatal(err)
	}
	if ok, _ := l.reach(l.out, "tcp", l.primary4, 8002); !ok {
		t.Error("without the firewall, 8002 does not answer")
	}
}

// TestLargeRuleset: a thousand openings go in one batch (larger than the
// kernel's default netlink socket buffers) and all reach the kernel.
func TestLargeRuleset(t *testing.T) {
	l := newEgressLab(t)
	fw := &Firewall{}
	for i := range 1000 {
		fw.Openings = append(fw.Openings, Opening{Name: fmt.Sprintf("rule-%d", i), Protocol: TCP,
			Ports: []PortRange{{First: uint16(10000 + i)}}, From: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.100.%d.%d/32", i/250, i%250+1))}})
	}
	l.apply(Ruleset{Firewall: fw})
	table := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	rules, err := l.conn.GetRules(table, &nftables.Chain{Name: InputChain, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	base := 3 + len(icmpTypes) + len(icmpv6Types)
	if len(rules) != base+1000 {
		t.Errorf("input chain has %d rules, want %d", len(rules), base+1000)
	}
}
