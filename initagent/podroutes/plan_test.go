package podroutes

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ballast-os/ballast/initagent/runtime"
)

func testNode(name string, ips []string, cidrs ...string) runtime.Node {
	var n runtime.Node
	b, _ := json.Marshal(nodeObject(name, ips, cidrs))
	if err := json.Unmarshal(b, &n); err != nil {
		panic(err)
	}
	return n
}

func TestPlan(t *testing.T) {
	lan := subnet{Prefix: netip.MustParsePrefix("10.0.0.0/24"), Addr: netip.MustParseAddr("10.0.0.1"), Link: 2, Dev: "eth0", Up: true}
	lan6 := subnet{Prefix: netip.MustParsePrefix("fd00::/64"), Addr: netip.MustParseAddr("fd00::1"), Link: 2, Dev: "eth0", Up: true}
	storage := subnet{Prefix: netip.MustParsePrefix("10.0.0.0/25"), Addr: netip.MustParseAddr("10.0.0.100"), Link: 5, Dev: "eth1", Up: true}
	down := subnet{Prefix: netip.MustParsePrefix("172.16.0.0/16"), Addr: netip.MustParseAddr("172.16.0.1"), Link: 3, Dev: "eth2"}
	self := testNode("a", []string{"10.0.0.1", "fd00::1"}, "10.244.0.0/24", "fd10:244::/64")
	tests := []struct {
		name    string
		nodes   []runtime.Node
		subnets []subnet
		want    []string // "node cidr via dev"
		skips   []string // "node cidr: reason substring"
	}{
		{
			name:    "dual stack",
			nodes:   []runtime.Node{self, testNode("c", []string{"10.0.0.3", "fd00::3"}, "10.244.2.0/24", "fd10:244:2::/64")},
			subnets: []subnet{lan, lan6},
			want:    []string{"c 10.244.2.0/24 10.0.0.3 eth0", "c fd10:244:2::/64 fd00::3 eth0"},
		},
		{
			name:    "no address of the family",
			nodes:   []runtime.Node{self, testNode("c", []string{"10.0.0.3"}, "10.244.2.0/24", "fd10:244:2::/64")},
			subnets: []subnet{lan, lan6},
			want:    []string{"c 10.244.2.0/24 10.0.0.3 eth0"},
			skips:   []string{"c fd10:244:2::/64: no usable InternalIP of the podCIDR's family (IPv6)"},
		},
		{
			name:    "off-link",
			nodes:   []runtime.Node{self, testNode("d", []string{"192.168.7.7"}, "10.244.7.0/24")},
			subnets: []subnet{lan},
			skips:   []string{"d 10.244.7.0/24: not on-link"},
		},
		{
			name:    "link down",
			nodes:   []runtime.Node{self, testNode("d", []string{"172.16.3.3"}, "10.244.7.0/24")},
			subnets: []subnet{lan, down},
			skips:   []string{"d 10.244.7.0/24: eth2, which is down"},
		},
		{
			name:    "longest on-link prefix wins",
			nodes:   []runtime.Node{self, testNode("s", []string{"10.0.0.50"}, "10.244.5.0/24")},
			subnets: []subnet{lan, storage},
			want:    []string{"s 10.244.5.0/24 10.0.0.50 eth1"},
		},
		{
			name: "overlaps own and another node's",
			nodes: []runtime.Node{self, testNode("b", []string{"10.0.0.2"}, "10.244.1.0/24"),
				testNode("x", []string{"10.0.0.9"}, "10.244.0.0/25"), testNode("y", []string{"10.0.0.8"}, "10.244.1.0/24")},
			subnets: []subnet{lan},
			want:    []string{"b 10.244.1.0/24 10.0.0.2 eth0"},
			skips:   []string{"x 10.244.0.0/25: overlaps this node's own podCIDR", "y 10.244.1.0/24: overlaps podCIDR 10.244.1.0/24 of node b"},
		},
		{
			name:    "gateway is this node, link-local, bad CIDR, no CIDR",
			nodes:   []runtime.Node{self, testNode("m", []string{"10.0.0.1"}, "10.244.3.0/24"), testNode("l", []string{"fe80::5"}, "fd10:244:4::/64"), testNode("q", []string{"10.0.0.4"}, "10.244.300.0/24"), testNode("n", []string{"10.0.0.6"})},
			subnets: []subnet{lan, lan6, {Prefix: netip.MustParsePrefix("fe80::/64"), Addr: netip.MustParseAddr("fe80::1"), Link: 2, Dev: "eth0", Up: true}},
			skips: []string{"l fd10:244:4::/64: no usable InternalIP", "m 10.244.3.0/24: is an address of this node",
				"q 10.244.300.0/24: not a CIDR"},
		},
		{
			name:    "unmasked podCIDR",
			nodes:   []runtime.Node{self, testNode("b", []string{"10.0.0.2"}, "10.244.1.7/24")},
			subnets: []subnet{lan},
			want:    []string{"b 10.244.1.0/24 10.0.0.2 eth0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, skips := plan("a", tt.nodes, tt.subnets)
			var got []string
			for _, w := range want {
				got = append(got, fmt.Sprintf("%s %s %s %s", w.Node, w.PodCIDR, w.Via, w.Dev))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("routes = %q, want %q", got, tt.want)
			}
			if len(skips) != len(tt.skips) {
				t.Fatalf("skips = %+v, want %q", skips, tt.skips)
			}
			for i, s := range skips {
				node, rest, _ := strings.Cut(tt.skips[i], " ")
				cidr, reason, _ := strings.Cut(rest, ": ")
				if s.Node != node || s.PodCIDR != cidr || !strings.Contains(s.Reason, reason) {
					t.Errorf("skip %d = %+v, want %s", i, s, tt.skips[i])
				}
			}
		})
	}
}

