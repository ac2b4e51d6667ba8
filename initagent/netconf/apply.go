package netconf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/config"
)

// Protocol marks the routes and rules ballast creates (rtm_protocol and
// FRA_PROTOCOL), so a later apply — even by a restarted agent — knows which
// ones are its own. 186 (0xba) is not assigned in rtnetlink.h or iproute2's
// rt_protos.
const Protocol = 186

// Applier applies Specs to the network namespace it runs in.
type Applier struct {
	Log *slog.Logger
	// Handle is the netlink handle to use; nil means a handle in the
	// caller's network namespace, opened on first use.
	Handle *netlink.Handle
	// SysctlRoot is where sysctls are written; empty means /proc/sys.
	SysctlRoot string
	// NeedKinds, if set, is called before a Spec with virtual links (bond,
	// bridge, dummy, VLAN) is applied, with their kinds: the agent waits
	// there for the kernel modules behind them, still loading at boot.
	NeedKinds func(ctx context.Context, kinds []string) error

	owned map[string]bool // addresses this applier added, "link|prefix"
}

// dumpRetries bounds how often a netlink dump is repeated when the kernel
// reports it was interrupted by a concurrent change (NLM_F_DUMP_INTR).
const dumpRetries = 5

// RetryDump runs a netlink dump again while the kernel reports that it was
// interrupted by a concurrent change, at most dumpRetries times.
func RetryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return v, err
		}
	}
}

// Result lists every change Apply made to the kernel, one line each.
type Result struct {
	Changes []string
}

func (r *Result) add(format string, args ...any) {
	r.Changes = append(r.Changes, fmt.Sprintf(format, args...))
}

// Apply makes the kernel match spec. It returns the changes it made, also
// when it fails part way (the transaction layer then restores the previous
// Spec).
func (a *Applier) Apply(ctx context.Context, spec Spec) (*Result, error) {
	if a.Handle == nil {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		a.Handle = h
	}
	if a.Log == nil {
		a.Log = slog.New(slog.DiscardHandler)
	}
	if a.SysctlRoot == "" {
		a.SysctlRoot = "/proc/sys"
	}
	if a.owned == nil {
		a.owned = map[string]bool{}
	}
	if a.NeedKinds != nil {
		var kinds []string
		for _, l := range spec.Links {
			if l.Kind != config.TypeEthernet && !slices.Contains(kinds, l.Kind) {
				kinds = append(kinds, l.Kind)
			}
		}
		if len(kinds) > 0 {
			if err := a.NeedKinds(ctx, kinds); err != nil {
				return &Result{}, fmt.Errorf("links of kind %v: %w", kinds, err)
			}
		}
	}
	res := &Result{}
	err := a.apply(ctx, spec, res)
	for _, c := range res.Changes {
		a.Log.Debug("netconf change", "change", c)
	}
	return res, err
}

