// Package nodeip chooses the node's address for kubelet (--node-ip) and the
// control plane: at most one IPv4 and one IPv6 address, by explicit rules,
// with an explanation of every candidate.
//
// The decision is a pure function over a snapshot of the kernel's links,
// addresses and routes, the config hints and the previous decision, so it is
// table-tested without a kernel; Snapshot reads the kernel with netlink.
//
//	kernel, err := nodeip.Snapshot(nil)
//	hints, err := nodeip.HintsFromConfig(cfg)
//	hints.PodCIDRs = ...
//	prev, err := store.Load()
//	d := nodeip.Decide(nodeip.Input{Kernel: kernel, Hints: hints, Previous: prev})
//	if d.Changed { log.Info("node IP changed", "reason", d.Reason) }
//	err = store.Save(d)
//	args = append(args, "--node-ip="+d.KubeletArg())
//
// Rules, per family, first that answers:
//  1. the explicit address (kubelet.nodeIP.addresses);
//  2. the previous decision's address (sticky), while it is on the node and acceptable;
//  3. kubelet.nodeIP.subnets, in order (when set for a family, only addresses inside them qualify);
//  4. the subnet that holds an API VIP;
//  5. the default route of lowest metric (main table before policy tables, then
//     link index): its preferred source, else the addresses on its interface;
//  6. the only acceptable address of the family.
//
// Never chosen: addresses on excluded or down interfaces, loopback,
// link-local, IPv4-compatible IPv6, tentative, DAD-failed, optimistic or
// deprecated addresses, VIPs, addresses in the pod or service CIDRs. Ties
// are broken by link index, then by address.
package nodeip

import (
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"
)

// Family is an address family.
type Family int

// Address families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return fmt.Sprintf("Family(%d)", int(f))
}

// FamilyOf returns the family of a, with IPv4-mapped IPv6 counted as IPv4.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// AddrFlags are the kernel's IFA_F_* address flags.
type AddrFlags uint32

// Address flags, with the values of linux/if_addr.h.
const (
	FlagSecondary  AddrFlags = 0x01  // IFA_F_SECONDARY
	FlagNoDAD      AddrFlags = 0x02  // IFA_F_NODAD
	FlagOptimistic AddrFlags = 0x04  // IFA_F_OPTIMISTIC
	FlagDADFailed  AddrFlags = 0x08  // IFA_F_DADFAILED
	FlagDeprecated AddrFlags = 0x20  // IFA_F_DEPRECATED
	FlagTentative  AddrFlags = 0x40  // IFA_F_TENTATIVE
	FlagPermanent  AddrFlags = 0x80  // IFA_F_PERMANENT
	FlagManageTemp AddrFlags = 0x100 // IFA_F_MANAGETEMPADDR
)

// Forever is the lifetime of an address that does not expire (the kernel's
// INFINITY_LIFE_TIME, 0xFFFFFFFF seconds).
const Forever = ^uint32(0)

// RouteProtocolRA is RTPROT_RA (linux/rtnetlink.h): a route learned from an
// IPv6 router advertisement.
const RouteProtocolRA = 9

// MainTable is RT_TABLE_MAIN.
const MainTable = 254

// Link is a network interface.
type Link struct {
	Index int
	Name  string
	Flags net.Flags // FlagUp, FlagLoopback are used
}

// Address is an address on a link.
type Address struct {
	LinkIndex int
	Prefix    netip.Prefix // address with its prefix length
	Flags     AddrFlags
	// PreferredLifetime is in seconds; Forever for an address that does not
	// expire, 0 for a deprecated one.
	PreferredLifetime uint32
}

// Route is a unicast route.
type Route struct {
	LinkIndex int
	Dst       netip.Prefix // 0.0.0.0/0 or ::/0 for a default route
	Gateway   netip.Addr   // zero for an on-link route
	Src       netip.Addr   // preferred source; zero if none
	Metric    int
	Table     int // MainTable, or a policy routing table
	Protocol  int // RTPROT_*; RouteProtocolRA for router advertisements
}

// Kernel is what the kernel has: links, addresses and routes (all tables).
type Kernel struct {
	Links     []Link
	Addresses []Address
	Routes    []Route
}

