package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// Neighbour discovery, RFC 4861 §4.3/§4.4: solicitation and advertisement
// share the layout type, code, checksum, 4 bytes (reserved / flags), target
// address, options. Both are only valid with hop limit 255 (§7.1), which
// proves they did not cross a router.
const (
	ndpHopLimit   = 255
	ndpTargetOff  = 8  // offset of the target address in the ICMPv6 message
	ndpMinLen     = 24 // header + reserved + target
	ndpOptSrcLL   = 1  // source link-layer address option (§4.6.1)
	ndpTypeNA     = 136
	ndpSolicitLen = ndpMinLen + 8 // + source link-layer address option for Ethernet
)

// solicitedNode is target's solicited-node multicast group ff02::1:ffXX:XXXX
// (RFC 4291 §2.7.1), which the neighbour owning target listens on.
func solicitedNode(target netip.Addr) netip.Addr {
	t := target.As16()
	return netip.AddrFrom16([16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: t[13], 14: t[14], 15: t[15]})
}

// neighborSolicitation builds the ICMPv6 message asking for target's
// link-layer address. The checksum stays zero: the kernel fills it in on
// ICMPv6 raw sockets (RFC 3542 §3.1).
func neighborSolicitation(srcMAC net.HardwareAddr, target netip.Addr) []byte {
	b := make([]byte, ndpSolicitLen)
	b[0] = byte(ipv6.ICMPTypeNeighborSolicitation)
	t := target.As16()
	copy(b[ndpTargetOff:], t[:])
	b[ndpMinLen] = ndpOptSrcLL
	b[ndpMinLen+1] = 1 // option length in units of 8 bytes
	copy(b[ndpMinLen+2:], srcMAC)
	return b
}

// parseNeighborAdvertisement returns the target address of a neighbour
// advertisement, and ok=false for anything else.
func parseNeighborAdvertisement(b []byte) (target netip.Addr, ok bool) {
	if len(b) < ndpMinLen || b[0] != ndpTypeNA || b[1] != 0 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom16([16]byte(b[ndpTargetOff : ndpTargetOff+16])), true
}

// ndpProbe sends neighbour solicitations for target to its solicited-node
// group on ifi until a neighbour advertisement for target arrives or ctx is
// done. The ICMPv6 raw socket sees advertisements before the kernel's own
// neighbour code consumes them, so answers to the kernel's solicitations
// count too.
func ndpProbe(ctx context.Context, name string, ifi *net.Interface, src, target netip.Addr) error {
	hint := fmt.Sprintf("the gateway address, that the gateway is up and sends router/neighbour advertisements, and the cabling/VLAN/switch port of %s", ifi.Name)
	// Zones by index, not name: the net package caches name→index for up
	// to a minute, which goes stale when a link is recreated.
	zone := strconv.Itoa(ifi.Index)
	bind := src
	if bind.IsLinkLocalUnicast() {
		bind = bind.WithZone(zone)
	}
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", bind.String())
	if err != nil {
		return fail(ctx, name, fmt.Sprintf("open ICMPv6 socket on %s", bind), err,
			"that the agent runs with CAP_NET_RAW and that "+src.String()+" is configured on "+ifi.Name)
	}
	defer c.Close()
	defer interruptOnDone(ctx, c)()

	p := c.IPv6PacketConn()
	var filter ipv6.ICMPFilter
	filter.SetAll(true)
	filter.Accept(ipv6.ICMPTypeNeighborAdvertisement)
	if err := p.SetICMPFilter(&filter); err != nil {
		return fail(ctx, name, "set ICMPv6 filter", err, "")
	}
	if err := p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagInterface, true); err != nil {
		return fail(ctx, name, "request ICMPv6 control messages", err, "")
	}
	if err := p.SetMulticastHopLimit(ndpHopLimit); err != nil {
		return fail(ctx, name, "set multicast hop limit", err, "")
	}
	if err := p.SetMulticastInterface(ifi); err != nil {
		return fail(ctx, name, "set multicast interface "+ifi.Name, err, "")
	}

	ns := neighborSolicitation(ifi.HardwareAddr, target)
	dst := &net.IPAddr{IP: solicitedNode(target).AsSlice(), Zone: zone}
	cm := &ipv6.ControlMessage{HopLimit: ndpHopLimit, IfIndex: ifi.Index}
	buf := make([]byte, 1500)
	start := time.Now()
	sent := 0
	var lastErr error
	for attempt := 0; ; attempt++ {
		if expired(ctx) {
			return ctxErr(ctx, name, fmt.Sprintf("no neighbour advertisement in reply to %d solicitations from %s within %s", sent, src, waited(start)), lastErr, hint)
		}
		if _, err := p.WriteTo(ns, cm, dst); err != nil {
			lastErr = err
		} else {
			sent++
		}
		next := until(ctx, time.Now().Add(backoff(attempt)))
		if err := p.SetReadDeadline(next); err != nil {
			return fail(ctx, name, "set deadline", err, "")
		}
		for {
			n, rcm, _, err := p.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return fail(ctx, name, "read neighbour advertisement on "+ifi.Name, err, hint)
				}
				if !isTimeout(err) {
					lastErr = err
					sleepUntil(ctx, next)
				}
				break // resend
			}
			if rcm != nil && (rcm.HopLimit != ndpHopLimit || rcm.IfIndex != ifi.Index) {
				continue
			}
			if t, ok := parseNeighborAdvertisement(buf[:n]); ok && t == target {
				return nil
			}
		}
	}
}