// FuzzPlan: whatever the Node objects say, a node never routes its own pod
// CIDRs, every route's gateway is inside the subnet of the interface it
// leaves by, and no two routes overlap.
func FuzzPlan(f *testing.F) {
	f.Add("10.0.0.2", "10.244.1.0/24", "fd00::2", "fd10:244:1::/64")
	f.Add("10.0.0.1", "10.244.0.0/16", "fe80::1", "::/0")
	f.Fuzz(func(t *testing.T, ip1, cidr1, ip2, cidr2 string) {
		lan := subnet{Prefix: netip.MustParsePrefix("10.0.0.0/24"), Addr: netip.MustParseAddr("10.0.0.1"), Link: 2, Dev: "eth0", Up: true}
		lan6 := subnet{Prefix: netip.MustParsePrefix("fd00::/64"), Addr: netip.MustParseAddr("fd00::1"), Link: 2, Dev: "eth0", Up: true}
		nodes := []runtime.Node{
			testNode("a", []string{"10.0.0.1"}, "10.244.0.0/24"),
			testNode("b", []string{ip1, ip2}, cidr1, cidr2),
			testNode("c", []string{ip2}, cidr2, cidr1),
		}
		want, _ := plan("a", nodes, []subnet{lan, lan6})
		own := netip.MustParsePrefix("10.244.0.0/24")
		for i, w := range want {
			if w.PodCIDR.Bits() == 0 {
				t.Errorf("route %+v is a default route", w)
			}
			if w.Node == "a" || w.PodCIDR.Overlaps(own) {
				t.Errorf("route %+v covers this node's own pods", w)
			}
			s := map[int]subnet{0: lan, 1: lan6}[map[bool]int{true: 0, false: 1}[w.Via.Is4()]]
			if !s.Prefix.Contains(w.Via) || w.Via == s.Addr || w.Dev != s.Dev {
				t.Errorf("route %+v: gateway not on-link", w)
			}
			for _, o := range want[i+1:] {
				if o.PodCIDR.Overlaps(w.PodCIDR) {
					t.Errorf("routes %+v and %+v overlap", w, o)
				}
			}
		}
	})
}
