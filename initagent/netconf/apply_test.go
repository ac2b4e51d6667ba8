package netconf

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// hostConfig is the shape bare-metal hosts use: an uplink with a default
// route, a LACP bond of two NICs with a VLAN on top, a per-interface routing
// table selected by a source rule, and a bridge.
const hostConfig = `apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - name: eth0
      mtu: 1500
      addresses: [10.0.0.5/24, "2001:db8::5/64"]
      routes:
        - {to: default, via: 10.0.0.1, metric: 100}
        - {to: "::/0", via: "2001:db8::1", metric: 100}
    - name: uplink1
      mac: "02:00:00:00:01:01"
    - name: eth2
    - name: bond0
      type: bond
      mtu: 9000
      bond: {mode: 802.3ad, lacpRate: fast, miimon: 50, members: [uplink1, eth2]}
    - name: bond0.100
      type: vlan
      vlan: {id: 100, link: bond0}
      addresses: [192.168.100.5/24]
      routes:
        - {to: default, via: 192.168.100.1, table: 100}
        - {to: 172.16.0.0/12, via: 192.168.100.254, metric: 50, src: 192.168.100.5}
      sysctls: {rpFilter: 2, forwarding: true}
    - name: br0
      type: bridge
      addresses: [10.99.0.1/24]
    - name: dummy0
      type: dummy
      addresses: [10.255.0.1/32]
  rules:
    - {priority: 100, from: 192.168.100.5, table: 100}
    - {priority: 110, fwmark: 7, table: 100}
`