func (a *Applier) apply(ctx context.Context, spec Spec, res *Result) error {
	h := a.Handle
	links := map[string]netlink.Link{}

	// Physical NICs: find, rename when selected by MAC.
	for _, l := range spec.Links {
		if l.Kind != config.TypeEthernet {
			continue
		}
		link, err := a.findEthernet(l)
		if err != nil {
			return err
		}
		if l.Name != "" && link.Attrs().Name != l.Name {
			old := link.Attrs().Name
			if err := h.LinkSetDown(link); err != nil {
				return fmt.Errorf("rename %s to %s: %w", old, l.Name, err)
			}
			if err := h.LinkSetName(link, l.Name); err != nil {
				return fmt.Errorf("rename %s to %s: %w", old, l.Name, err)
			}
			res.add("rename %s (%s) to %s", old, l.MAC, l.Name)
			if link, err = h.LinkByIndex(link.Attrs().Index); err != nil {
				return err
			}
		}
		links[link.Attrs().Name] = link
		if l.Name == "" {
			l.Name = link.Attrs().Name
		}
	}
	// Virtual links: bonds, bridges and dummies first, then VLANs on top.
	for _, pass := range [][]string{{config.TypeBond, config.TypeBridge, config.TypeDummy}, {config.TypeVLAN}} {
		for _, l := range spec.Links {
			if !slices.Contains(pass, l.Kind) {
				continue
			}
			link, err := a.ensureVirtual(l, links, res)
			if err != nil {
				return err
			}
			links[l.Name] = link
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Membership in bonds and bridges. A bond member must be down to be enslaved.
	for _, l := range spec.Links {
		if l.Master == "" {
			continue
		}
		link, master := links[linkName(l, links)], links[l.Master]
		if link == nil {
			return fmt.Errorf("%s is a member of %s but is not declared as an interface", l.Name, l.Master)
		}
		if master == nil {
			return fmt.Errorf("BUG: master %s of %s was not created", l.Master, l.Name)
		}
		if link.Attrs().MasterIndex == master.Attrs().Index {
			continue
		}
		if err := h.LinkSetDown(link); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", l.Name, l.Master, err)
		}
		if err := h.LinkSetMaster(link, master); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", l.Name, l.Master, err)
		}
		res.add("enslave %s to %s", l.Name, l.Master)
	}
	// Re-read: enslaving and creating change flags and MTUs.
	if err := a.refresh(links); err != nil {
		return err
	}
	for _, l := range spec.Links {
		name := linkName(l, links)
		link := links[name]
		if l.MTU != 0 && link.Attrs().MTU != l.MTU {
			if err := h.LinkSetMTU(link, l.MTU); err != nil {
				return fmt.Errorf("set mtu %d on %s: %w", l.MTU, name, err)
			}
			res.add("set mtu %s %d→%d", name, link.Attrs().MTU, l.MTU)
		}
		if err := a.sysctls(name, l, res); err != nil {
			return err
		}
	}
	for _, l := range spec.Links {
		name := linkName(l, links)
		link := links[name]
		up := link.Attrs().Flags&net.FlagUp != 0
		switch {
		case !l.Down && !up:
			if err := h.LinkSetUp(link); err != nil {
				return fmt.Errorf("set %s up: %w", name, err)
			}
			res.add("set %s up", name)
		case l.Down && up:
			if err := h.LinkSetDown(link); err != nil {
				return fmt.Errorf("set %s down: %w", name, err)
			}
			res.add("set %s down", name)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// One dump each for addresses and routes, grouped by link: the kernel
	// filters neither by interface, so per-link dumps would cost a full dump each.
	addrs, err := RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, l := range spec.Links {
		link := links[linkName(l, links)]
		if err := a.addresses(link, addrMap(addrs, link.Attrs().Index), l, res); err != nil {
			return err
		}
	}
	// Routes after every address: a gateway must be on-link, a source must exist.
	routes, err := RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	byLink := map[int][]netlink.Route{}
	for _, r := range routes {
		byLink[r.LinkIndex] = append(byLink[r.LinkIndex], r)
	}
	for _, l := range spec.Links {
		link := links[linkName(l, links)]
		if err := a.routes(link, byLink[link.Attrs().Index], l, res); err != nil {
			return err
		}
	}
	return a.rules(spec.Rules, res)
}

func linkName(l LinkSpec, links map[string]netlink.Link) string {
	if l.Name != "" {
		return l.Name
	}
	for name, link := range links {
		if bytes.Equal(permMAC(link), l.MAC) {
			return name
		}
	}
	return ""
}

func permMAC(link netlink.Link) net.HardwareAddr {
	if mac := link.Attrs().PermHWAddr; len(mac) > 0 {
		return mac
	}
	// Virtual NICs (veth, virtio without a permanent address attribute) only have the current one.
	return link.Attrs().HardwareAddr
}

func (a *Applier) findEthernet(l LinkSpec) (netlink.Link, error) {
	if l.MAC == nil {
		link, err := a.Handle.LinkByName(l.Name)
		if err != nil {
			return nil, fmt.Errorf("interface %s not found: check the name with `ip link` or select it by mac: %w", l.Name, err)
		}
		return link, nil
	}
	all, err := RetryDump(a.Handle.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, link := range all {
		if link.Type() == "device" || link.Type() == "veth" {
			if bytes.Equal(permMAC(link), l.MAC) {
				return link, nil
			}
		}
	}
	return nil, fmt.Errorf("no interface has the permanent MAC %s", l.MAC)
}

func (a *Applier) refresh(links map[string]netlink.Link) error {
	for name, link := range links {
		fresh, err := a.Handle.LinkByIndex(link.Attrs().Index)
		if err != nil {
			return fmt.Errorf("read back %s: %w", name, err)
		}
		links[name] = fresh
	}
	return nil
}

func (a *Applier) ensureVirtual(l LinkSpec, links map[string]netlink.Link, res *Result) (netlink.Link, error) {
	h := a.Handle
	want, err := virtualLink(l, links)
	if err != nil {
		return nil, err
	}
	existing, err := h.LinkByName(l.Name)
	if err == nil {
		if sameVirtual(existing, want) {
			return existing, nil
		}
		if err := h.LinkDel(existing); err != nil {
			return nil, fmt.Errorf("recreate %s: %w", l.Name, err)
		}
		res.add("delete %s %s (attributes differ)", existing.Type(), l.Name)
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, fmt.Errorf("look up %s: %w", l.Name, err)
	}
	if err := h.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("create %s %s: %w", l.Kind, l.Name, err)
	}
	res.add("create %s %s", l.Kind, l.Name)
	return h.LinkByName(l.Name)
}

func virtualLink(l LinkSpec, links map[string]netlink.Link) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = l.Name
	switch l.Kind {
	case config.TypeBond:
		b := netlink.NewLinkBond(attrs)
		b.Mode = netlink.StringToBondMode(l.Bond.Mode)
		b.Miimon = l.Bond.MIIMon
		if l.Bond.LACPRate != "" {
			b.LacpRate = netlink.StringToBondLacpRate(l.Bond.LACPRate)
		}
		return b, nil
	case config.TypeBridge:
		return &netlink.Bridge{LinkAttrs: attrs}, nil
	case config.TypeDummy:
		return &netlink.Dummy{LinkAttrs: attrs}, nil
	case config.TypeVLAN:
		parent := links[l.VLANLink]
		if parent == nil {
			return nil, fmt.Errorf("vlan %s: parent %s does not exist", l.Name, l.VLANLink)
		}
		attrs.ParentIndex = parent.Attrs().Index
		return &netlink.Vlan{LinkAttrs: attrs, VlanId: l.VLANID, VlanProtocol: netlink.VLAN_PROTOCOL_8021Q}, nil
	}
	return nil, fmt.Errorf("BUG: %s is not a virtual link kind", l.Kind)
}

func sameVirtual(have, want netlink.Link) bool {
	if have.Type() != want.Type() {
		return false
	}
	switch w := want.(type) {
	case *netlink.Bond:
		h := have.(*netlink.Bond)
		lacpOK := w.Mode != netlink.BOND_MODE_802_3AD || h.LacpRate == w.LacpRate
		return h.Mode == w.Mode && h.Miimon == w.Miimon && lacpOK
	case *netlink.Vlan:
		h := have.(*netlink.Vlan)
		return h.VlanId == w.VlanId && h.ParentIndex == w.ParentIndex
	}
	return true
}

func (a *Applier) sysctls(name string, l LinkSpec, res *Result) error {
	type setting struct {
		path string
		val  int
	}
	var want []setting
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	s := l.Sysctls
	if s.DisableIPv6 != nil {
		want = append(want, setting{"net/ipv6/conf/" + name + "/disable_ipv6", b(*s.DisableIPv6)})
	}
	if s.Forwarding != nil {
		want = append(want, setting{"net/ipv4/conf/" + name + "/forwarding", b(*s.Forwarding)},
			setting{"net/ipv6/conf/" + name + "/forwarding", b(*s.Forwarding)})
	}
	if s.RPFilter != nil {
		want = append(want, setting{"net/ipv4/conf/" + name + "/rp_filter", *s.RPFilter})
	}
	if s.AcceptRA != nil {
		want = append(want, setting{"net/ipv6/conf/" + name + "/accept_ra", *s.AcceptRA})
	}
	if l.SLAAC != nil {
		want = append(want, setting{"net/ipv6/conf/" + name + "/autoconf", b(*l.SLAAC)})
	}
	for _, w := range want {
		path := filepath.Join(a.SysctlRoot, w.path)
		cur, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", w.path, err)
		}
		if v, err := strconv.Atoi(strings.TrimSpace(string(cur))); err == nil && v == w.val {
			continue
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(w.val)), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%d: %w", w.path, w.val, err)
		}
		res.add("sysctl %s=%d", strings.ReplaceAll(w.path, "/", "."), w.val)
	}
	return nil
}

