package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// received is one packet read from a VRRP socket.
type received struct {
	payload  []byte
	src, dst netip.Addr
	ttl      int
}

// vrrpConn is a raw IP protocol 112 socket bound to one interface, sending
// with TTL / hop limit 255 and reading the TTL and destination of each
// packet from control messages.
type vrrpConn struct {
	ifi *net.Interface
	v4  *ipv4.PacketConn
	v6  *ipv6.PacketConn
	c   net.PacketConn
}

func listenVRRP(ifi *net.Interface, v6, multicast bool) (*vrrpConn, error) {
	network, laddr := "ip4:112", "0.0.0.0"
	if v6 {
		network, laddr = "ip6:112", "::"
	}
	c, err := net.ListenPacket(network, laddr)
	if err != nil {
		return nil, fmt.Errorf("open raw VRRP socket (needs CAP_NET_RAW): %w", err)
	}
	vc := &vrrpConn{ifi: ifi, c: c}
	if err := bindToDevice(c.(syscall.Conn), ifi.Name); err != nil {
		c.Close()
		return nil, err
	}
	if v6 {
		p := ipv6.NewPacketConn(c)
		vc.v6 = p
		err = errors.Join(
			p.SetHopLimit(requiredTTL),
			p.SetMulticastHopLimit(requiredTTL),
			p.SetMulticastLoopback(false),
			p.SetMulticastInterface(ifi),
			p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst|ipv6.FlagInterface, true),
		)
		if err == nil && multicast {
			err = p.JoinGroup(ifi, &net.IPAddr{IP: groupV6.AsSlice()})
		}
	} else {
		p := ipv4.NewPacketConn(c)
		vc.v4 = p
		err = errors.Join(
			p.SetTTL(requiredTTL),
			p.SetMulticastTTL(requiredTTL),
			p.SetMulticastLoopback(false),
			p.SetMulticastInterface(ifi),
			p.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst|ipv4.FlagInterface, true),
		)
		if err == nil && multicast {
			err = p.JoinGroup(ifi, &net.IPAddr{IP: groupV4.AsSlice()})
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("set up VRRP socket on %s: %w", ifi.Name, err)
	}
	return vc, nil
}

// bindToDevice limits a socket to one interface (SO_BINDTODEVICE).
func bindToDevice(c syscall.Conn, ifname string) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("bind socket to %s: %w", ifname, serr)
	}
	return nil
}

func (c *vrrpConn) Close() error { return c.c.Close() }

// queued reports whether a packet waits on the socket to be read (SIOCINQ
// gives the size of the first one).
func (c *vrrpConn) queued() bool {
	sc, ok := c.c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	if rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }) != nil {
		return false
	}
	return n > 0
}

// send sends b from src to dst on the interface.
func (c *vrrpConn) send(b []byte, src, dst netip.Addr) error {
	to := &net.IPAddr{IP: dst.AsSlice()}
	var err error
	if c.v6 != nil {
		_, err = c.v6.WriteTo(b, &ipv6.ControlMessage{Src: src.AsSlice(), IfIndex: c.ifi.Index, HopLimit: requiredTTL}, to)
	} else {
		_, err = c.v4.WriteTo(b, &ipv4.ControlMessage{Src: src.AsSlice(), IfIndex: c.ifi.Index}, to)
	}
	return err
}

// recv reads the next packet; it fails once the socket is closed.
func (c *vrrpConn) recv(buf []byte) (received, error) {
	var (
		n   int
		src net.Addr
		err error
		r   received
	)
	if c.v6 != nil {
		var cm *ipv6.ControlMessage
		n, cm, src, err = c.v6.ReadFrom(buf)
		if err != nil {
			return r, err
		}
		if cm == nil {
			return r, errors.New("no control message on a VRRP packet")
		}
		r.ttl = cm.HopLimit
		r.dst, _ = netip.AddrFromSlice(cm.Dst)
	} else {
		var cm *ipv4.ControlMessage
		n, cm, src, err = c.v4.ReadFrom(buf)
		if err != nil {
			return r, err
		}
		if cm == nil {
			return r, errors.New("no control message on a VRRP packet")
		}
		r.ttl = cm.TTL
		r.dst, _ = netip.AddrFromSlice(cm.Dst)
	}
	if a, ok := src.(*net.IPAddr); ok {
		r.src, _ = netip.AddrFromSlice(a.IP)
	}
	r.src, r.dst = r.src.Unmap(), r.dst.Unmap()
	r.payload = buf[:n]
	return r, nil
}
