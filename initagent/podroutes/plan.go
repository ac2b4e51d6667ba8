package podroutes

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ballast-os/ballast/initagent/runtime"
)

// subnet is a connected subnet of one of this node's interfaces.
type subnet struct {
	Prefix netip.Prefix // masked
	Addr   netip.Addr   // this node's address in it
	Link   int
	Dev    string
	Up     bool
}

// route is a pod route the node should have: another node's pod CIDR via
// that node's address, out of the interface whose subnet holds the address.
type route struct {
	Node    string
	PodCIDR netip.Prefix
	Via     netip.Addr
	Link    int
	Dev     string
}

// skip is another node's pod CIDR that gets no route, and why. warn marks
// the reasons an operator has to fix; the others resolve themselves (a link
// comes up, kubelet reports an address).
type skip struct {
	Node    string
	PodCIDR string
	Reason  string
	warn    bool
}

// plan decides the pod routes of node self from the cluster's nodes and the
// node's connected subnets. It is pure: the same input gives the same
// routes, in the nodes' name order.
func plan(self string, nodes []runtime.Node, subnets []subnet) ([]route, []skip) {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b runtime.Node) int { return cmp.Compare(a.Metadata.Name, b.Metadata.Name) })
	var own []netip.Prefix
	for _, n := range nodes {
		if n.Metadata.Name == self {
			own, _ = parseCIDRs(n.Spec.PodCIDRs)
		}
	}
	ownAddr := map[netip.Addr]bool{}
	for _, s := range subnets {
		ownAddr[s.Addr] = true
	}
	var want []route
	var skips []skip
	for _, n := range nodes {
		name := n.Metadata.Name
		if name == self {
			continue
		}
		cidrs, bad := parseCIDRs(n.Spec.PodCIDRs)
		for _, c := range bad {
			skips = append(skips, skip{Node: name, PodCIDR: c, Reason: "spec.podCIDRs holds an entry that is not a CIDR", warn: true})
		}
	cidr:
		for _, c := range cidrs {
			sk := skip{Node: name, PodCIDR: c.String(), warn: true}
			if c.Bits() == 0 {
				sk.Reason = "a podCIDR of every address would be a default route"
				skips = append(skips, sk)
				continue
			}
			for _, o := range own {
				if o.Overlaps(c) {
					sk.Reason = fmt.Sprintf("overlaps this node's own podCIDR %s", o)
					skips = append(skips, sk)
					continue cidr
				}
			}
			for _, w := range want {
				if w.PodCIDR.Overlaps(c) {
					sk.Reason = fmt.Sprintf("overlaps podCIDR %s of node %s", w.PodCIDR, w.Node)
					skips = append(skips, sk)
					continue cidr
				}
			}
			via, ok := internalIP(n, c.Addr().Is4())
			if !ok {
				sk.Reason, sk.warn = fmt.Sprintf("the node reports no usable InternalIP of the podCIDR's family (IPv%d)", family(c)), false
				skips = append(skips, sk)
				continue
			}
			if ownAddr[via] {
				sk.Reason = fmt.Sprintf("the node's InternalIP %s is an address of this node", via)
				skips = append(skips, sk)
				continue
			}
			s, found := onLink(via, subnets)
			switch {
			case !found:
				sk.Reason = fmt.Sprintf("InternalIP %s is not on-link (in no connected subnet of this node): that needs BGP or an overlay, which ballast does not do", via)
				skips = append(skips, sk)
			case !s.Up:
				sk.Reason, sk.warn = fmt.Sprintf("InternalIP %s is on %s, which is down", via, s.Dev), false
				skips = append(skips, sk)
			default:
				want = append(want, route{Node: name, PodCIDR: c, Via: via, Link: s.Link, Dev: s.Dev})
			}
		}
	}
	return want, skips
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 4
	}
	return 6
}

// parseCIDRs returns the masked prefixes and the entries that are none.
func parseCIDRs(ss []string) (ok []netip.Prefix, bad []string) {
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			bad = append(bad, s)
			continue
		}
		ok = append(ok, p.Masked())
	}
	return ok, bad
}

// internalIP is the node's first InternalIP of the family that can be a
// gateway (not link-local, loopback or unspecified).
func internalIP(n runtime.Node, v4 bool) (netip.Addr, bool) {
	for _, s := range n.InternalIPs() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		a = a.Unmap()
		if a.Is4() != v4 || a.IsLinkLocalUnicast() || a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() {
			continue
		}
		return a, true
	}
	return netip.Addr{}, false
}

// onLink finds the connected subnet that holds a: the longest prefix, an
// interface that is up first, the lowest interface index on a tie.
func onLink(a netip.Addr, subnets []subnet) (subnet, bool) {
	var best subnet
	found := false
	better := func(s subnet) bool {
		if !found {
			return true
		}
		if s.Up != best.Up {
			return s.Up
		}
		if s.Prefix.Bits() != best.Prefix.Bits() {
			return s.Prefix.Bits() > best.Prefix.Bits()
		}
		return s.Link < best.Link
	}
	for _, s := range subnets {
		if s.Prefix.Bits() == s.Prefix.Addr().BitLen() || !s.Prefix.Contains(a) {
			continue
		}
		if better(s) {
			best, found = s, true
		}
	}
	return best, found
}
