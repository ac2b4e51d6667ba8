package dhcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenUDP4 opens the kernel UDP socket used once the leased address is on
// the interface: bound to 0.0.0.0:68 and to the interface (SO_BINDTODEVICE,
// so that one client per interface can listen on port 68 at once and a
// broadcast leaves through the right interface), allowed to broadcast.
func listenUDP4(ctx context.Context, iface string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			for _, opt := range []int{unix.SO_REUSEADDR, unix.SO_BROADCAST} {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 1); serr != nil {
					return
				}
			}
			serr = unix.BindToDevice(int(fd), iface)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", clientPort4))
	if err != nil {
		return nil, fmt.Errorf("open UDP socket on port %d: %w", clientPort4, err)
	}
	return conn, nil
}

// hasAddr reports whether a is configured on ifc (in the calling thread's
// network namespace).
func hasAddr(ifc *net.Interface, a netip.Addr) (bool, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, x := range addrs {
		ipn, ok := x.(*net.IPNet)
		if !ok {
			continue
		}
		if got, ok := netip.AddrFromSlice(ipn.IP); ok && got.Unmap() == a {
			return true, nil
		}
	}
	return false, nil
}
