package network

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/dhcp"
	"github.com/ballast-os/ballast/initagent/netconf"
)

func TestMergeAddsLeases(t *testing.T) {
	spec := netconf.Spec{Links: []netconf.LinkSpec{
		{Name: "eth0", Addresses: []netconf.AddrSpec{{Prefix: netip.MustParsePrefix("10.0.0.5/24")}}},
		{Name: "eth1"},
	}}
	leases := map[string]dhcp.Lease{
		"eth1/4": {Address: netip.MustParsePrefix("192.0.2.7/24"), MTU: 1400,
			Routes: []dhcp.Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("192.0.2.1")}}},
		"eth1/6": {Address: netip.MustParsePrefix("2001:db8::7/128")},
	}
	got := merge(spec, leases)
	if len(got.Links[0].Addresses) != 1 {
		t.Errorf("eth0 got lease addresses: %+v", got.Links[0])
	}
	e1 := got.Links[1]
	var addrs []string
	for _, a := range e1.Addresses {
		addrs = append(addrs, a.Prefix.String())
	}
	if strings.Join(addrs, " ") != "2001:db8::7/128 192.0.2.7/24" {
		t.Errorf("eth1 addresses %v", addrs)
	}
	if len(e1.Routes) != 1 || e1.Routes[0].Gw != netip.MustParseAddr("192.0.2.1") || e1.Routes[0].Src != netip.MustParseAddr("192.0.2.7") || e1.Routes[0].Metric != dhcpMetric {
		t.Errorf("eth1 routes %+v", e1.Routes)
	}
	if e1.MTU != 1400 {
		t.Errorf("eth1 mtu %d, want the lease's 1400", e1.MTU)
	}
	if len(spec.Links[1].Addresses) != 0 {
		t.Error("merge modified its input")
	}
}

func TestFromConfigDHCPAndDNS(t *testing.T) {
	cfg, _, err := config.Parse([]byte(`apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - {name: eth0, dhcp4: true, dhcp6: stateless}
    - {name: eth1, addresses: [10.1.0.5/24]}
  dns: {servers: [10.1.0.53], search: [example.com]}
`))
	if err != nil {
		t.Fatal(err)
	}
	d, err := FromConfig(cfg, "test")
	if err != nil {
		t.Fatal(err)
	}
	w := wantedClients(d)
	if len(w) != 2 || w["eth0/6"] != "stateless" {
		t.Errorf("wanted clients %v", w)
	}
	servers, search := dnsOf(d, map[string]dhcp.Lease{"eth0/4": {DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("10.1.0.53")}, Domain: "lab.test"}})
	if !slices.Equal(servers, []netip.Addr{netip.MustParseAddr("10.1.0.53"), netip.MustParseAddr("192.0.2.53")}) {
		t.Errorf("servers %v: static first, no duplicates", servers)
	}
	if !slices.Equal(search, []string{"example.com", "lab.test"}) {
		t.Errorf("search %v", search)
	}
	if got := string(ResolvConf(servers, search)); !strings.Contains(got, "nameserver 10.1.0.53\nnameserver 192.0.2.53\nsearch example.com lab.test\n") {
		t.Errorf("resolv.conf:\n%s", got)
	}
}
