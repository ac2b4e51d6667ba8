package nodeip

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

const up = net.FlagUp

func lnk(i int, name string) Link { return Link{Index: i, Name: name, Flags: up} }

func ad(link int, s string, flags ...AddrFlags) Address {
	a := Address{LinkIndex: link, Prefix: netip.MustParsePrefix(s), PreferredLifetime: Forever}
	for _, f := range flags {
		a.Flags |= f
	}
	return a
}

func dflt(link int, gw string, metric int) Route {
	g := netip.MustParseAddr(gw)
	dst := netip.MustParsePrefix("0.0.0.0/0")
	if g.Is6() {
		dst = netip.MustParsePrefix("::/0")
	}
	return Route{LinkIndex: link, Dst: dst, Gateway: g, Metric: metric, Table: MainTable}
}

func onlink(link int, dst string, proto int) Route {
	return Route{LinkIndex: link, Dst: netip.MustParsePrefix(dst), Table: MainTable, Protocol: proto}
}

func ips(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

// base is lo plus eth0 (index 2) and eth1 (index 3), all up.
func base(addrs []Address, routes ...Route) Kernel {
	return Kernel{
		Links:     []Link{{Index: 1, Name: "lo", Flags: up | net.FlagLoopback}, lnk(2, "eth0"), lnk(3, "eth1")},
		Addresses: append([]Address{ad(1, "127.0.0.1/8"), ad(1, "::1/128")}, addrs...),
		Routes:    routes,
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name    string
		kernel  Kernel
		hints   Hints
		prev    *Previous
		want4   string // "" for none
		want6   string
		wantArg string // checked when set
		explain []string
		warn    string // substring of a warning, when set
		changed string // substring of Reason; "-" means unchanged
	}{
		{
			name:    "single interface with default route",
			kernel:  base([]Address{ad(2, "10.0.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			want4:   "10.0.0.5",
			wantArg: "10.0.0.5",
			explain: []string{
				"10.0.0.5/24 on eth0: chosen: default route of lowest metric (100)",
				"127.0.0.1/8 on lo: rejected: loopback",
				"::1/128 on lo: rejected: loopback",
			},
		},
		{
			name:   "two default routes, lower metric wins",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(3, "10.1.0.5/24")}, dflt(2, "10.0.0.1", 200), dflt(3, "10.1.0.1", 100)),
			want4:  "10.1.0.5",
			explain: []string{
				"10.1.0.5/24 on eth1: chosen: default route of lowest metric (100)",
				"10.0.0.5/24 on eth0: not chosen: default route of higher metric (200 > 100)",
			},
		},
		{
			name:   "equal metrics, lower link index wins",
			kernel: base([]Address{ad(3, "10.1.0.5/24"), ad(2, "10.0.0.5/24")}, dflt(3, "10.1.0.1", 100), dflt(2, "10.0.0.1", 100)),
			want4:  "10.0.0.5",
			explain: []string{
				"10.0.0.5/24 on eth0: chosen: default route of lowest metric (100)",
				"10.1.0.5/24 on eth1: not chosen: default route (100) loses to eth0's: main table first, then metric, then link index",
			},
		},
		{
			name:   "two addresses on the default route's interface, lower address wins",
			kernel: base([]Address{ad(2, "10.0.0.9/24"), ad(2, "10.0.0.5/24", FlagSecondary)}, dflt(2, "10.0.0.1", 100)),
			want4:  "10.0.0.5",
			explain: []string{
				"10.0.0.9/24 on eth0: not chosen: also on eth0; 10.0.0.5 wins by address",
			},
		},
		{
			name:   "interface without default route loses",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(3, "172.16.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			want4:  "10.0.0.5",
			explain: []string{
				"172.16.0.5/24 on eth1: not chosen: no default route on eth1",
			},
		},
		{
			name:   "explicit address wins over default route",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(3, "10.1.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{Addresses: ips("10.1.0.5")},
			want4:  "10.1.0.5",
			explain: []string{
				"10.1.0.5/24 on eth1: chosen: explicit address (kubelet.nodeIP.addresses)",
				"10.0.0.5/24 on eth0: not chosen: kubelet.nodeIP.addresses names 10.1.0.5",
			},
		},
		{
			name:   "explicit address not on the node is used with a warning",
			kernel: base([]Address{ad(2, "10.0.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{Addresses: ips("10.9.9.9")},
			want4:  "10.9.9.9",
			warn:   "10.9.9.9 is not on any interface",
		},
		{
			name:   "explicit address that is a VIP falls through to the other rules",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(2, "10.0.0.100/32")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{Addresses: ips("10.0.0.100"), APIVIPs: ips("10.0.0.100")},
			want4:  "10.0.0.5",
			warn:   "10.0.0.100 is on the node but rejected (is the API VIP)",
			explain: []string{
				"10.0.0.5/24 on eth0: chosen: its subnet 10.0.0.0/24 holds the API VIP 10.0.0.100",
			},
		},
		{
			name:   "subnet hint beats the default route",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(3, "192.168.10.5/24")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{Subnets: pfx("192.168.10.0/24")},
			want4:  "192.168.10.5",
			explain: []string{
				"192.168.10.5/24 on eth1: chosen: inside kubelet.nodeIP.subnets entry 192.168.10.0/24",
				"10.0.0.5/24 on eth0: not chosen: outside kubelet.nodeIP.subnets [192.168.10.0/24]",
			},
		},
		{
			name:   "subnet hints in order of preference",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(3, "192.168.10.5/24")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{Subnets: pfx("192.168.0.0/16", "10.0.0.0/8")},
			want4:  "192.168.10.5",
			explain: []string{
				"10.0.0.5/24 on eth0: not chosen: inside 10.0.0.0/8, a later kubelet.nodeIP.subnets entry than 192.168.0.0/16",
			},
		},
		{
			name:   "subnet hints match nothing: no address, no fall back",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(2, "2001:db8::5/64")}, dflt(2, "10.0.0.1", 100), dflt(2, "2001:db8::1", 100)),
			hints:  Hints{Subnets: pfx("192.168.0.0/16")},
			want4:  "",
			want6:  "2001:db8::5",
			warn:   "no IPv4 node address: none is inside kubelet.nodeIP.subnets [192.168.0.0/16]",
		},
		{
			name:   "API VIP subnet beats the default route",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(3, "192.168.10.5/24")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{APIVIPs: ips("192.168.10.100")},
			want4:  "192.168.10.5",
			explain: []string{
				"192.168.10.5/24 on eth1: chosen: its subnet 192.168.10.0/24 holds the API VIP 192.168.10.100",
				"10.0.0.5/24 on eth0: not chosen: its subnet 10.0.0.0/24 holds no API VIP",
			},
		},
		{
			name:   "VIP on the same interface is never chosen",
			kernel: base([]Address{ad(2, "10.0.0.100/32"), ad(2, "10.0.0.5/24"), ad(2, "10.0.0.101/32")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{APIVIPs: ips("10.0.0.100"), IngressVIPs: ips("10.0.0.101")},
			want4:  "10.0.0.5",
			explain: []string{
				"10.0.0.100/32 on eth0: rejected: is the API VIP",
				"10.0.0.101/32 on eth0: rejected: is the ingress VIP",
			},
		},
		{
			name:   "link-local IPv6 is rejected",
			kernel: base([]Address{ad(2, "fe80::1/64"), ad(2, "2001:db8::5/64")}, dflt(2, "fe80::ff", 1024)),
			want6:  "2001:db8::5",
			explain: []string{
				"fe80::1/64 on eth0: rejected: link-local",
				"2001:db8::5/64 on eth0: chosen: default route of lowest metric (1024)",
			},
		},
		{
			name:   "IPv4 link-local is rejected",
			kernel: base([]Address{ad(2, "169.254.3.4/16")}),
			explain: []string{
				"169.254.3.4/16 on eth0: rejected: link-local",
			},
		},
		{
			name:   "address on the loopback interface is rejected",
			kernel: base([]Address{ad(1, "192.0.2.10/32"), ad(2, "10.0.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			want4:  "10.0.0.5",
			explain: []string{
				"192.0.2.10/32 on lo: rejected: on the loopback interface",
			},
		},
		{
			name:   "deprecated addresses are rejected",
			kernel: base([]Address{ad(2, "10.0.0.4/24", FlagDeprecated), {LinkIndex: 2, Prefix: netip.MustParsePrefix("2001:db8::4/64")}, ad(2, "10.0.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			want4:  "10.0.0.5",
			explain: []string{
				"10.0.0.4/24 on eth0: rejected: deprecated (preferred lifetime 0)",
				"2001:db8::4/64 on eth0: rejected: deprecated (preferred lifetime 0)",
			},
		},
		{
			name:   "tentative and DAD-failed IPv6 are rejected",
			kernel: base([]Address{ad(2, "2001:db8::4/64", FlagTentative), ad(2, "2001:db8::3/64", FlagTentative, FlagDADFailed), ad(2, "2001:db8::5/64"), ad(2, "2001:db8::2/64", FlagOptimistic)}, dflt(2, "2001:db8::1", 100)),
			want6:  "2001:db8::5",
			explain: []string{
				"2001:db8::4/64 on eth0: rejected: tentative (duplicate address detection not finished)",
				"2001:db8::3/64 on eth0: rejected: duplicate address detection failed (dadfailed)",
				"2001:db8::2/64 on eth0: rejected: optimistic (duplicate address detection not finished)",
			},
		},
		{
			name:   "pod and service CIDRs are rejected",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(3, "10.244.0.1/24"), ad(3, "10.96.0.10/32")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{PodCIDRs: pfx("10.244.0.0/16"), ServiceCIDRs: pfx("10.96.0.0/12")},
			want4:  "10.0.0.5",
			explain: []string{
				"10.244.0.1/24 on eth1: rejected: inside the pod CIDR 10.244.0.0/16",
				"10.96.0.10/32 on eth1: rejected: inside the service CIDR 10.96.0.0/12",
			},
		},
		{
			name: "excluded interface is rejected even with the default route",
			kernel: Kernel{
				Links:     []Link{lnk(2, "eth0"), lnk(5, "cali123")},
				Addresses: []Address{ad(5, "10.0.0.5/24"), ad(2, "192.168.1.5/24")},
				Routes:    []Route{dflt(5, "10.0.0.1", 0)},
			},
			hints: Hints{ExcludeInterfaces: []string{"cali*"}},
			want4: "192.168.1.5",
			explain: []string{
				`10.0.0.5/24 on cali123: rejected: interface cali123 is excluded ("cali*")`,
				"192.168.1.5/24 on eth0: chosen: the only acceptable IPv4 address",
			},
		},
		{
			name: "interface that is down is rejected",
			kernel: Kernel{
				Links:     []Link{lnk(2, "eth0"), {Index: 3, Name: "eth1"}},
				Addresses: []Address{ad(2, "10.0.0.5/24"), ad(3, "10.1.0.5/24")},
				Routes:    []Route{dflt(2, "10.0.0.1", 200)},
			},
			want4: "10.0.0.5",
			explain: []string{
				"10.1.0.5/24 on eth1: rejected: interface eth1 is down",
			},
		},
		{
			name:    "IPv4-mapped IPv6 is the IPv4 address",
			kernel:  base([]Address{ad(2, "::ffff:10.0.0.5/120")}, dflt(2, "10.0.0.1", 100)),
			want4:   "10.0.0.5",
			wantArg: "10.0.0.5",
			explain: []string{
				"::ffff:10.0.0.5/120 on eth0: chosen: default route of lowest metric (100)",
			},
		},
		{
			name:   "IPv4-compatible IPv6 is never chosen",
			kernel: base([]Address{ad(2, "::10.0.0.5/120"), ad(2, "10.0.0.6/24")}, dflt(2, "10.0.0.1", 100)),
			want4:  "10.0.0.6",
			explain: []string{
				"::a00:5/120 on eth0: rejected: IPv4-compatible IPv6 (::a.b.c.d, deprecated by RFC 4291), never chosen: use 10.0.0.5 or a real IPv6 address",
			},
		},
		{
			name:   "IPv4-mapped explicit address and VIPs count as IPv4",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(2, "10.0.0.6/24"), ad(2, "10.0.0.100/32")}, dflt(2, "10.0.0.1", 100)),
			hints:  Hints{Addresses: ips("::ffff:10.0.0.6"), APIVIPs: ips("::ffff:10.0.0.100")},
			want4:  "10.0.0.6",
			explain: []string{
				"10.0.0.6/24 on eth0: chosen: explicit address (kubelet.nodeIP.addresses)",
				"10.0.0.100/32 on eth0: rejected: is the API VIP",
			},
		},
		{
			name:    "dual stack, IPv6 first",
			kernel:  base([]Address{ad(2, "10.0.0.5/24"), ad(2, "2001:db8::5/64"), ad(2, "fe80::5/64")}, dflt(2, "10.0.0.1", 100), dflt(2, "fe80::1", 1024)),
			hints:   Hints{Family: IPv6},
			want4:   "10.0.0.5",
			want6:   "2001:db8::5",
			wantArg: "2001:db8::5,10.0.0.5",
		},
		{
			name:    "dual stack, IPv4 first by default",
			kernel:  base([]Address{ad(2, "10.0.0.5/24"), ad(2, "2001:db8::5/64")}, dflt(2, "10.0.0.1", 100), dflt(2, "fe80::1", 1024)),
			want4:   "10.0.0.5",
			want6:   "2001:db8::5",
			wantArg: "10.0.0.5,2001:db8::5",
		},
		{
			name: "IPv6 /128 takes its subnet from the RA on-link route",
			kernel: base([]Address{ad(2, "2001:db8:1::5/64"), ad(3, "2001:db8:2::5/128")},
				dflt(2, "2001:db8:1::1", 100), onlink(3, "2001:db8:2::/64", RouteProtocolRA), onlink(3, "2001:db8::/32", 4)),
			hints: Hints{APIVIPs: ips("2001:db8:2::100")},
			want6: "2001:db8:2::5",
			explain: []string{
				"2001:db8:2::5/128 on eth1: chosen: its subnet 2001:db8:2::/64 holds the API VIP 2001:db8:2::100",
			},
		},
		{
			name:   "IPv6 /128 without an on-link route holds no VIP",
			kernel: base([]Address{ad(2, "2001:db8:1::5/64"), ad(3, "2001:db8:2::5/128")}, dflt(2, "2001:db8:1::1", 100)),
			hints:  Hints{APIVIPs: ips("2001:db8:2::100")},
			want6:  "2001:db8:1::5",
			explain: []string{
				"2001:db8:1::5/64 on eth0: chosen: default route of lowest metric (100)",
			},
		},
		{
			name: "policy-routed /31 uplinks: defaults in tables 100 and 101",
			kernel: base([]Address{ad(2, "10.1.0.1/31"), ad(3, "10.1.0.3/31")},
				Route{LinkIndex: 3, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.1.0.2"), Table: 101},
				Route{LinkIndex: 2, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.1.0.0"), Table: 100}),
			want4: "10.1.0.1",
			explain: []string{
				"10.1.0.1/31 on eth0: chosen: default route of lowest metric (0, table 100)",
			},
		},
		{
			name: "main table default beats a policy table default of lower metric",
			kernel: base([]Address{ad(2, "10.1.0.1/31"), ad(3, "10.2.0.5/24")},
				Route{LinkIndex: 2, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.1.0.0"), Table: 100},
				dflt(3, "10.2.0.1", 500)),
			want4: "10.2.0.5",
		},
		{
			name: "preferred source of the default route (node address on a dummy)",
			kernel: Kernel{
				Links:     []Link{lnk(2, "eth0"), lnk(3, "eth1"), lnk(4, "node0")},
				Addresses: []Address{ad(2, "10.1.0.1/31"), ad(3, "10.1.0.3/31"), ad(4, "192.0.2.10/32")},
				Routes: []Route{
					{LinkIndex: 2, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.1.0.0"), Src: netip.MustParseAddr("192.0.2.10"), Table: MainTable},
					{LinkIndex: 3, Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.1.0.2"), Src: netip.MustParseAddr("192.0.2.10"), Table: MainTable},
				},
			},
			want4: "192.0.2.10",
			explain: []string{
				"192.0.2.10/32 on node0: chosen: preferred source of the default route of lowest metric (0)",
				"10.1.0.1/31 on eth0: not chosen: also on eth0; 192.0.2.10 wins by address",
			},
		},
		{
			name:   "default route's interface has only link-local: next rule decides",
			kernel: base([]Address{ad(2, "fe80::5/64"), ad(3, "fd00::5/64")}, dflt(2, "fe80::1", 100)),
			want6:  "fd00::5",
			explain: []string{
				"fd00::5/64 on eth1: chosen: the only acceptable IPv6 address",
			},
		},
		{
			name:   "no rule can choose between two addresses",
			kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(3, "10.1.0.5/24")}),
			want4:  "",
			warn:   "no IPv4 node address: 2 acceptable addresses and no rule chose one",
			explain: []string{
				"10.0.0.5/24 on eth0: not chosen: ambiguous: 2 acceptable IPv4 addresses and no subnet hint, API VIP subnet or default route to choose",
			},
		},
		{
			name:    "sticky: the previous address is kept although a better one appeared",
			kernel:  base([]Address{ad(2, "10.0.0.5/24"), ad(3, "10.1.0.5/24")}, dflt(2, "10.0.0.1", 200), dflt(3, "10.1.0.1", 100)),
			prev:    &Previous{IPv4: netip.MustParseAddr("10.0.0.5")},
			want4:   "10.0.0.5",
			changed: "-",
			explain: []string{
				"10.0.0.5/24 on eth0: chosen: kept from the previous decision",
				"10.1.0.5/24 on eth1: not chosen: the previous decision's 10.0.0.5 is kept (sticky)",
			},
		},
		{
			name:    "sticky: a new load-balancer address on the interface does not change it",
			kernel:  base([]Address{ad(2, "10.0.0.9/24"), ad(2, "10.0.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			prev:    &Previous{IPv4: netip.MustParseAddr("10.0.0.9")},
			want4:   "10.0.0.9",
			changed: "-",
		},
		{
			name:    "sticky: the previous address is gone",
			kernel:  base([]Address{ad(2, "10.0.0.6/24")}, dflt(2, "10.0.0.1", 100)),
			prev:    &Previous{IPv4: netip.MustParseAddr("10.0.0.5")},
			want4:   "10.0.0.6",
			changed: "IPv4: 10.0.0.5 → 10.0.0.6 (previous 10.0.0.5 is no longer on the node; default route of lowest metric (100))",
		},
		{
			name:    "sticky: the previous address became a VIP",
			kernel:  base([]Address{ad(2, "10.0.0.5/24"), ad(2, "10.0.0.6/24")}, dflt(2, "10.0.0.1", 100)),
			hints:   Hints{APIVIPs: ips("10.0.0.5")},
			prev:    &Previous{IPv4: netip.MustParseAddr("10.0.0.5")},
			want4:   "10.0.0.6",
			changed: "previous 10.0.0.5 is now rejected: is the API VIP",
		},
		{
			name:    "sticky: the previous address is outside the configured subnets",
			kernel:  base([]Address{ad(2, "10.0.0.5/24"), ad(3, "192.168.1.5/24")}, dflt(2, "10.0.0.1", 100)),
			hints:   Hints{Subnets: pfx("192.168.1.0/24")},
			prev:    &Previous{IPv4: netip.MustParseAddr("10.0.0.5")},
			want4:   "192.168.1.5",
			changed: "outside kubelet.nodeIP.subnets",
			explain: []string{
				"10.0.0.5/24 on eth0: not chosen: outside kubelet.nodeIP.subnets (was the previous decision)",
			},
		},
		{
			name:    "explicit address overrides the previous decision",
			kernel:  base([]Address{ad(2, "10.0.0.5/24"), ad(3, "10.1.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			hints:   Hints{Addresses: ips("10.1.0.5")},
			prev:    &Previous{IPv4: netip.MustParseAddr("10.0.0.5")},
			want4:   "10.1.0.5",
			changed: "kubelet.nodeIP.addresses names 10.1.0.5",
		},
		{
			name:    "sticky per family: IPv6 appears, IPv4 kept",
			kernel:  base([]Address{ad(2, "10.0.0.5/24"), ad(2, "2001:db8::5/64")}, dflt(2, "10.0.0.1", 100), dflt(2, "fe80::1", 100)),
			prev:    &Previous{IPv4: netip.MustParseAddr("10.0.0.5")},
			want4:   "10.0.0.5",
			want6:   "2001:db8::5",
			changed: "IPv6: none → 2001:db8::5 (default route of lowest metric (100))",
		},
		{
			name:    "first decision",
			kernel:  base([]Address{ad(2, "10.0.0.5/24")}, dflt(2, "10.0.0.1", 100)),
			want4:   "10.0.0.5",
			changed: "no previous decision: 10.0.0.5",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(Input{Kernel: tt.kernel, Hints: tt.hints, Previous: tt.prev})
			if got := addrString(d.IPv4); got != tt.want4 {
				t.Errorf("IPv4 = %q, want %q", got, tt.want4)
			}
			if got := addrString(d.IPv6); got != tt.want6 {
				t.Errorf("IPv6 = %q, want %q", got, tt.want6)
			}
			if tt.wantArg != "" && d.KubeletArg() != tt.wantArg {
				t.Errorf("KubeletArg() = %q, want %q", d.KubeletArg(), tt.wantArg)
			}
			lines := d.Explanation()
			for _, want := range tt.explain {
				if !slices.Contains(lines, want) {
					t.Errorf("explanation lacks %q", want)
				}
			}
			if tt.warn != "" && !slices.ContainsFunc(d.Warnings, func(w string) bool { return strings.Contains(w, tt.warn) }) {
				t.Errorf("warnings %q lack %q", d.Warnings, tt.warn)
			}
			switch {
			case tt.changed == "-" && d.Changed:
				t.Errorf("Changed = true (%q), want unchanged", d.Reason)
			case tt.changed != "" && tt.changed != "-" && (!d.Changed || !strings.Contains(d.Reason, tt.changed)):
				t.Errorf("Changed = %v, Reason = %q, want it to contain %q", d.Changed, d.Reason, tt.changed)
			}
			// Every candidate has a verdict and a rule.
			for _, c := range d.Candidates {
				if c.Rule == "" {
					t.Errorf("candidate without a rule: %s", c)
				}
			}
			if t.Failed() {
				t.Logf("decision:\n%s", d)
			}
		})
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// At boot the previous IPv6 address may still be tentative: the decision
// says so, so that the caller decides again instead of switching.
func TestDecideUnsettledPrevious(t *testing.T) {
	k := base([]Address{ad(2, "2001:db8::5/64", FlagTentative), ad(3, "2001:db8:1::5/64"), ad(2, "2001:db8::9/64", FlagTentative, FlagDADFailed)}, dflt(3, "fe80::1", 100))
	d := Decide(Input{Kernel: k, Previous: &Previous{IPv6: netip.MustParseAddr("2001:db8::5")}})
	if want := ips("2001:db8::5"); !slices.Equal(d.Unsettled, want) {
		t.Errorf("Unsettled = %v, want %v", d.Unsettled, want)
	}
	if !d.Changed || !strings.Contains(d.Reason, "previous 2001:db8::5 is now rejected: tentative") {
		t.Errorf("Changed = %v, Reason = %q", d.Changed, d.Reason)
	}
	if s := d.String(); !strings.Contains(s, "waiting: 2001:db8::5 is still in duplicate address detection") {
		t.Errorf("String() does not say it waits for DAD:\n%s", s)
	}
}

func TestString(t *testing.T) {
	k := base([]Address{ad(2, "10.0.0.5/24"), ad(2, "fe80::1/64"), ad(3, "2001:db8:2::5/128")}, dflt(2, "10.0.0.1", 100), onlink(3, "2001:db8:2::/64", RouteProtocolRA))
	d := Decide(Input{Kernel: k, Hints: Hints{Family: IPv6}})
	s := d.String()
	for _, want := range []string{
		"node IP: 2001:db8:2::5,10.0.0.5 (IPv6 first)\n",
		"  IPv6: 2001:db8:2::5: the only acceptable IPv6 address\n",
		"  IPv4: 10.0.0.5: default route of lowest metric (100)\n",
		"ADDRESS",
		"2001:db8:2::/64 (on-link route from router advertisement)",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("String() lacks %q:\n%s", want, s)
		}
	}
	if n := strings.Count(s, "\n"); n != 3+1+1+1+len(d.Candidates) {
		t.Errorf("String() has %d lines, want one per candidate plus header:\n%s", n, s)
	}
}
