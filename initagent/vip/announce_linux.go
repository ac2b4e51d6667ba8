package vip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/packet"
	"golang.org/x/net/ipv6"
)

const (
	etherTypeARP  = 0x0806
	etherTypeIPv4 = 0x0800
	arpRequest    = 1
	// ICMPv6 Neighbor Advertisement (RFC 4861 §4.4).
	icmpNeighborAdvert = 136
	naFlagOverride     = 0x20
	optTargetLLAddr    = 2
)

var allNodes = netip.MustParseAddr("ff02::1")

// announcer tells the link that this node's MAC now answers for the VIPs:
// gratuitous ARP requests for IPv4 (RFC 5227 §3 "ARP Announcement", which
// Linux neighbours treat as an override) or unsolicited neighbour
// advertisements with the override flag for IPv6 (RFC 4861 §7.2.6).
type announcer struct {
	ifi *net.Interface
	arp *packet.Conn
	nd  *ipv6.PacketConn
	ndc net.PacketConn
}

func newAnnouncer(ifi *net.Interface, v6 bool) (*announcer, error) {
	a := &announcer{ifi: ifi}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("interface %s has no Ethernet MAC address", ifi.Name)
	}
	if !v6 {
		c, err := packet.Listen(ifi, packet.Raw, etherTypeARP, nil)
		if err != nil {
			return nil, fmt.Errorf("open ARP socket on %s: %w", ifi.Name, err)
		}
		a.arp = c
		return a, nil
	}
	c, err := net.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, fmt.Errorf("open ICMPv6 socket: %w", err)
	}
	p := ipv6.NewPacketConn(c)
	// Neighbour discovery messages must carry hop limit 255 (RFC 4861 §7.1.2).
	err = errors.Join(bindToDevice(c.(*net.IPConn), ifi.Name), p.SetMulticastHopLimit(255), p.SetHopLimit(255), p.SetMulticastInterface(ifi))
	if err == nil {
		// Only send: filter out everything the socket would receive.
		var f ipv6.ICMPFilter
		f.SetAll(true)
		err = p.SetICMPFilter(&f)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("set up ICMPv6 socket on %s: %w", ifi.Name, err)
	}
	a.nd, a.ndc = p, c
	return a, nil
}

func (a *announcer) Close() error {
	if a.arp != nil {
		return a.arp.Close()
	}
	return a.ndc.Close()
}

// announce sends one announcement per address; src is the IPv6 source
// (the link-local address).
func (a *announcer) announce(vips []netip.Addr, src netip.Addr) error {
	var errs []error
	for _, ip := range vips {
		var err error
		if a.arp != nil {
			_, err = a.arp.WriteTo(garpFrame(a.ifi.HardwareAddr, ip), &packet.Addr{HardwareAddr: broadcastMAC})
		} else {
			_, err = a.nd.WriteTo(unsolicitedNA(a.ifi.HardwareAddr, ip), &ipv6.ControlMessage{Src: src.AsSlice(), IfIndex: a.ifi.Index, HopLimit: 255},
				&net.IPAddr{IP: allNodes.AsSlice(), Zone: a.ifi.Name})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", ip, err))
		}
	}
	return errors.Join(errs...)
}

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// garpFrame is an Ethernet frame with an ARP request whose sender and
// target protocol address are both ip (RFC 826, RFC 5227 §3).
func garpFrame(mac net.HardwareAddr, ip netip.Addr) []byte {
	b := make([]byte, 14+28)
	copy(b[0:6], broadcastMAC)
	copy(b[6:12], mac)
	binary.BigEndian.PutUint16(b[12:], etherTypeARP)
	arp := b[14:]
	binary.BigEndian.PutUint16(arp[0:], 1) // hardware type Ethernet
	binary.BigEndian.PutUint16(arp[2:], etherTypeIPv4)
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:], arpRequest)
	copy(arp[8:14], mac)
	ip4 := ip.As4()
	copy(arp[14:18], ip4[:])
	// Target hardware address stays zero.
	copy(arp[24:28], ip4[:])
	return b
}

// unsolicitedNA is an ICMPv6 neighbour advertisement for target with the
// override flag and the target link-layer address option; the kernel fills
// in the checksum.
func unsolicitedNA(mac net.HardwareAddr, target netip.Addr) []byte {
	b := make([]byte, 8+16+8)
	b[0] = icmpNeighborAdvert
	b[4] = naFlagOverride
	t := target.As16()
	copy(b[8:24], t[:])
	b[24] = optTargetLLAddr
	b[25] = 1 // length in units of 8 bytes
	copy(b[26:32], mac)
	return b
}