func mustSpec(t testing.TB, doc string) Spec {
	t.Helper()
	cfg, _, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	s, err := FromConfig(cfg.Network)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func setupNICs(t testing.TB, h *netlink.Handle) {
	nstest.RequireLinkKinds(t, h, "bond", "vlan", "dummy", "bridge")
	nstest.Veth(t, h, "eth0", "eth0-peer")
	nstest.Veth(t, h, "eth1", "eth1-peer")
	nstest.Veth(t, h, "eth2", "eth2-peer")
	eth1, _ := h.LinkByName("eth1")
	mac, _ := net.ParseMAC("02:00:00:00:01:01")
	if err := h.LinkSetHardwareAddr(eth1, mac); err != nil {
		nstest.Fatalf(t, "set mac: %v", err)
	}
}

func TestApplyHostConfigThenNoOp(t *testing.T) {
	spec := mustSpec(t, hostConfig)
	nstest.Do(t, func(h *netlink.Handle) {
		setupNICs(t, h)
		a := &Applier{Handle: h}
		res, err := a.Apply(context.Background(), spec)
		if err != nil {
			nstest.Fatalf(t, "Apply: %v\nchanges: %q", err, res.Changes)
		}
		t.Logf("first apply: %d changes", len(res.Changes))

		// Read everything back from the kernel.
		if _, err := h.LinkByName("eth1"); err == nil {
			t.Errorf("eth1 (selected by MAC) was not renamed")
		}
		uplink, err := h.LinkByName("uplink1")
		if err != nil {
			nstest.Fatalf(t, "uplink1: %v", err)
		}
		bond, err := h.LinkByName("bond0")
		if err != nil {
			nstest.Fatalf(t, "bond0: %v", err)
		}
		b := bond.(*netlink.Bond)
		if b.Mode != netlink.BOND_MODE_802_3AD || b.Miimon != 50 || b.LacpRate != netlink.BOND_LACP_RATE_FAST {
			t.Errorf("bond0 mode=%v miimon=%d lacp=%v, want 802.3ad 50 fast", b.Mode, b.Miimon, b.LacpRate)
		}
		if b.MTU != 9000 {
			t.Errorf("bond0 mtu %d, want 9000", b.MTU)
		}
		eth2, _ := h.LinkByName("eth2")
		for _, m := range []netlink.Link{uplink, eth2} {
			if m.Attrs().MasterIndex != bond.Attrs().Index {
				t.Errorf("%s is not enslaved to bond0", m.Attrs().Name)
			}
		}
		vl, err := h.LinkByName("bond0.100")
		if err != nil {
			nstest.Fatalf(t, "vlan: %v", err)
		}
		if v := vl.(*netlink.Vlan); v.VlanId != 100 || v.ParentIndex != bond.Attrs().Index {
			t.Errorf("vlan id=%d parent=%d, want 100 on bond0", v.VlanId, v.ParentIndex)
		}
		if vl.Attrs().Flags&net.FlagUp == 0 {
			t.Error("bond0.100 is not up")
		}
		eth0, _ := h.LinkByName("eth0")
		addrs := addrSet(t, h, eth0)
		for _, want := range []string{"10.0.0.5/24", "2001:db8::5/64"} {
			if !addrs[want] {
				t.Errorf("eth0 lacks %s; has %v", want, addrs)
			}
		}
		if !addrSet(t, h, vl)["192.168.100.5/24"] {
			t.Error("bond0.100 lacks 192.168.100.5/24")
		}
		// Policy routing: traffic from the VLAN address uses table 100's gateway.
		routes, err := h.RouteGetWithOptions(net.ParseIP("8.8.8.8"), &netlink.RouteGetOptions{SrcAddr: net.ParseIP("192.168.100.5")})
		if err != nil || len(routes) == 0 {
			nstest.Fatalf(t, "route get from 192.168.100.5: %v", err)
		}
		if !routes[0].Gw.Equal(net.ParseIP("192.168.100.1")) {
			t.Errorf("route from 192.168.100.5 goes via %v, want 192.168.100.1 (table 100)", routes[0].Gw)
		}
		routes, err = h.RouteGet(net.ParseIP("8.8.8.8"))
		if err != nil || len(routes) == 0 || !routes[0].Gw.Equal(net.ParseIP("10.0.0.1")) {
			t.Errorf("main default route: %v %v, want via 10.0.0.1", routes, err)
		}
		routes, err = h.RouteGet(net.ParseIP("172.20.0.1"))
		if err != nil || len(routes) == 0 || !routes[0].Src.Equal(net.ParseIP("192.168.100.5")) {
			t.Errorf("route to 172.20.0.1: %v %v, want src 192.168.100.5", routes, err)
		}
		rules, _ := RetryDump(func() ([]netlink.Rule, error) { return h.RuleList(netlink.FAMILY_V4) })
		var ours []string
		for _, r := range rules {
			if r.Protocol == Protocol {
				ours = append(ours, r.String())
			}
		}
		if len(ours) != 2 {
			t.Errorf("ballast rules %v, want 2", ours)
		}
		if v := readSysctl(t, "net/ipv4/conf/bond0.100/rp_filter"); v != "2" {
			t.Errorf("rp_filter = %s, want 2", v)
		}

		// The same spec again: nothing to do.
		res, err = a.Apply(context.Background(), spec)
		if err != nil {
			nstest.Fatalf(t, "second Apply: %v", err)
		}
		if len(res.Changes) != 0 {
			t.Errorf("second apply made changes: %q", res.Changes)
		}
		// A fresh applier (an agent restart) sees no difference either.
		res, err = (&Applier{Handle: h}).Apply(context.Background(), spec)
		if err != nil || len(res.Changes) != 0 {
			t.Errorf("apply after restart: %v, changes %q", err, res.Changes)
		}
	})
}

func TestApplyDiffTouchesOnlyWhatChanged(t *testing.T) {
	nstest.Do(t, func(h *netlink.Handle) {
		setupNICs(t, h)
		a := &Applier{Handle: h}
		if _, err := a.Apply(context.Background(), mustSpec(t, hostConfig)); err != nil {
			nstest.Fatalf(t, "Apply: %v", err)
		}
		// Someone else's address and route on eth0 (additive): must survive.
		eth0, _ := h.LinkByName("eth0")
		foreign := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.0.0.77"), Mask: net.CIDRMask(32, 32)}}
		if err := h.AddrAdd(eth0, foreign); err != nil {
			nstest.Fatalf(t, "add foreign address: %v", err)
		}
		changed := strings.Replace(hostConfig, "metric: 50, src: 192.168.100.5}", "metric: 60, src: 192.168.100.5}", 1)
		changed = strings.Replace(changed, "    - {priority: 110, fwmark: 7, table: 100}\n", "", 1)
		changed = strings.Replace(changed, `[10.0.0.5/24, "2001:db8::5/64"]`, `[10.0.0.6/24, "2001:db8::5/64"]`, 1)
		changed = strings.Replace(changed, "{to: default, via: 10.0.0.1, metric: 100}", "{to: default, via: 10.0.0.2, metric: 100}", 1)
		res, err := a.Apply(context.Background(), mustSpec(t, changed))
		if err != nil {
			nstest.Fatalf(t, "Apply changed: %v", err)
		}
		want := []string{
			"remove address 10.0.0.5/24 from eth0",
			"add address 10.0.0.6/24 to eth0",
			"route 0.0.0.0/0 via 10.0.0.2 dev eth0 table 254 metric 100",
			"route 172.16.0.0/12 via 192.168.100.254 dev bond0.100 table 254 metric 60",
			"remove route 172.16.0.0/12 dev bond0.100 table 254 metric 50",
		}
		got := slices.Clone(res.Changes)
		var rulesRemoved int
		got = slices.DeleteFunc(got, func(c string) bool {
			if strings.HasPrefix(c, "remove rule") && strings.Contains(c, "fwmark 0x7") {
				rulesRemoved++
				return true
			}
			return false
		})
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) || rulesRemoved != 1 {
			t.Errorf("changes:\n %q\nwant\n %q\nplus one fwmark rule removal (got %d)", res.Changes, want, rulesRemoved)
		}
		if !addrSet(t, h, eth0)["10.0.0.77/32"] {
			t.Error("additive interface lost an address the agent did not create")
		}

		// Exclusive: the foreign address goes.
		excl := strings.Replace(changed, "    - name: eth0\n", "    - name: eth0\n      managed: exclusive\n", 1)
		res, err = a.Apply(context.Background(), mustSpec(t, excl))
		if err != nil {
			nstest.Fatalf(t, "Apply exclusive: %v", err)
		}
		if !slices.Equal(res.Changes, []string{"remove address 10.0.0.77/32 from eth0"}) {
			t.Errorf("exclusive changes %q, want only the foreign address removed", res.Changes)
		}
		if addrSet(t, h, eth0)["10.0.0.77/32"] {
			t.Error("exclusive interface kept a foreign address")
		}
	})
}

