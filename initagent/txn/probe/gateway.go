package probe

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Gateway returns a probe that asks the on-link gateway addr on iface for
// its link-layer address: an ARP request for IPv4 (RFC 826), a neighbour
// solicitation for IPv6 (RFC 4861 §7.2.2). Either answer proves the gateway
// is up and reachable on that link, without depending on its firewall
// allowing ping. The request is sent from iface's address in the gateway's
// subnet (for a link-local IPv6 gateway: iface's link-local address), or
// from another of iface's addresses if none matches (gateways reached over
// an on-link route), and is resent with backoff until ctx is done.
//
// On a link without Ethernet addresses (ARP and NDP need one), such as
// WireGuard or PPP, the probe sends ICMP echo requests instead.
func Gateway(iface string, addr netip.Addr) Probe {
	return &gateway{iface: iface, addr: addr.WithZone("")}
}

type gateway struct {
	iface string
	addr  netip.Addr
}

func (g *gateway) Name() string { return fmt.Sprintf("gateway %s on %s", g.addr, g.iface) }

func (g *gateway) Run(ctx context.Context) error {
	ifi, err := net.InterfaceByName(g.iface)
	if err != nil {
		return &Error{Probe: g.Name(), Kind: ErrUnreachable, Detail: "no interface " + g.iface, Err: err,
			Hint: "the interface name in the network config"}
	}
	if ifi.Flags&net.FlagUp == 0 {
		return &Error{Probe: g.Name(), Kind: ErrUnreachable, Detail: g.iface + " is down",
			Hint: "that the link is up (ip link show " + g.iface + ")"}
	}
	if len(ifi.HardwareAddr) != 6 {
		target := g.addr
		if target.Is6() && target.IsLinkLocalUnicast() {
			target = target.WithZone(g.iface)
		}
		return echo(ctx, g.Name(), target)
	}
	src, err := sourceAddr(ifi, g.addr)
	if err != nil {
		return &Error{Probe: g.Name(), Kind: ErrUnreachable, Detail: "no source address", Err: err,
			Hint: "the addresses configured on " + g.iface}
	}
	if g.addr.Is4() {
		return arpProbe(ctx, g.Name(), ifi, src, g.addr)
	}
	return ndpProbe(ctx, g.Name(), ifi, src, g.addr)
}

// sourceAddr picks the address on ifi to ask for gw from: the one whose
// prefix contains gw, else (IPv6) the link-local address, else the first
// usable one. Tentative addresses (still in duplicate address detection)
// cannot be bound to and are skipped.
func sourceAddr(ifi *net.Interface, gw netip.Addr) (netip.Addr, error) {
	link, err := netlink.LinkByIndex(ifi.Index)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("look up %s: %w", ifi.Name, err)
	}
	family := netlink.FAMILY_V4
	if gw.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(link, family)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses of %s: %w", ifi.Name, err)
	}
	var usable []netip.Prefix
	for _, a := range addrs {
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		usable = append(usable, netip.PrefixFrom(ip.Unmap(), ones))
	}
	pick := func(match func(netip.Prefix) bool) (netip.Addr, bool) {
		for _, p := range usable {
			if match(p) {
				return p.Addr(), true
			}
		}
		return netip.Addr{}, false
	}
	if gw.IsLinkLocalUnicast() {
		if a, ok := pick(func(p netip.Prefix) bool { return p.Addr().IsLinkLocalUnicast() }); ok {
			return a, nil
		}
	}
	if a, ok := pick(func(p netip.Prefix) bool { return p.Contains(gw) }); ok {
		return a, nil
	}
	if a, ok := pick(func(p netip.Prefix) bool { return p.Addr().IsLinkLocalUnicast() }); ok {
		return a, nil
	}
	if a, ok := pick(func(netip.Prefix) bool { return true }); ok {
		return a, nil
	}
	v := "IPv4"
	if gw.Is6() {
		v = "IPv6"
	}
	return netip.Addr{}, fmt.Errorf("%s has no usable %s address (none, or all still tentative)", ifi.Name, v)
}