func (a *Applier) addresses(link netlink.Link, haveBy map[netip.Prefix]netlink.Addr, l LinkSpec, res *Result) error {
	h, name := a.Handle, link.Attrs().Name
	removed := false
	want := map[netip.Prefix]bool{}
	for _, as := range l.Addresses {
		want[as.Prefix] = true
	}
	// Removals first: deleting a primary IPv4 address also deletes the secondaries of its
	// subnet, so an address added before the old one goes would vanish with it.
	for p, ad := range haveBy {
		key := name + "|" + p.String()
		if want[p] || (!l.Exclusive && !a.owned[key]) {
			continue
		}
		if p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue // the kernel's own fe80:: address; IPv6 breaks without it
		}
		if ad.Flags&unix.IFA_F_PERMANENT == 0 && l.SLAAC != nil && *l.SLAAC {
			continue // SLAAC's, while SLAAC is on
		}
		if err := h.AddrDel(link, &ad); err != nil {
			return fmt.Errorf("remove address %s from %s: %w", p, name, err)
		}
		delete(a.owned, key)
		res.add("remove address %s from %s", p, name)
		removed = true
	}
	if removed { // the kernel may have taken secondaries with a primary
		have, err := RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", name, err)
		}
		haveBy = addrMap(have, link.Attrs().Index)
	}
	for _, as := range l.Addresses {
		key := name + "|" + as.Prefix.String()
		cur, exists := haveBy[as.Prefix]
		if exists && lifetimesMatch(cur, as) {
			continue
		}
		nl := &netlink.Addr{IPNet: ipNet(as.Prefix)}
		if as.Valid > 0 {
			nl.ValidLft = int(as.Valid.Seconds())
			nl.PreferedLft = int(as.Preferred.Seconds())
		}
		if err := h.AddrReplace(link, nl); err != nil {
			return fmt.Errorf("add address %s to %s: %w", as.Prefix, name, err)
		}
		a.owned[key] = true
		if exists {
			res.add("update address %s on %s (lifetimes)", as.Prefix, name)
		} else {
			res.add("add address %s to %s", as.Prefix, name)
		}
	}
	return nil
}

