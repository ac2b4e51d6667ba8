package server

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// kernelNeighbours returns the link-layer addresses the kernel's neighbour
// (ARP) table holds for ip, on any interface, skipping entries still being
// resolved or failed.
func kernelNeighbours(ip netip.Addr) ([]net.HardwareAddr, error) {
	neighs, err := netlink.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("reading the neighbour table: %w", err)
	}
	var out []net.HardwareAddr
	for _, n := range neighs {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok || a.Unmap() != ip || len(n.HardwareAddr) != 6 || n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) != 0 {
			continue
		}
		out = append(out, n.HardwareAddr)
	}
	return out, nil
}