// Hints are the configured inputs of the decision.
type Hints struct {
	// Addresses are explicit node addresses, at most one per family.
	Addresses []netip.Addr
	// Subnets are the valid subnets, in order of preference.
	Subnets []netip.Prefix
	// Family goes first in the kubelet argument; zero means IPv4.
	Family Family
	// APIVIPs and IngressVIPs are never node addresses; the subnet that
	// holds an API VIP is preferred.
	APIVIPs     []netip.Addr
	IngressVIPs []netip.Addr
	// PodCIDRs and ServiceCIDRs hold no node address.
	PodCIDRs     []netip.Prefix
	ServiceCIDRs []netip.Prefix
	// ExcludeInterfaces are interface names (path.Match patterns, e.g.
	// "cali*") whose addresses are never chosen.
	ExcludeInterfaces []string
}

// Previous is the last decision, kept across reboots by a Store.
type Previous struct {
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
}

func (p *Previous) get(f Family) netip.Addr {
	if p == nil {
		return netip.Addr{}
	}
	if f == IPv4 {
		return p.IPv4
	}
	return p.IPv6
}

// Input is everything Decide looks at.
type Input struct {
	Kernel   Kernel
	Hints    Hints
	Previous *Previous // nil: no previous decision
}

// Verdict says what happened to a candidate.
type Verdict string

// Verdicts.
const (
	Chosen    Verdict = "chosen"
	Rejected  Verdict = "rejected"   // a never-rule excluded it
	NotChosen Verdict = "not chosen" // acceptable, but another address won
)

// Candidate is one address on the node with the rule that accepted or
// rejected it.
type Candidate struct {
	Addr      netip.Addr   // normalized: IPv4-mapped IPv6 is IPv4
	Prefix    netip.Prefix // as on the link
	Link      string
	LinkIndex int
	Family    Family
	// Subnet is the on-link subnet: the masked prefix, or for an IPv6 /128
	// (or IPv4 /32) the on-link route that covers it.
	Subnet       netip.Prefix
	SubnetSource string // "" for the address's own prefix, else e.g. "RA route"
	Verdict      Verdict
	Rule         string

	unsettled bool // rejected while DAD runs
}

func (c Candidate) String() string {
	return fmt.Sprintf("%s on %s: %s: %s", c.Prefix, c.Link, c.Verdict, c.Rule)
}

// Decision is the chosen node addresses with the explanation.
type Decision struct {
	IPv4, IPv6 netip.Addr // zero when none
	Preferred  Family     // goes first
	// Rules say which rule chose each family's address ("" when none).
	RuleIPv4, RuleIPv6 string
	Candidates         []Candidate
	// Warnings are problems an operator should fix (an explicit address
	// that is not on the node, a family with no rule that chose).
	Warnings []string
	// Changed is true when the decision differs from Input.Previous (or
	// there was none); Reason then says why, for the log.
	Changed bool
	Reason  string
	// Unsettled lists addresses rejected only because duplicate address
	// detection has not finished (tentative or optimistic). At boot the
	// previous address may be one of them: decide again once DAD is done
	// (about a second) before acting on a changed decision.
	Unsettled []netip.Addr
}

