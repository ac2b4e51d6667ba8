package probe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// ICMP returns a probe that sends ICMP (or ICMPv6) echo requests to addr
// until an echo reply arrives or ctx is done. A link-local IPv6 addr needs a
// zone (fe80::1%eth0).
//
// It uses a raw socket (needs CAP_NET_RAW, which the agent has as PID 1) and
// falls back to an unprivileged ping socket (net.ipv4.ping_group_range) when
// raw sockets are not permitted.
func ICMP(addr netip.Addr) Probe { return &icmpProbe{addr: addr} }

type icmpProbe struct{ addr netip.Addr }

func (p *icmpProbe) Name() string { return "icmp " + p.addr.String() }

func (p *icmpProbe) Run(ctx context.Context) error { return echo(ctx, p.Name(), p.addr) }

// IANA protocol numbers for icmp.ParseMessage.
const (
	protoICMP   = 1
	protoICMPv6 = 58
)

// echo pings target. Every raw ICMP socket of the host sees every echo
// reply, so replies are matched on a random identifier and payload; ping
// sockets rewrite the identifier, so there only the payload counts.
func echo(ctx context.Context, name string, target netip.Addr) error {
	hint := fmt.Sprintf("that %s is up, that routes lead to it and that no firewall drops ICMP echo", target)
	c, dgram, err := listenICMP(target.Is4())
	if err != nil {
		return fail(ctx, name, "open ICMP socket", err, "that the agent runs with CAP_NET_RAW")
	}
	defer c.Close()
	defer interruptOnDone(ctx, c)()

	proto, request, reply := protoICMP, icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply)
	if target.Is6() {
		proto, request, reply = protoICMPv6, ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
		var filter ipv6.ICMPFilter
		filter.SetAll(true)
		filter.Accept(ipv6.ICMPTypeEchoReply)
		if err := c.IPv6PacketConn().SetICMPFilter(&filter); err != nil {
			return fail(ctx, name, "set ICMPv6 filter", err, "")
		}
	}
	zone, err := zoneIndex(target.Zone())
	if err != nil {
		return &Error{Probe: name, Kind: ErrUnreachable, Detail: "no interface " + target.Zone(), Err: err,
			Hint: "the zone (interface) of the link-local address"}
	}
	var dst net.Addr = &net.IPAddr{IP: target.AsSlice(), Zone: zone}
	if dgram {
		dst = &net.UDPAddr{IP: target.AsSlice(), Zone: zone}
	}
	id := int(rand.Uint32() & 0xffff)
	token := binary.BigEndian.AppendUint64([]byte("ballast"), rand.Uint64())

	buf := make([]byte, 1500)
	start := time.Now()
	sent := 0
	var lastErr error
	for attempt := 0; ; attempt++ {
		if expired(ctx) {
			return ctxErr(ctx, name, fmt.Sprintf("no echo reply to %d requests within %s", sent, waited(start)), lastErr, hint)
		}
		// For ICMPv6 Marshal leaves the checksum zero and the kernel fills it.
		msg, err := (&icmp.Message{Type: request, Body: &icmp.Echo{ID: id, Seq: attempt, Data: token}}).Marshal(nil)
		if err != nil {
			return fail(ctx, name, "BUG: marshal echo request", err, "")
		}
		if _, err := c.WriteTo(msg, dst); err != nil {
			lastErr = err // no route or neighbour (yet); keep trying
		} else {
			sent++
		}
		next := until(ctx, time.Now().Add(backoff(attempt)))
		if err := c.SetReadDeadline(next); err != nil {
			return fail(ctx, name, "set deadline", err, "")
		}
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return fail(ctx, name, "read echo reply", err, hint)
				}
				if !isTimeout(err) {
					// An error queued on the socket, e.g. host unreachable.
					lastErr = err
					sleepUntil(ctx, next)
				}
				break // resend
			}
			if !sameAddr(peer, target) {
				continue
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != reply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && (dgram || e.ID == id) && bytes.Equal(e.Data, token) {
				return nil
			}
		}
	}
}

// listenICMP opens a raw ICMP socket, or a ping socket if raw ones are not
// permitted; dgram reports which.
func listenICMP(v4 bool) (c *icmp.PacketConn, dgram bool, err error) {
	raw, ping, wildcard := "ip6:ipv6-icmp", "udp6", "::"
	if v4 {
		raw, ping, wildcard = "ip4:icmp", "udp4", "0.0.0.0"
	}
	c, err = icmp.ListenPacket(raw, wildcard)
	if err == nil {
		return c, false, nil
	}
	if !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EACCES) {
		return nil, false, err
	}
	c, perr := icmp.ListenPacket(ping, wildcard)
	if perr != nil {
		return nil, false, fmt.Errorf("raw socket: %w; ping socket: %w", err, perr)
	}
	return c, true, nil
}

func sameAddr(a net.Addr, want netip.Addr) bool {
	var ip net.IP
	switch a := a.(type) {
	case *net.IPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	got, ok := netip.AddrFromSlice(ip)
	return ok && got.Unmap() == want.WithZone("").Unmap()
}

// sleepUntil waits until t or until ctx is done.
func sleepUntil(ctx context.Context, t time.Time) {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}

// zoneIndex turns an IPv6 zone into the interface index as a string. The
// net package resolves zone names through a cache that is refreshed at most
// once a minute, and so can name the wrong (or a deleted) interface after a
// link was recreated by a network change; net.InterfaceByName asks the
// kernel.
func zoneIndex(zone string) (string, error) {
	if zone == "" {
		return "", nil
	}
	if _, err := strconv.Atoi(zone); err == nil {
		return zone, nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return "", err
	}
	return strconv.Itoa(ifi.Index), nil
}