func addrMap(addrs []netlink.Addr, linkIndex int) map[netip.Prefix]netlink.Addr {
	m := map[netip.Prefix]netlink.Addr{}
	for _, ad := range addrs {
		if ad.LinkIndex != linkIndex {
			continue
		}
		if p, ok := prefixOf(ad.IPNet); ok {
			m[p] = ad
		}
	}
	return m
}

// lifetimesMatch compares lifetime kinds only: the kernel counts remaining
// lifetimes down, so a finite lifetime is refreshed when it is re-declared
// with another value, not on every apply.
func lifetimesMatch(have netlink.Addr, want AddrSpec) bool {
	forever := have.ValidLft == 0 || uint32(have.ValidLft) == 0xffffffff
	return forever == (want.Valid == 0)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

type routeKey struct {
	table  int
	dst    netip.Prefix
	metric int
}

func (a *Applier) routes(link netlink.Link, have []netlink.Route, l LinkSpec, res *Result) error {
	h, name := a.Handle, link.Attrs().Name
	haveBy := map[routeKey]netlink.Route{}
	for _, r := range have {
		haveBy[keyOf(r)] = r
	}
	want := map[routeKey]bool{}
	for _, rs := range l.Routes {
		nr := toNetlinkRoute(link, rs)
		k := keyOf(nr)
		want[k] = true
		if cur, ok := haveBy[k]; ok && sameRoute(cur, nr) {
			continue
		}
		if err := h.RouteReplace(&nr); err != nil {
			return fmt.Errorf("route %s via %s on %s (table %d): %w", rs.Dst, gwString(rs.Gw), name, k.table, err)
		}
		res.add("route %s via %s dev %s table %d metric %d", rs.Dst, gwString(rs.Gw), name, k.table, rs.Metric)
	}
	for k, r := range haveBy {
		if want[k] || k.table == unix.RT_TABLE_LOCAL {
			continue
		}
		ours := r.Protocol == Protocol
		foreign := r.Protocol == unix.RTPROT_STATIC || r.Protocol == unix.RTPROT_BOOT
		if !ours && !(l.Exclusive && foreign) {
			continue // kernel (connected), RA and other daemons' routes
		}
		if err := h.RouteDel(&r); err != nil {
			return fmt.Errorf("remove route %s on %s: %w", k.dst, name, err)
		}
		res.add("remove route %s dev %s table %d metric %d", k.dst, name, k.table, k.metric)
	}
	return nil
}

func gwString(a netip.Addr) string {
	if !a.IsValid() {
		return "(direct)"
	}
	return a.String()
}

func toNetlinkRoute(link netlink.Link, rs RouteSpec) netlink.Route {
	r := netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       ipNet(rs.Dst),
		Priority:  rs.Metric,
		Table:     rs.Table,
		Protocol:  Protocol,
		Family:    netlink.FAMILY_V4,
	}
	if rs.Dst.Addr().Is6() {
		r.Family = netlink.FAMILY_V6
	}
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	if rs.Gw.IsValid() {
		r.Gw = rs.Gw.AsSlice()
	}
	if rs.Src.IsValid() {
		r.Src = rs.Src.AsSlice()
	}
	switch {
	case rs.Scope == "host":
		r.Scope = netlink.SCOPE_HOST
	case rs.Scope == "link" || (rs.Scope == "" && !rs.Gw.IsValid()):
		r.Scope = netlink.SCOPE_LINK
	default:
		r.Scope = netlink.SCOPE_UNIVERSE
	}
	if rs.OnLink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	if r.Family == netlink.FAMILY_V6 {
		// The kernel reports IPv6 routes with universe scope and metric 1024 by default.
		r.Scope = netlink.SCOPE_UNIVERSE
		if r.Priority == 0 {
			r.Priority = 1024
		}
	}
	return r
}