// Addrs returns the chosen addresses, preferred family first.
func (d Decision) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, f := range d.order() {
		if a := d.get(f); a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// KubeletArg is the value of kubelet's --node-ip: the chosen addresses,
// preferred family first, comma separated; "" when none.
func (d Decision) KubeletArg() string {
	var s []string
	for _, a := range d.Addrs() {
		s = append(s, a.String())
	}
	return strings.Join(s, ",")
}

// Previous returns what a Store keeps of d.
func (d Decision) Previous() Previous { return Previous{IPv4: d.IPv4, IPv6: d.IPv6} }

// Explanation returns one line per candidate ("10.0.0.5/24 on eth0:
// chosen: ...") followed by the warnings.
func (d Decision) Explanation() []string {
	var out []string
	for _, c := range d.Candidates {
		out = append(out, c.String())
	}
	for _, w := range d.Warnings {
		out = append(out, "warning: "+w)
	}
	return out
}

func (d Decision) order() []Family {
	if d.Preferred == IPv6 {
		return []Family{IPv6, IPv4}
	}
	return []Family{IPv4, IPv6}
}

func (d Decision) get(f Family) netip.Addr {
	if f == IPv4 {
		return d.IPv4
	}
	return d.IPv6
}

func (d *Decision) set(f Family, a netip.Addr, rule string) {
	if f == IPv4 {
		d.IPv4, d.RuleIPv4 = a, rule
	} else {
		d.IPv6, d.RuleIPv6 = a, rule
	}
}

func (d Decision) rule(f Family) string {
	if f == IPv4 {
		return d.RuleIPv4
	}
	return d.RuleIPv6
}

// ipv4Compatible reports an IPv4-compatible IPv6 address (::a.b.c.d,
// deprecated by RFC 4291 §2.5.5.1); :: and ::1 are not.
func ipv4Compatible(a netip.Addr) bool {
	if !a.Is6() || a.Is4In6() {
		return false
	}
	b := a.As16()
	for _, x := range b[:12] {
		if x != 0 {
			return false
		}
	}
	return !a.IsUnspecified() && !a.IsLoopback()
}

func normPrefix(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return p
	}
	if p.Addr().Is4In6() {
		bits := max(p.Bits()-96, 0)
		return netip.PrefixFrom(p.Addr().Unmap(), bits)
	}
	return p
}

// Decide chooses the node addresses. It is pure: same input, same decision.
func Decide(in Input) Decision {
	h := normHints(in.Hints)
	d := Decision{Preferred: h.Family}
	if d.Preferred != IPv6 {
		d.Preferred = IPv4
	}
	links := map[int]Link{}
	for _, l := range in.Kernel.Links {
		links[l.Index] = l
	}
	for _, a := range in.Kernel.Addresses {
		d.Candidates = append(d.Candidates, candidate(a, links, in.Kernel.Routes, h))
	}
	slices.SortStableFunc(d.Candidates, func(a, b Candidate) int {
		if a.Family != b.Family {
			return int(a.Family) - int(b.Family)
		}
		if a.LinkIndex != b.LinkIndex {
			return a.LinkIndex - b.LinkIndex
		}
		return a.Addr.Compare(b.Addr)
	})
	for _, c := range d.Candidates {
		if c.unsettled {
			d.Unsettled = append(d.Unsettled, c.Addr)
		}
	}
	var reasons []string
	for _, f := range d.order() {
		why := d.decideFamily(f, in, h)
		prev := in.Previous.get(f)
		now := d.get(f)
		switch {
		case in.Previous == nil:
		case prev == now:
		case !prev.IsValid():
			reasons = append(reasons, fmt.Sprintf("%s: none → %s (%s)", f, now, d.rule(f)))
		case !now.IsValid():
			reasons = append(reasons, fmt.Sprintf("%s: %s → none (%s)", f, prev, why))
		default:
			reasons = append(reasons, fmt.Sprintf("%s: %s → %s (%s; %s)", f, prev, now, why, d.rule(f)))
		}
	}
	switch {
	case in.Previous == nil:
		d.Changed = true
		d.Reason = "no previous decision"
		if a := d.KubeletArg(); a != "" {
			d.Reason += ": " + a
		}
	case len(reasons) > 0:
		d.Changed = true
		d.Reason = strings.Join(reasons, "; ")
	}
	return d
}

func normHints(h Hints) Hints {
	n := h
	n.Addresses = normAddrs(h.Addresses)
	n.APIVIPs = normAddrs(h.APIVIPs)
	n.IngressVIPs = normAddrs(h.IngressVIPs)
	n.Subnets = normPrefixes(h.Subnets)
	n.PodCIDRs = normPrefixes(h.PodCIDRs)
	n.ServiceCIDRs = normPrefixes(h.ServiceCIDRs)
	return n
}

func normAddrs(in []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range in {
		if a.IsValid() {
			out = append(out, a.Unmap().WithZone(""))
		}
	}
	return out
}

func normPrefixes(in []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range in {
		if p.IsValid() {
			out = append(out, normPrefix(p).Masked())
		}
	}
	return out
}

