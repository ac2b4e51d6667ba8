package nodeip

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The kernel tests run in the test binary's own network namespace (see
// nstest.Main): links, routes and rules they create never reach the host.
func TestMain(m *testing.M) {
	os.Exit(nstest.Main(m))
}

// veth creates name with a peer name+"p", both up, deleted when the test ends.
func veth(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: name + "p"}); err != nil {
		t.Fatalf("create veth %s: %v", name, err)
	}
	t.Cleanup(func() {
		if l, err := h.LinkByName(name); err == nil {
			_ = h.LinkDel(l)
		}
	})
	for _, n := range []string{name + "p", name} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatalf("veth %s: %v", n, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", n, err)
		}
	}
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func addAddr(t *testing.T, h *netlink.Handle, l netlink.Link, s string, flags int) {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	a.Flags = flags
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("add %s to %s: %v", s, l.Attrs().Name, err)
	}
}

func addRoute(t *testing.T, h *netlink.Handle, r *netlink.Route) {
	t.Helper()
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("add route %s: %v", r, err)
	}
}

func defaultRoute(l netlink.Link, gw string, metric, table int) *netlink.Route {
	g := net.ParseIP(gw)
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if g.To4() == nil {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: g, Priority: metric, Table: table}
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// decide snapshots the kernel and decides, failing on a netlink error.
func decide(t *testing.T, h *netlink.Handle, hints Hints, prev *Previous) Decision {
	t.Helper()
	k, err := Snapshot(h)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return Decide(Input{Kernel: k, Hints: hints, Previous: prev})
}

func check(t *testing.T, d Decision, wantArg string, lines ...string) {
	t.Helper()
	if got := d.KubeletArg(); got != wantArg {
		t.Errorf("KubeletArg() = %q, want %q", got, wantArg)
	}
	ex := d.Explanation()
	for _, want := range lines {
		if !slices.Contains(ex, want) {
			t.Errorf("explanation lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("decision:\n%s", d)
	}
}

func TestKernelTwoDefaultRoutes(t *testing.T) {
	h := nstest.Handle(t)
	a0, a1 := veth(t, h, "a0"), veth(t, h, "a1")
	addAddr(t, h, a0, "10.0.0.5/24", 0)
	addAddr(t, h, a1, "10.1.0.5/24", 0)
	addRoute(t, h, defaultRoute(a0, "10.0.0.1", 200, 0))
	addRoute(t, h, defaultRoute(a1, "10.1.0.1", 100, 0))

	d := decide(t, h, Hints{}, nil)
	check(t, d, "10.1.0.5",
		"10.1.0.5/24 on a1: chosen: default route of lowest metric (100)",
		"10.0.0.5/24 on a0: not chosen: default route of higher metric (200 > 100)",
		"127.0.0.1/8 on lo: rejected: loopback",
	)

	// Sticky: after the metrics swap, the stored choice stays.
	s := Store{Path: t.TempDir() + "/nodeip.json"}
	if err := s.Save(d); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteDel(defaultRoute(a0, "10.0.0.1", 200, 0)); err != nil {
		t.Fatal(err)
	}
	addRoute(t, h, defaultRoute(a0, "10.0.0.1", 50, 0))
	prev, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	d = decide(t, h, Hints{}, prev)
	check(t, d, "10.1.0.5", "10.1.0.5/24 on a1: chosen: kept from the previous decision")
	if d.Changed {
		t.Errorf("Changed = true (%s), want the previous decision kept", d.Reason)
	}
	// The address goes away: the decision changes, with the reason.
	if err := h.AddrDel(a1, &netlink.Addr{IPNet: mustIPNet("10.1.0.5/24")}); err != nil {
		t.Fatal(err)
	}
	d = decide(t, h, Hints{}, prev)
	check(t, d, "10.0.0.5", "10.0.0.5/24 on a0: chosen: default route of lowest metric (50)")
	if want := "IPv4: 10.1.0.5 → 10.0.0.5 (previous 10.1.0.5 is no longer on the node"; !d.Changed || !strings.Contains(d.Reason, want) {
		t.Errorf("Changed = %v, Reason = %q, want it to contain %q", d.Changed, d.Reason, want)
	}
}

func TestKernelPolicyRoutedUplinks(t *testing.T) {
	h := nstest.Handle(t)
	u0, u1 := veth(t, h, "u0"), veth(t, h, "u1")
	addAddr(t, h, u0, "10.2.0.1/31", 0)
	addAddr(t, h, u1, "10.2.0.3/31", 0)
	// The node's own address lives on a bridge without ports (this host
	// kernel has no dummy links).
	battrs := netlink.NewLinkAttrs()
	battrs.Name = "node0"
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: battrs}); err != nil {
		t.Fatalf("create bridge: %v", err)
	}
	br, err := h.LinkByName("node0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.LinkDel(br) })
	if err := h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	addAddr(t, h, br, "192.0.2.10/32", 0)
	addRoute(t, h, defaultRoute(u0, "10.2.0.0", 0, 100))
	addRoute(t, h, defaultRoute(u1, "10.2.0.2", 0, 101))
	for i, r := range []struct {
		from  string
		table int
	}{{"10.2.0.1/32", 100}, {"10.2.0.3/32", 101}} {
		rule := netlink.NewRule()
		rule.Src = mustCIDR(r.from)
		rule.Table = r.table
		rule.Priority = 1000 + i
		if err := h.RuleAdd(rule); err != nil {
			t.Fatalf("add rule from %s: %v", r.from, err)
		}
		t.Cleanup(func() { _ = h.RuleDel(rule) })
	}

	d := decide(t, h, Hints{}, nil)
	check(t, d, "10.2.0.1",
		"10.2.0.1/31 on u0: chosen: default route of lowest metric (0, table 100)",
		"10.2.0.3/31 on u1: not chosen: default route (0, table 101) loses to u0's: main table first, then metric, then link index",
		"192.0.2.10/32 on node0: not chosen: no default route on node0",
	)
	d = decide(t, h, Hints{Subnets: pfx("192.0.2.0/24")}, nil)
	check(t, d, "192.0.2.10",
		"192.0.2.10/32 on node0: chosen: inside kubelet.nodeIP.subnets entry 192.0.2.0/24",
		"10.2.0.1/31 on u0: not chosen: outside kubelet.nodeIP.subnets [192.0.2.0/24]",
	)

	// A main-table default with the node address as preferred source.
	if err := h.RouteAdd(&netlink.Route{LinkIndex: u1.Attrs().Index, Dst: mustCIDR("0.0.0.0/0"), Gw: net.ParseIP("10.2.0.2"), Src: net.ParseIP("192.0.2.10"), Priority: 10}); err != nil {
		t.Fatalf("add default route with src: %v", err)
	}
	d = decide(t, h, Hints{}, nil)
	check(t, d, "192.0.2.10", "192.0.2.10/32 on node0: chosen: preferred source of the default route of lowest metric (10)")
}

func TestKernelVIPOnSameInterface(t *testing.T) {
	h := nstest.Handle(t)
	v0 := veth(t, h, "v0")
	addAddr(t, h, v0, "10.3.0.5/24", 0)
	addAddr(t, h, v0, "10.3.0.100/32", 0)
	addAddr(t, h, v0, "10.3.0.101/32", 0)
	addRoute(t, h, defaultRoute(v0, "10.3.0.1", 0, 0))
	hints := Hints{APIVIPs: ips("10.3.0.100"), IngressVIPs: ips("10.3.0.101")}
	d := decide(t, h, hints, nil)
	check(t, d, "10.3.0.5",
		"10.3.0.5/24 on v0: chosen: its subnet 10.3.0.0/24 holds the API VIP 10.3.0.100",
		"10.3.0.100/32 on v0: rejected: is the API VIP",
		"10.3.0.101/32 on v0: rejected: is the ingress VIP",
	)
	// Sticky: a load-balancer address that appears later does not change it.
	prev := d.Previous()
	addAddr(t, h, v0, "10.3.0.2/24", 0)
	d = decide(t, h, hints, &prev)
	check(t, d, "10.3.0.5", "10.3.0.2/24 on v0: not chosen: the previous decision's 10.3.0.5 is kept (sticky)")
	if d.Changed {
		t.Errorf("Changed = true (%s)", d.Reason)
	}
}

func TestKernelDualStack(t *testing.T) {
	h := nstest.Handle(t)
	d0 := veth(t, h, "d0")
	addAddr(t, h, d0, "10.4.0.5/24", 0)
	addAddr(t, h, d0, "2001:db8:4::5/64", unix.IFA_F_NODAD)
	dep := &netlink.Addr{IPNet: mustIPNet("10.4.0.6/24"), PreferedLft: 0, ValidLft: 300}
	if err := h.AddrAdd(d0, dep); err != nil {
		t.Fatalf("add deprecated address: %v", err)
	}
	addRoute(t, h, defaultRoute(d0, "10.4.0.1", 100, 0))
	addRoute(t, h, defaultRoute(d0, "fe80::1", 100, 0))
	d := decide(t, h, Hints{Family: IPv6}, nil)
	check(t, d, "2001:db8:4::5,10.4.0.5",
		"2001:db8:4::5/64 on d0: chosen: default route of lowest metric (100)",
		"10.4.0.5/24 on d0: chosen: default route of lowest metric (100)",
		"10.4.0.6/24 on d0: rejected: deprecated (preferred lifetime 0)",
	)
	if !slices.ContainsFunc(d.Candidates, func(c Candidate) bool {
		return c.Link == "d0" && c.Addr.IsLinkLocalUnicast() && c.Rule == "link-local"
	}) {
		t.Errorf("no rejected link-local candidate on d0:\n%s", d)
	}
}

func mustIPNet(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func TestKernelIPv6HostAddressWithRARoute(t *testing.T) {
	h := nstest.Handle(t)
	r0, r1 := veth(t, h, "r0"), veth(t, h, "r1")
	addAddr(t, h, r0, "2001:db8:6::5/64", unix.IFA_F_NODAD)
	addRoute(t, h, defaultRoute(r0, "2001:db8:6::1", 100, 0))
	// DHCPv6 gives r1 a /128; the on-link /64 comes from the router
	// advertisement, added statically here with protocol ra.
	addAddr(t, h, r1, "2001:db8:5::5/128", unix.IFA_F_NODAD)
	addRoute(t, h, &netlink.Route{LinkIndex: r1.Attrs().Index, Dst: mustCIDR("2001:db8:5::/64"), Protocol: RouteProtocolRA, Priority: 100})
	addRoute(t, h, &netlink.Route{LinkIndex: r1.Attrs().Index, Dst: mustCIDR("::/0"), Gw: net.ParseIP("fe80::1"), Protocol: RouteProtocolRA, Priority: 1024})

	d := decide(t, h, Hints{APIVIPs: ips("2001:db8:5::100")}, nil)
	check(t, d, "2001:db8:5::5",
		"2001:db8:5::5/128 on r1: chosen: its subnet 2001:db8:5::/64 holds the API VIP 2001:db8:5::100",
		"2001:db8:6::5/64 on r0: not chosen: its subnet 2001:db8:6::/64 holds no API VIP",
	)
	i := slices.IndexFunc(d.Candidates, func(c Candidate) bool { return c.Link == "r1" && c.Addr == netip.MustParseAddr("2001:db8:5::5") })
	if i < 0 || d.Candidates[i].SubnetSource != "on-link route from router advertisement" {
		t.Errorf("2001:db8:5::5's subnet does not come from the RA route:\n%s", d)
	}
	// Without the VIP hint the default route of lowest metric decides.
	d = decide(t, h, Hints{}, nil)
	check(t, d, "2001:db8:6::5", "2001:db8:6::5/64 on r0: chosen: default route of lowest metric (100)")
}

func TestKernelTentativeAndDADFailed(t *testing.T) {
	h := nstest.Handle(t)
	// Both ends of one veth get the same address; the peer has it first, so
	// duplicate address detection on t0 sees the peer's answer and fails.
	t0 := veth(t, h, "t0")
	for _, n := range []string{"t0", "t0p"} {
		// 100 ms per DAD probe instead of 1 s (ipv6 neigh retrans_time_ms).
		_ = os.WriteFile("/proc/sys/net/ipv6/neigh/"+n+"/retrans_time_ms", []byte("100"), 0o644)
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+n+"/accept_dad", []byte("1"), 0o644)
	}
	t0p, err := h.LinkByName("t0p")
	if err != nil {
		t.Fatal(err)
	}
	addAddr(t, h, t0, "2001:db8:9::5/64", unix.IFA_F_NODAD)
	addRoute(t, h, defaultRoute(t0, "2001:db8:9::1", 100, 0))
	addAddr(t, h, t0p, "2001:db8:9::7/64", unix.IFA_F_NODAD)
	// Wait for t0's link to be usable (carrier, link-local done) so DAD runs.
	waitFor(t, func() (bool, string) {
		d := decide(t, h, Hints{}, nil)
		return slices.ContainsFunc(d.Candidates, func(c Candidate) bool {
			return c.Link == "t0" && c.Addr.IsLinkLocalUnicast() && c.Rule == "link-local"
		}), d.String()
	})

	addAddr(t, h, t0, "2001:db8:9::7/64", 0)
	d := decide(t, h, Hints{}, nil)
	check(t, d, "2001:db8:9::5", "2001:db8:9::5/64 on t0: chosen: default route of lowest metric (100)")
	i := slices.IndexFunc(d.Candidates, func(c Candidate) bool { return c.Link == "t0" && c.Addr == netip.MustParseAddr("2001:db8:9::7") })
	if i < 0 || d.Candidates[i].Verdict != Rejected {
		t.Fatalf("2001:db8:9::7 on t0 right after adding it is not rejected:\n%s", d)
	}
	switch r := d.Candidates[i].Rule; r {
	case "tentative (duplicate address detection not finished)":
		if !slices.Contains(d.Unsettled, netip.MustParseAddr("2001:db8:9::7")) {
			t.Errorf("tentative 2001:db8:9::7 is not in Unsettled %v", d.Unsettled)
		}
	case "duplicate address detection failed (dadfailed)":
	default:
		t.Errorf("2001:db8:9::7 on t0: rule %q, want tentative or dadfailed", r)
	}
	waitFor(t, func() (bool, string) {
		d := decide(t, h, Hints{}, nil)
		return slices.Contains(d.Explanation(), "2001:db8:9::7/64 on t0: rejected: duplicate address detection failed (dadfailed)") && len(d.Unsettled) == 0, d.String()
	})
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after 5 s; last state:\n%s", state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