func keyOf(r netlink.Route) routeKey {
	k := routeKey{table: r.Table, metric: r.Priority}
	if p, ok := prefixOf(r.Dst); ok {
		k.dst = p
	} else if r.Family == netlink.FAMILY_V6 {
		k.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		k.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return k
}

func sameRoute(have, want netlink.Route) bool {
	return have.Protocol == want.Protocol && have.Gw.Equal(want.Gw) && have.Src.Equal(want.Src) &&
		have.Scope == want.Scope && have.Flags&int(netlink.FLAG_ONLINK) == want.Flags&int(netlink.FLAG_ONLINK)
}

func (a *Applier) rules(want []RuleSpec, res *Result) error {
	h := a.Handle
	var have []netlink.Rule
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := RetryDump(func() ([]netlink.Rule, error) { return h.RuleList(fam) })
		if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
			return fmt.Errorf("list rules: %w", err)
		}
		have = append(have, rs...)
	}
	matched := make([]bool, len(have))
	for _, w := range want {
		nr := toNetlinkRule(w)
		found := false
		for i, r := range have {
			if sameRule(r, *nr) {
				matched[i], found = true, true
				break
			}
		}
		if found {
			continue
		}
		if err := h.RuleAdd(nr); err != nil {
			return fmt.Errorf("add rule priority %d lookup %d: %w", w.Priority, w.Table, err)
		}
		res.add("add rule %s", ruleString(w))
	}
	for i, r := range have {
		if matched[i] || r.Protocol != Protocol {
			continue
		}
		desc := ruleString(ruleSpecOf(r))
		if err := h.RuleDel(&r); err != nil {
			return fmt.Errorf("remove rule %s: %w", desc, err)
		}
		res.add("remove rule %s", desc)
	}
	return nil
}

func toNetlinkRule(w RuleSpec) *netlink.Rule {
	r := netlink.NewRule()
	r.Priority, r.Table, r.Protocol = w.Priority, w.Table, Protocol
	r.Family = netlink.FAMILY_V4
	if w.Family == 6 {
		r.Family = netlink.FAMILY_V6
	}
	if w.From.IsValid() {
		r.Src = ipNet(w.From)
	}
	if w.To.IsValid() {
		r.Dst = ipNet(w.To)
	}
	r.IifName, r.OifName = w.IIF, w.OIF
	if w.FWMark != 0 {
		r.Mark = w.FWMark
	}
	return r
}

func ruleSpecOf(r netlink.Rule) RuleSpec {
	w := RuleSpec{Priority: r.Priority, Table: r.Table, IIF: r.IifName, OIF: r.OifName, FWMark: r.Mark, Family: 4}
	if r.Family == netlink.FAMILY_V6 {
		w.Family = 6
	}
	if p, ok := prefixOf(r.Src); ok {
		w.From = p
	}
	if p, ok := prefixOf(r.Dst); ok {
		w.To = p
	}
	return w
}

func sameRule(have, want netlink.Rule) bool {
	netEq := func(a, b *net.IPNet) bool {
		pa, oka := prefixOf(a)
		pb, okb := prefixOf(b)
		return oka == okb && pa == pb
	}
	return have.Family == want.Family && have.Priority == want.Priority && have.Table == want.Table &&
		netEq(have.Src, want.Src) && netEq(have.Dst, want.Dst) && have.IifName == want.IifName &&
		have.OifName == want.OifName && have.Mark == want.Mark && have.Protocol == want.Protocol
}

func ruleString(w RuleSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", w.Priority)
	if w.From.IsValid() {
		fmt.Fprintf(&b, " from %s", w.From)
	}
	if w.To.IsValid() {
		fmt.Fprintf(&b, " to %s", w.To)
	}
	if w.IIF != "" {
		fmt.Fprintf(&b, " iif %s", w.IIF)
	}
	if w.OIF != "" {
		fmt.Fprintf(&b, " oif %s", w.OIF)
	}
	if w.FWMark != 0 {
		fmt.Fprintf(&b, " fwmark %#x", w.FWMark)
	}
	fmt.Fprintf(&b, " lookup %d", w.Table)
	return b.String()
}