func TestApplyMissingNICFails(t *testing.T) {
	nstest.Do(t, func(h *netlink.Handle) {
		spec := Spec{Links: []LinkSpec{{Name: "nope0", Kind: config.TypeEthernet}}}
		_, err := (&Applier{Handle: h}).Apply(context.Background(), spec)
		if err == nil || !strings.Contains(err.Error(), "interface nope0 not found") {
			t.Errorf("Apply = %v, want interface nope0 not found", err)
		}
		spec = Spec{Links: []LinkSpec{{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, Kind: config.TypeEthernet}}}
		_, err = (&Applier{Handle: h}).Apply(context.Background(), spec)
		if err == nil || !strings.Contains(err.Error(), "02:00:00:00:00:09") {
			t.Errorf("Apply = %v, want an error naming the MAC", err)
		}
	})
}

func addrSet(t *testing.T, h *netlink.Handle, l netlink.Link) map[string]bool {
	as, err := RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		nstest.Fatalf(t, "addr list: %v", err)
	}
	m := map[string]bool{}
	for _, a := range as {
		if p, ok := prefixOf(a.IPNet); ok {
			m[p.String()] = true
		}
	}
	return m
}

func readSysctl(t *testing.T, path string) string {
	b, err := os.ReadFile("/proc/sys/" + path)
	if err != nil {
		nstest.Fatalf(t, "sysctl %s: %v", path, err)
	}
	return strings.TrimSpace(string(b))
}

// Apply asks for the kernel support behind its virtual links before it
// touches anything, and stops there when the support is missing.
func TestApplyNeedsKindsFirst(t *testing.T) {
	nstest.Do(t, func(h *netlink.Handle) {
		nstest.Veth(t, h, "eth0", "eth0-peer")
		var asked []string
		a := &Applier{Handle: h, NeedKinds: func(ctx context.Context, kinds []string) error {
			asked = append(asked, kinds...)
			return errors.New("module bonding failed")
		}}
		ethernetOnly := Spec{Links: []LinkSpec{{Name: "eth0", Kind: config.TypeEthernet, MTU: 1400}}}
		if _, err := a.Apply(context.Background(), ethernetOnly); err != nil || len(asked) != 0 {
			nstest.Fatalf(t, "Apply(ethernet only) = %v after asking for %v, want no question", err, asked)
		}
		spec := Spec{Links: []LinkSpec{
			{Name: "eth0", Kind: config.TypeEthernet, MTU: 1500},
			{Name: "bond0", Kind: config.TypeBond},
			{Name: "bond0.7", Kind: config.TypeVLAN, VLANLink: "bond0", VLANID: 7},
		}}
		res, err := a.Apply(context.Background(), spec)
		if err == nil || !strings.Contains(err.Error(), "module bonding failed") {
			nstest.Fatalf(t, "Apply = %v, want the missing support's error", err)
		}
		if !slices.Equal(asked, []string{config.TypeBond, config.TypeVLAN}) || len(res.Changes) != 0 {
			nstest.Fatalf(t, "asked for %v and changed %q, want bond and vlan asked before any change", asked, res.Changes)
		}
		if l, err := h.LinkByName("eth0"); err != nil || l.Attrs().MTU != 1400 {
			nstest.Fatalf(t, "eth0 changed by a refused apply: %v", err)
		}
	})
}
