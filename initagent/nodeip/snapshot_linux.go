package nodeip

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/netconf"
)

// Snapshot reads links, addresses and routes (of every table) from the
// kernel. A nil h means a NETLINK_ROUTE handle in the caller's network
// namespace.
func Snapshot(h *netlink.Handle) (Kernel, error) {
	var s Kernel
	if h == nil {
		nh, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return s, fmt.Errorf("netlink: %w", err)
		}
		defer nh.Close()
		h = nh
	}
	links, err := netconf.RetryDump(h.LinkList)
	if err != nil {
		return s, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		s.Links = append(s.Links, Link{Index: a.Index, Name: a.Name, Flags: a.Flags})
	}
	addrs, err := netconf.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return s, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok {
			continue
		}
		s.Addresses = append(s.Addresses, Address{
			LinkIndex:         a.LinkIndex,
			Prefix:            p,
			Flags:             AddrFlags(a.Flags),
			PreferredLifetime: uint32(a.PreferedLft),
		})
	}
	routes, err := netconf.RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return s, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		s.Routes = append(s.Routes, convertRoute(r)...)
	}
	return s, nil
}

// convertRoute turns a unicast netlink route into one Route per next hop.
func convertRoute(r netlink.Route) []Route {
	if r.Type != unix.RTN_UNICAST {
		return nil
	}
	var dst netip.Prefix
	if r.Dst != nil {
		p, ok := prefixOf(r.Dst)
		if !ok {
			return nil
		}
		dst = p
	} else {
		switch r.Family {
		case unix.AF_INET:
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		case unix.AF_INET6:
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		default:
			return nil
		}
	}
	base := Route{
		Dst:      dst,
		Metric:   r.Priority,
		Table:    r.Table,
		Protocol: int(r.Protocol),
	}
	base.Src, _ = addrOf(r.Src)
	if len(r.MultiPath) == 0 {
		base.LinkIndex = r.LinkIndex
		base.Gateway, _ = addrOf(r.Gw)
		return []Route{base}
	}
	var out []Route
	for _, nh := range r.MultiPath {
		x := base
		x.LinkIndex = nh.LinkIndex
		x.Gateway, _ = addrOf(nh.Gw)
		out = append(out, x)
	}
	return out
}

func addrOf(ip net.IP) (netip.Addr, bool) {
	if ip == nil {
		return netip.Addr{}, false
	}
	if v4 := ip.To4(); v4 != nil && len(ip) == net.IPv4len {
		return netip.AddrFrom4([4]byte(v4)), true
	}
	a, ok := netip.AddrFromSlice(ip)
	return a, ok
}

// prefixOf converts n, keeping the family the kernel reported: net.IPNet
// stores IPv4 in 16 bytes with a 4-byte mask, so the mask length decides.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	ip := n.IP
	if bits == 8*net.IPv4len {
		ip = ip.To4()
	} else if bits == 8*net.IPv6len {
		ip = ip.To16()
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok || bits == 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
