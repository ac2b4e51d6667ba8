package netconf_test

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/podroutes"
)

const exclusiveConfig = `apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - name: eth0
      managed: exclusive
      addresses: [10.0.0.1/24]
      routes:
        - {to: default, via: 10.0.0.254}
`

// TestApplyLeavesPodRoutesAlone: the pod routes (podroutes.Protocol) are
// neither removed nor counted as changes by an apply, even on an exclusive
// interface, where a static route nobody declared is removed.
func TestApplyLeavesPodRoutesAlone(t *testing.T) {
	spec := func(doc string) netconf.Spec {
		cfg, _, err := config.Parse([]byte(doc))
		if err != nil {
			nstest.Fatalf(t, "parse: %v", err)
		}
		s, err := netconf.FromConfig(cfg.Network)
		if err != nil {
			nstest.Fatalf(t, "spec: %v", err)
		}
		return s
	}
	nstest.Do(t, func(h *netlink.Handle) {
		nstest.Veth(t, h, "eth0", "eth0-peer")
		a := &netconf.Applier{Handle: h}
		if _, err := a.Apply(context.Background(), spec(exclusiveConfig)); err != nil {
			nstest.Fatalf(t, "Apply: %v", err)
		}
		eth0, _ := h.LinkByName("eth0")
		add := func(dst, gw string, proto netlink.RouteProtocol) {
			_, n, _ := net.ParseCIDR(dst)
			if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: n, Gw: net.ParseIP(gw), Protocol: proto}); err != nil {
				nstest.Fatalf(t, "add route %s: %v", dst, err)
			}
		}
		add("10.244.1.0/24", "10.0.0.2", podroutes.Protocol)
		add("10.244.9.0/24", "10.0.0.9", unix.RTPROT_STATIC) // undeclared: exclusive removes it
		hasPodRoute := func() bool {
			rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: podroutes.Protocol}, netlink.RT_FILTER_PROTOCOL)
			if err != nil {
				nstest.Fatalf(t, "list routes: %v", err)
			}
			return len(rs) == 1 && rs[0].Dst.String() == "10.244.1.0/24" && rs[0].Gw.Equal(net.ParseIP("10.0.0.2"))
		}

		res, err := a.Apply(context.Background(), spec(exclusiveConfig))
		if err != nil {
			nstest.Fatalf(t, "Apply again: %v", err)
		}
		if want := []string{"remove route 10.244.9.0/24 dev eth0 table 254 metric 0"}; !slices.Equal(res.Changes, want) {
			t.Errorf("changes %q, want only %q", res.Changes, want)
		}
		if !hasPodRoute() {
			t.Error("apply removed the pod route")
		}

		res, err = a.Apply(context.Background(), spec(exclusiveConfig))
		if err != nil {
			nstest.Fatalf(t, "Apply a third time: %v", err)
		}
		if len(res.Changes) != 0 {
			t.Errorf("the pod route counts as drift: changes %q", res.Changes)
		}

		changed := strings.Replace(exclusiveConfig, "[10.0.0.1/24]", "[10.0.0.1/24, 10.1.0.1/24]", 1)
		changed = strings.Replace(changed, "via: 10.0.0.254}", "via: 10.0.0.253}", 1)
		res, err = a.Apply(context.Background(), spec(changed))
		if err != nil {
			nstest.Fatalf(t, "Apply changed: %v", err)
		}
		for _, c := range res.Changes {
			if strings.Contains(c, "10.244.1.0") {
				t.Errorf("apply changed the pod route: %q", c)
			}
		}
		if !hasPodRoute() {
			t.Error("a changed config removed the pod route")
		}
	})
}
