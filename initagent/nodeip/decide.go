package nodeip

import (
	"fmt"
	"net/netip"
	"slices"
)

// decideFamily applies the choosing rules to the acceptable candidates of
// family f, writes each candidate's rule, and returns why the previous
// address of f was not kept ("" when it was, or when there was none).
func (d *Decision) decideFamily(f Family, in Input, h Hints) string {
	var acc []int // acceptable candidates, sorted by link index, then address
	for i, c := range d.Candidates {
		if c.Family == f && c.Verdict == NotChosen {
			acc = append(acc, i)
		}
	}
	cand := func(i int) *Candidate { return &d.Candidates[i] }
	choose := func(i int, rule string) {
		cand(i).Verdict, cand(i).Rule = Chosen, rule
		d.set(f, cand(i).Addr, rule)
	}
	// lose gives every acceptable candidate that has no rule yet this one.
	lose := func(format string, args ...any) {
		for _, i := range acc {
			if cand(i).Verdict == NotChosen && cand(i).Rule == "" {
				cand(i).Rule = fmt.Sprintf(format, args...)
			}
		}
	}
	prev := in.Previous.get(f).Unmap()
	whyNotPrev := func() string {
		if !prev.IsValid() {
			return ""
		}
		for _, c := range d.Candidates {
			if c.Addr == prev && c.Verdict == Rejected {
				return fmt.Sprintf("previous %s is now rejected: %s", prev, c.Rule)
			}
		}
		for _, c := range d.Candidates {
			if c.Addr == prev {
				return fmt.Sprintf("previous %s: %s", prev, c.Rule)
			}
		}
		return fmt.Sprintf("previous %s is no longer on the node", prev)
	}

	// 1. The explicit address.
	var explicit netip.Addr
	for _, a := range h.Addresses {
		if FamilyOf(a) == f {
			explicit = a
			break
		}
	}
	switch {
	case !explicit.IsValid():
	case ipv4Compatible(explicit):
		d.Warnings = append(d.Warnings, fmt.Sprintf("kubelet.nodeIP.addresses: %s is IPv4-compatible IPv6 (deprecated by RFC 4291), never chosen: write the IPv4 address or a real IPv6 address", explicit))
	default:
		rejected := ""
		for _, i := range acc {
			if cand(i).Addr == explicit {
				choose(i, "explicit address (kubelet.nodeIP.addresses)")
				lose("kubelet.nodeIP.addresses names %s", explicit)
				if prev.IsValid() && prev != explicit {
					return fmt.Sprintf("kubelet.nodeIP.addresses names %s", explicit)
				}
				return ""
			}
		}
		for _, c := range d.Candidates {
			if c.Addr == explicit && c.Verdict == Rejected {
				rejected = c.Rule
			}
		}
		if rejected != "" {
			d.Warnings = append(d.Warnings, fmt.Sprintf("kubelet.nodeIP.addresses: %s is on the node but rejected (%s); choosing by the other rules", explicit, rejected))
			break
		}
		d.set(f, explicit, "explicit address (kubelet.nodeIP.addresses), not on any interface yet")
		d.Warnings = append(d.Warnings, fmt.Sprintf("kubelet.nodeIP.addresses: %s is not on any interface; used anyway, kubelet waits for it (check the address or the network config)", explicit))
		lose("kubelet.nodeIP.addresses names %s", explicit)
		if prev.IsValid() && prev != explicit {
			return fmt.Sprintf("kubelet.nodeIP.addresses names %s", explicit)
		}
		return ""
	}

	var subnets []netip.Prefix
	for _, p := range h.Subnets {
		if FamilyOf(p.Addr()) == f {
			subnets = append(subnets, p)
		}
	}
	subnetIndex := func(a netip.Addr) int {
		for j, p := range subnets {
			if p.Contains(a) {
				return j
			}
		}
		return -1
	}

	// 2. Sticky: the previous address while it is here and acceptable.
	if prev.IsValid() {
		for _, i := range acc {
			if cand(i).Addr != prev {
				continue
			}
			if len(subnets) > 0 && subnetIndex(prev) < 0 {
				break
			}
			choose(i, "kept from the previous decision")
			lose("the previous decision's %s is kept (sticky)", prev)
			return ""
		}
		if len(subnets) > 0 && subnetIndex(prev) < 0 {
			for _, i := range acc {
				if cand(i).Addr == prev {
					cand(i).Rule = "outside kubelet.nodeIP.subnets (was the previous decision)"
				}
			}
		}
	}

	// 3. kubelet.nodeIP.subnets: when set for the family, only addresses
	// inside them qualify.
	if len(subnets) > 0 {
		best, bestJ := -1, 0
		for _, i := range acc {
			j := subnetIndex(cand(i).Addr)
			if j < 0 {
				if cand(i).Rule == "" {
					cand(i).Rule = fmt.Sprintf("outside kubelet.nodeIP.subnets %v", subnets)
				}
				continue
			}
			if best < 0 || j < bestJ {
				best, bestJ = i, j
			}
		}
		if best < 0 {
			d.Warnings = append(d.Warnings, fmt.Sprintf("no %s node address: none is inside kubelet.nodeIP.subnets %v", f, subnets))
			return whyNotPrev()
		}
		choose(best, fmt.Sprintf("inside kubelet.nodeIP.subnets entry %s", subnets[bestJ]))
		for _, i := range acc {
			if i == best || cand(i).Rule != "" {
				continue
			}
			if j := subnetIndex(cand(i).Addr); j > bestJ {
				cand(i).Rule = fmt.Sprintf("inside %s, a later kubelet.nodeIP.subnets entry than %s", subnets[j], subnets[bestJ])
			} else {
				cand(i).Rule = fmt.Sprintf("also inside %s; %s wins by link index, then address", subnets[bestJ], cand(best).Addr)
			}
		}
		return whyNotPrev()
	}

	// 4. The subnet that holds an API VIP.
	var vips []netip.Addr
	for _, v := range h.APIVIPs {
		if FamilyOf(v) == f {
			vips = append(vips, v)
		}
	}
	vipOf := func(c *Candidate) netip.Addr {
		for _, v := range vips {
			if c.Subnet.Contains(v) {
				return v
			}
		}
		return netip.Addr{}
	}
	for _, i := range acc {
		v := vipOf(cand(i))
		if !v.IsValid() {
			continue
		}
		choose(i, fmt.Sprintf("its subnet %s holds the API VIP %s", cand(i).Subnet, v))
		for _, k := range acc {
			if k == i {
				continue
			}
			if vipOf(cand(k)).IsValid() {
				cand(k).Rule = fmt.Sprintf("its subnet also holds an API VIP; %s wins by link index, then address", cand(i).Addr)
			} else {
				cand(k).Rule = fmt.Sprintf("its subnet %s holds no API VIP", cand(k).Subnet)
			}
		}
		return whyNotPrev()
	}

	// 5. The default route of lowest metric.
	var defs []Route
	for _, r := range in.Kernel.Routes {
		dst := normPrefix(r.Dst)
		if dst.IsValid() && dst.Bits() == 0 && FamilyOf(dst.Addr()) == f && r.Table != localTable {
			defs = append(defs, r)
		}
	}
	slices.SortStableFunc(defs, compareDefault)
	for _, r := range defs {
		win := -1
		rule := ""
		if src := r.Src.Unmap(); src.IsValid() {
			for _, i := range acc {
				if cand(i).Addr == src {
					win = i
					rule = fmt.Sprintf("preferred source of the default route of lowest metric (%s)", describeRoute(r))
					break
				}
			}
		}
		if win < 0 {
			for _, i := range acc {
				if cand(i).LinkIndex == r.LinkIndex {
					win = i
					rule = fmt.Sprintf("default route of lowest metric (%s)", describeRoute(r))
					break
				}
			}
		}
		if win < 0 {
			continue
		}
		choose(win, rule)
		for _, i := range acc {
			c := cand(i)
			if i == win || c.Rule != "" {
				continue
			}
			if c.LinkIndex == r.LinkIndex {
				c.Rule = fmt.Sprintf("also on %s; %s wins by address", c.Link, cand(win).Addr)
				continue
			}
			var own *Route
			for k := range defs {
				if defs[k].LinkIndex == c.LinkIndex {
					own = &defs[k]
					break
				}
			}
			switch {
			case own == nil:
				c.Rule = fmt.Sprintf("no default route on %s", c.Link)
			case own.Metric > r.Metric:
				c.Rule = fmt.Sprintf("default route of higher metric (%d > %d)", own.Metric, r.Metric)
			default:
				c.Rule = fmt.Sprintf("default route (%s) loses to %s's: main table first, then metric, then link index", describeRoute(*own), cand(win).Link)
			}
		}
		return whyNotPrev()
	}

	// 6. The only acceptable address of the family.
	switch len(acc) {
	case 0:
	case 1:
		choose(acc[0], fmt.Sprintf("the only acceptable %s address", f))
	default:
		lose("ambiguous: %d acceptable %s addresses and no subnet hint, API VIP subnet or default route to choose", len(acc), f)
		d.Warnings = append(d.Warnings, fmt.Sprintf("no %s node address: %d acceptable addresses and no rule chose one; set kubelet.nodeIP.subnets or kubelet.nodeIP.addresses", f, len(acc)))
	}
	return whyNotPrev()
}

// localTable is RT_TABLE_LOCAL: local and broadcast routes, never a default.
const localTable = 255

// compareDefault orders default routes: main table first, then metric, then
// link index, then table.
func compareDefault(a, b Route) int {
	am, bm := a.Table != MainTable && a.Table != 0, b.Table != MainTable && b.Table != 0
	switch {
	case am != bm:
		if am {
			return 1
		}
		return -1
	case a.Metric != b.Metric:
		return a.Metric - b.Metric
	case a.LinkIndex != b.LinkIndex:
		return a.LinkIndex - b.LinkIndex
	}
	return a.Table - b.Table
}

func describeRoute(r Route) string {
	s := fmt.Sprintf("%d", r.Metric)
	if r.Table != MainTable && r.Table != 0 {
		s += fmt.Sprintf(", table %d", r.Table)
	}
	return s
}
