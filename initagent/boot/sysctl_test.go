package boot

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// TestPromoteSecondariesKeepsStaticAddress: a DHCP address and a static one
// in one subnet; dropping the DHCP address must not take the static one.
func TestPromoteSecondariesKeepsStaticAddress(t *testing.T) {
	nstest.Do(t, func(h *netlink.Handle) {
		l := nstest.Veth(t, h, "eth0", "peer0")
		has := func(a string) bool {
			as, _ := h.AddrList(l, netlink.FAMILY_V4)
			for _, x := range as {
				if x.IPNet.String() == a {
					return true
				}
			}
			return false
		}
		add := func(a string) {
			ip, n, _ := net.ParseCIDR(a)
			n.IP = ip
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: n}); err != nil {
				nstest.Fatalf(t, "add %s: %v", a, err)
			}
		}
		del := func(a string) {
			ip, n, _ := net.ParseCIDR(a)
			n.IP = ip
			if err := h.AddrDel(l, &netlink.Addr{IPNet: n}); err != nil {
				nstest.Fatalf(t, "del %s: %v", a, err)
			}
		}
		// The kernel's default: the secondary goes with the primary.
		add("192.0.2.150/24")
		add("192.0.2.33/24")
		del("192.0.2.150/24")
		if has("192.0.2.33/24") {
			nstest.Skipf("this kernel keeps secondaries already; nothing to prove")
		}
		if err := PromoteSecondaries("/"); err != nil {
			nstest.Fatalf(t, "%v", err)
		}
		add("192.0.2.150/24")
		add("192.0.2.33/24")
		del("192.0.2.150/24")
		if !has("192.0.2.33/24") {
			nstest.Fatalf(t, "static address gone with the DHCP one despite promote_secondaries")
		}
	})
}
