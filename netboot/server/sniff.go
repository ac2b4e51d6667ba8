package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// sniffer reads the DHCP requests clients send on the interface (to the
// site's server on port 67 and to us on port 4011) from a packet socket,
// where each comes with the Ethernet source address of its frame. A
// sighting is recorded only when that address is the request's chaddr:
// chaddr, option 50 and ciaddr are payload any host can write, the frame's
// source address is what the switch delivered it from.
type sniffer struct {
	d    *dhcpServer
	conn *packet.Conn
}

// dhcpRequestFilter accepts unfragmented IPv4 UDP to port 67 or 4011; a
// datagram packet socket's filter sees the packet from its IP header.
func dhcpRequestFilter() ([]bpf.RawInstruction, error) {
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1}, // protocol
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_UDP, SkipTrue: 7},
		bpf.LoadAbsolute{Off: 6, Size: 2}, // flags and fragment offset
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 5},
		bpf.LoadMemShift{Off: 0},          // X = IP header length
		bpf.LoadIndirect{Off: 2, Size: 2}, // UDP destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: dhcpv4.ServerPort, SkipTrue: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: pxePort, SkipTrue: 1},
		bpf.RetConstant{Val: 4096},
		bpf.RetConstant{Val: 0},
	})
}

func newSniffer(d *dhcpServer, ifname string) (*sniffer, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", ifname, err)
	}
	filter, err := dhcpRequestFilter()
	if err != nil {
		return nil, err
	}
	c, err := packet.Listen(ifc, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: filter})
	if err != nil {
		return nil, fmt.Errorf("packet socket on %s (to see which MAC sent each DHCP request; needs CAP_NET_RAW): %w", ifname, err)
	}
	return &sniffer{d: d, conn: c}, nil
}

func (sn *sniffer) close() { sn.conn.Close() }

func (sn *sniffer) serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, sn.close)
	defer stop()
	buf := make([]byte, 4096)
	for {
		n, from, err := sn.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		src, ok := from.(*packet.Addr)
		if !ok {
			continue
		}
		sn.handle(buf[:n], src.HardwareAddr)
	}
}

// handle parses an IPv4/UDP datagram carrying a DHCP request.
func (sn *sniffer) handle(b []byte, frameSrc net.HardwareAddr) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if ihl < 20 || total > len(b) || total < ihl+8 {
		return
	}
	srcIP, _ := netip.AddrFromSlice(b[12:16])
	udp := b[ihl:total]
	port := int(binary.BigEndian.Uint16(udp[2:]))
	m, err := dhcpv4.FromBytes(udp[8:])
	if err != nil || m.OpCode != dhcpv4.OpcodeBootRequest || len(m.ClientHWAddr) != 6 {
		return
	}
	sn.d.observe(m, port, srcIP, frameSrc)
}
