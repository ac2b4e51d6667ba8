package agent

import (
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/vishvananda/netlink"
)

// The config fetch's retry wakes when DHCP adds an address and a route:
// the watch must fire on both and stop cleanly.
func TestWatchAddrsAndRoutes(t *testing.T) {
	nstest.Do(t, func(h *netlink.Handle) {
		changed, stop := watchAddrsAndRoutes(slog.New(slog.DiscardHandler))
		defer stop()
		expectPoke := func(what string) {
			select {
			case <-changed:
			case <-time.After(10 * time.Second):
				nstest.Fatalf(t, "no notice after %s", what)
			}
		}
		select {
		case <-changed:
			nstest.Fatalf(t, "notice before any change")
		default:
		}

		// No IPv6 link-local address and routes to stand in for the ones
		// this test adds.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0o644); err != nil {
			nstest.Fatalf(t, "disable IPv6: %v", err)
		}
		link := nstest.Veth(t, h, "dhcp0", "peer0")
		if err := h.LinkSetUp(link); err != nil {
			nstest.Fatalf(t, "link up: %v", err)
		}
		addr, _ := netlink.ParseAddr("192.0.2.10/24")
		addr.Flags = 0x100 // IFA_F_NOPREFIXROUTE: the route below is the only one
		if err := h.AddrAdd(link, addr); err != nil {
			nstest.Fatalf(t, "add address: %v", err)
		}
		expectPoke("an address was added")

		_, dst, _ := net.ParseCIDR("198.51.100.0/24")
		if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Gw: net.ParseIP("192.0.2.1")}); err != nil {
			nstest.Fatalf(t, "add route: %v", err)
		}
		expectPoke("a route was added")
	})
}
