package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// ARP over Ethernet, RFC 826: hardware type 1 (Ethernet), protocol type
// 0x0800 (IPv4), 6-byte hardware and 4-byte protocol addresses, so the
// payload is 8 + 2*(6+4) = 28 bytes.
const (
	arpLen       = 28
	arpHTEther   = 1
	arpOpRequest = 1
	arpOpReply   = 2
)

var ethBroadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// arpRequest builds the ARP payload asking "who has target, tell src".
func arpRequest(srcMAC net.HardwareAddr, src, target netip.Addr) []byte {
	b := make([]byte, arpLen)
	binary.BigEndian.PutUint16(b[0:], arpHTEther)
	binary.BigEndian.PutUint16(b[2:], unix.ETH_P_IP)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], arpOpRequest)
	copy(b[8:14], srcMAC)
	s4, t4 := src.As4(), target.As4()
	copy(b[14:18], s4[:])
	// Target hardware address b[18:24] stays zero: that is what we ask for.
	copy(b[24:28], t4[:])
	return b
}

// parseARPReply returns the sender of an Ethernet/IPv4 ARP reply, and
// ok=false for anything else (requests, other hardware or protocol types,
// short packets).
func parseARPReply(b []byte) (mac net.HardwareAddr, ip netip.Addr, ok bool) {
	if len(b) < arpLen ||
		binary.BigEndian.Uint16(b[0:]) != arpHTEther ||
		binary.BigEndian.Uint16(b[2:]) != unix.ETH_P_IP ||
		b[4] != 6 || b[5] != 4 ||
		binary.BigEndian.Uint16(b[6:]) != arpOpReply {
		return nil, netip.Addr{}, false
	}
	return net.HardwareAddr(b[8:14]), netip.AddrFrom4([4]byte(b[14:18])), true
}

// arpProbe broadcasts ARP requests for target on ifi until a reply from
// target arrives or ctx is done. It uses a SOCK_DGRAM packet socket, so the
// kernel builds the Ethernet header, and the reply is read from the same
// socket: any reply whose sender is target counts, including one to a
// request the kernel sent itself.
func arpProbe(ctx context.Context, name string, ifi *net.Interface, src, target netip.Addr) error {
	hint := fmt.Sprintf("the gateway address, that the gateway is up, and the cabling/VLAN/switch port of %s", ifi.Name)
	c, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil)
	if err != nil {
		return fail(ctx, name, "open ARP socket on "+ifi.Name, err, "that the agent runs with CAP_NET_RAW")
	}
	defer c.Close()
	defer interruptOnDone(ctx, c)()

	req := arpRequest(ifi.HardwareAddr, src, target)
	buf := make([]byte, 1500)
	start := time.Now()
	sent := 0
	var lastErr error
	for attempt := 0; ; attempt++ {
		if expired(ctx) {
			return ctxErr(ctx, name, fmt.Sprintf("no ARP reply to %d requests from %s within %s", sent, src, waited(start)), lastErr, hint)
		}
		if _, err := c.WriteTo(req, &packet.Addr{HardwareAddr: ethBroadcast}); err != nil {
			lastErr = err // e.g. ENETDOWN while the link comes up; keep trying
		} else {
			sent++
		}
		next := until(ctx, time.Now().Add(backoff(attempt)))
		if err := c.SetReadDeadline(next); err != nil {
			return fail(ctx, name, "set deadline", err, "")
		}
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return fail(ctx, name, "read ARP reply on "+ifi.Name, err, hint)
				}
				if !isTimeout(err) {
					lastErr = err
					sleepUntil(ctx, next)
				}
				break // resend
			}
			if _, ip, ok := parseARPReply(buf[:n]); ok && ip == target {
				return nil
			}
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