// candidate builds a candidate and applies the never-rules to it.
func candidate(a Address, links map[int]Link, routes []Route, h Hints) Candidate {
	l, known := links[a.LinkIndex]
	name := l.Name
	if !known || name == "" {
		name = fmt.Sprintf("link#%d", a.LinkIndex)
	}
	p := normPrefix(a.Prefix)
	c := Candidate{
		Addr:      p.Addr().WithZone(""),
		Prefix:    a.Prefix,
		Link:      name,
		LinkIndex: a.LinkIndex,
		Family:    FamilyOf(p.Addr()),
		Subnet:    p.Masked(),
		Verdict:   Rejected,
	}
	if c.Family == IPv4 && a.Prefix.Addr().Is4In6() {
		c.SubnetSource = "IPv4-mapped, treated as " + c.Addr.String()
	}
	if p.IsSingleIP() {
		if r, ok := onLinkRoute(c.Addr, a.LinkIndex, routes); ok {
			c.Subnet = r.Dst
			if r.Protocol == RouteProtocolRA {
				c.SubnetSource = "on-link route from router advertisement"
			} else {
				c.SubnetSource = "on-link route"
			}
		}
	}
	reject := func(format string, args ...any) Candidate {
		c.Rule = fmt.Sprintf(format, args...)
		return c
	}
	for _, pat := range h.ExcludeInterfaces {
		if ok, _ := path.Match(pat, name); ok || pat == name {
			return reject("interface %s is excluded (%q)", name, pat)
		}
	}
	switch {
	case !c.Addr.IsValid():
		return reject("not an address")
	case ipv4Compatible(c.Addr):
		return reject("IPv4-compatible IPv6 (::a.b.c.d, deprecated by RFC 4291), never chosen: use %s or a real IPv6 address", netip.AddrFrom4([4]byte(c.Addr.AsSlice()[12:])))
	case c.Addr.IsLoopback():
		return reject("loopback")
	case known && l.Flags&net.FlagLoopback != 0:
		return reject("on the loopback interface")
	case c.Addr.IsLinkLocalUnicast():
		return reject("link-local")
	case c.Addr.IsUnspecified(), c.Addr.IsMulticast():
		return reject("not a unicast address")
	case known && l.Flags&net.FlagUp == 0:
		return reject("interface %s is down", name)
	case a.Flags&FlagDADFailed != 0:
		return reject("duplicate address detection failed (dadfailed)")
	case a.Flags&FlagTentative != 0:
		c.unsettled = true
		return reject("tentative (duplicate address detection not finished)")
	case a.Flags&FlagOptimistic != 0:
		c.unsettled = true
		return reject("optimistic (duplicate address detection not finished)")
	case a.Flags&FlagDeprecated != 0 || a.PreferredLifetime == 0:
		return reject("deprecated (preferred lifetime 0)")
	}
	for _, v := range h.APIVIPs {
		if v == c.Addr {
			return reject("is the API VIP")
		}
	}
	for _, v := range h.IngressVIPs {
		if v == c.Addr {
			return reject("is the ingress VIP")
		}
	}
	for _, p := range h.PodCIDRs {
		if p.Contains(c.Addr) {
			return reject("inside the pod CIDR %s", p)
		}
	}
	for _, p := range h.ServiceCIDRs {
		if p.Contains(c.Addr) {
			return reject("inside the service CIDR %s", p)
		}
	}
	c.Verdict = NotChosen
	return c
}

// onLinkRoute finds the on-link route (no gateway) on link that covers a,
// preferring routes from router advertisements, then the longest prefix
// shorter than a host route.
func onLinkRoute(a netip.Addr, link int, routes []Route) (Route, bool) {
	var best Route
	found := false
	for _, r := range routes {
		if r.LinkIndex != link || r.Gateway.IsValid() || !r.Dst.IsValid() || r.Dst.IsSingleIP() || r.Dst.Bits() == 0 {
			continue
		}
		dst := normPrefix(r.Dst)
		if !dst.Contains(a) {
			continue
		}
		r.Dst = dst.Masked()
		switch {
		case !found:
		case (r.Protocol == RouteProtocolRA) != (best.Protocol == RouteProtocolRA):
			if best.Protocol == RouteProtocolRA {
				continue
			}
		case r.Dst.Bits() <= best.Dst.Bits():
			continue
		}
		best, found = r, true
	}
	return best, found
}
