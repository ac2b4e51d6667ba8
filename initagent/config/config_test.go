package config

import (
	"errors"
	"strings"
	"testing"
)

const base = `apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - name: eth0
      addresses: [10.0.0.5/24, "2001:db8::5/64"]
      routes:
        - {to: default, via: 10.0.0.1, metric: 100}
        - {to: 10.20.0.0/16, via: 10.0.0.254, table: 100}
    - name: eth1
      mtu: 9000
    - name: eth2
    - name: bond0
      type: bond
      mtu: 9000
      bond: {mode: 802.3ad, lacpRate: fast, members: [eth1, eth2]}
    - name: bond0.100
      type: vlan
      vlan: {id: 100, link: bond0}
      addresses: [192.168.100.5/24]
  rules:
    - {priority: 100, from: 192.168.100.5, table: 100}
  dns:
    servers: [10.0.0.53, "2001:db8::53"]
    search: [example.com]
cluster:
  name: prod
  domain: example.com
  role: control-plane
  apiVIPs: [10.0.0.100]
  ingressVIPs: [10.0.0.101]
  apiServers: ["10.0.0.11:6443"]
`

func TestBaseConfigIsValid(t *testing.T) {
	cfg, warnings, err := Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}
	if got := cfg.Network.Interfaces[3].Bond.Members; len(got) != 2 {
		t.Errorf("bond members = %v", got)
	}
	if cfg.Network.Rules[0].From != "192.168.100.5/32" {
		t.Errorf("rule from %q, want the address normalised to a /32", cfg.Network.Rules[0].From)
	}
}

func TestJSONIsAccepted(t *testing.T) {
	_, _, err := Parse([]byte(`{"apiVersion": "ballast.dev/v1alpha1", "kind": "MachineConfig",
		"network": {"interfaces": [{"name": "eth0", "dhcp4": true}]}}`))
	if err != nil {
		t.Fatal(err)
	}
}

// TestValidationRules is the table of every rule with its exact message.
func TestValidationRules(t *testing.T) {
	for _, tc := range []struct {
		name       string
		old, new   string // replacement applied to base
		path, want string
	}{
		{"unknown field", "      mtu: 9000", "      mtu: 9000\n      speed: 10G", "network.interfaces[1].speed",
			"unknown field: remove it or use one of addresses, bond, bridge, dhcp4, dhcp6, mac, managed, mtu, name, routes, slaac, state, sysctls, type, vlan"},
		{"wrong kind", "mtu: 9000", "mtu: big", "network.interfaces[1].mtu", `must be a whole number, got "big"`},
		{"bad apiVersion", "ballast.dev/v1alpha1", "ballast.dev/v2", "apiVersion", `"ballast.dev/v2" is not supported by this agent: use "ballast.dev/v1alpha1"`},
		{"gateway off-subnet", "via: 10.0.0.254", "via: 10.9.9.1", "network.interfaces[0].routes[1].via",
			"gateway 10.9.9.1 is not inside any subnet of this interface (10.0.0.0/24): fix the gateway, add the subnet's address, or set onlink: true if the gateway is reachable on the link anyway"},
		{"gateway off-subnet but onlink", "via: 10.0.0.254, table: 100", "via: 10.9.9.1, onlink: true, table: 100", "", ""},
		{"ipv6 link-local gateway", "{to: default, via: 10.0.0.1, metric: 100}", "{to: \"::/0\", via: \"fe80::1\"}", "", ""},
		{"same subnet twice", "[10.0.0.5/24,", "[10.0.0.5/24, 10.0.0.6/24,", "network.interfaces[0].addresses[1]",
			"10.0.0.6/24 is in the same subnet as 10.0.0.5/24 at network.interfaces[0].addresses[0]: one address per subnet per interface (add a second address as a /32 or /128 if you really need it)"},
		{"dns loopback", "[10.0.0.53,", "[127.0.0.1,", "network.dns.servers[0]", "127.0.0.1 is loopback: the node runs its own local DNS server there; list the upstream servers"},
		{"dns link-local", "[10.0.0.53,", "[\"fe80::53\",", "network.dns.servers[0]", "fe80::53 is link-local: it is ambiguous without an interface and breaks when links change; use a routable address"},
		{"dns multicast", "[10.0.0.53,", "[224.0.0.251,", "network.dns.servers[0]", "224.0.0.251 is multicast: give a unicast DNS server"},
		{"dns unspecified", "[10.0.0.53,", "[0.0.0.0,", "network.dns.servers[0]", "0.0.0.0 is the unspecified address: give the DNS server's real address"},
		{"ipv4-compatible", "[10.0.0.53,", "[\"::10.0.0.53\",", "network.dns.servers[0]",
			"::10.0.0.53 is an IPv4-compatible IPv6 address (::a.b.c.d), deprecated by RFC 4291 and treated as IPv4 by some tools and IPv6 by others: write the IPv4 address 10.0.0.53, or a real IPv6 address"},
		{"ipv4-compatible address", "[10.0.0.5/24,", "[\"::10.0.0.5/120\",", "network.interfaces[0].addresses[0]",
			"::10.0.0.5/120 is an IPv4-compatible IPv6 address (::a.b.c.d), deprecated by RFC 4291 and treated as IPv4 by some tools and IPv6 by others: write the IPv4 address 10.0.0.5, or a real IPv6 address"},
		{"vlan id 0", "id: 100", "id: 0", "network.interfaces[4].vlan.id", "0 is outside 1–4094 (0 and 4095 are reserved by IEEE 802.1Q)"},
		{"vlan id 4095", "id: 100", "id: 4095", "network.interfaces[4].vlan.id", "4095 is outside 1–4094 (0 and 4095 are reserved by IEEE 802.1Q)"},
		{"vlan link undeclared", "link: bond0", "link: bond9", "network.interfaces[4].vlan.link", `"bond9" is not declared: add it to network.interfaces`},
		{"mtu too small", "mtu: 9000", "mtu: 67", "network.interfaces[1].mtu", "67 is outside 68–65535"},
		{"mtu too big", "mtu: 9000", "mtu: 65536", "network.interfaces[1].mtu", "65536 is outside 68–65535"},
		{"mtu below ipv6 minimum", "      routes:\n", "      mtu: 1200\n      routes:\n", "network.interfaces[0].mtu",
			"1200 is below 1280, the minimum for IPv6 (RFC 8200): raise it, or set sysctls.disableIPv6: true"},
		{"bond without members", "members: [eth1, eth2]", "members: []", "network.interfaces[3].bond.members",
			"a bond without members carries no traffic: list its member interfaces"},
		{"member in two bonds", "    - name: bond0.100\n", "    - name: bond1\n      type: bond\n      bond: {members: [eth2]}\n    - name: bond0.100\n",
			"network.interfaces[4].bond.members[0]", `"eth2" is already a member of bond "bond0": an interface can be in one bond only`},
		{"duplicate name", "    - name: eth2\n", "    - name: eth1\n", "network.interfaces[2].name", `"eth1" is already declared at network.interfaces[1]: merge the two entries`},
		{"duplicate mac", "    - name: eth1\n", "    - name: eth1\n      mac: 52:54:00:00:00:01\n    - mac: 52:54:00:00:00:01\n",
			"network.interfaces[2].mac", "52:54:00:00:00:01 is already selected by network.interfaces[1]: one entry per NIC"},
		{"overlap between interfaces", "[192.168.100.5/24]", "[10.0.9.9/16]", "network.interfaces[4].addresses[0]",
			"10.0.9.9/16 overlaps 10.0.0.5/24 at network.interfaces[0].addresses[0] on another interface: one subnet belongs on one interface"},
		{"vip equals node address", "apiVIPs: [10.0.0.100]", "apiVIPs: [10.0.0.5]", "cluster.apiVIPs[0]",
			"10.0.0.5 is also the node address at network.interfaces[0].addresses[0]: a VIP must be an address no node owns"},
		{"vip outside subnets", "ingressVIPs: [10.0.0.101]", "ingressVIPs: [172.16.0.1]", "cluster.ingressVIPs[0]",
			"172.16.0.1 is outside every node subnet: peers could not reach it on the link; pick an address in one of the node's subnets"},
		{"vip priority", `apiServers: ["10.0.0.11:6443"]`, "apiServers: [\"10.0.0.11:6443\"]\n  vip: {priority: 255}", "cluster.vip.priority",
			"255 is outside 1–254 (255 belongs to an address owner, which a VIP node never is)"},
		{"vip same vrid", `apiServers: ["10.0.0.11:6443"]`, "apiServers: [\"10.0.0.11:6443\"]\n  vip: {apiVRID: 7, ingressVRID: 7}", "cluster.vip.ingressVRID",
			"7 is also apiVRID: the two VIPs need their own virtual routers"},
		{"vip advert interval", `apiServers: ["10.0.0.11:6443"]`, "apiServers: [\"10.0.0.11:6443\"]\n  vip: {advertIntervalMs: 15}", "cluster.vip.advertIntervalMs",
			"15: VRRPv3 carries centiseconds: use a multiple of 10 from 10 to 40950"},
		{"ingress check weight", `apiServers: ["10.0.0.11:6443"]`, "apiServers: [\"10.0.0.11:6443\"]\n  vip: {ingressCheck: {tcp: \"127.0.0.1:443\"}}", "cluster.vip.ingressCheck.weight",
			"0: a failing check must cost 1–253 priority points, or set fault: true to give the VIP up"},
		{"ingress check both", `apiServers: ["10.0.0.11:6443"]`, "apiServers: [\"10.0.0.11:6443\"]\n  vip: {ingressCheck: {tcp: \"127.0.0.1:443\", http: \"http://127.0.0.1/\", fault: true}}", "cluster.vip.ingressCheck",
			"both http and tcp set: choose one check"},
		{"proxy balance", `apiServers: ["10.0.0.11:6443"]`, "apiServers: [\"10.0.0.11:6443\"]\n  apiProxy: {balance: random}", "cluster.apiProxy.balance",
			`"random": use round-robin or least-conn`},
		{"proxy pin", `apiServers: ["10.0.0.11:6443"]`, "apiServers: [\"10.0.0.11:6443\"]\n  apiProxy: {pinnedSPKI: [abc]}", "cluster.apiProxy.pinnedSPKI[0]",
			`"abc" is not a hex sha256 (64 hex digits) of a public key`},
		{"route src not ours", "metric: 100}", "metric: 100, src: 10.0.0.9}", "network.interfaces[0].routes[0].src",
			"10.0.0.9 is not an address of this node: the kernel only uses its own addresses as source"},
		{"address without length", "[192.168.100.5/24]", "[192.168.100.5]", "network.interfaces[4].addresses[0]",
			`"192.168.100.5" has no prefix length: write it as 192.168.100.5/24 (IPv4) or 192.168.100.5/64 (IPv6) with the subnet's real length`},
		{"rule priority", "priority: 100", "priority: 32766", "network.rules[0].priority",
			"32766: use 1–32765 (0, 32766 and 32767 are the kernel's local, main and default rules)"},
		{"pod CIDR holds a node address", "  apiServers: [\"10.0.0.11:6443\"]\n", "  apiServers: [\"10.0.0.11:6443\"]\n  podCIDRs: [10.0.0.0/16]\n", "cluster.podCIDRs[0]",
			"10.0.0.0/16 contains the node address 10.0.0.5 at network.interfaces[0].addresses[0]: pod and service networks must not overlap the node's"},
		{"service CIDR host bits", "  apiServers: [\"10.0.0.11:6443\"]\n", "  apiServers: [\"10.0.0.11:6443\"]\n  serviceCIDRs: [10.96.0.1/12]\n", "cluster.serviceCIDRs[0]",
			"10.96.0.1/12 has host bits set: write 10.96.0.0/12"},
		{"egress to a declared source", "  dns:\n", "  egress:\n    - {to: 192.0.2.0/24, interface: eth0, source: 10.0.0.5}\n    - {source: 10.0.0.101}\n    - {interface: bond0.100, source: masquerade}\n  dns:\n", "", ""},
		{"egress source not ours", "  dns:\n", "  egress:\n    - {source: 10.0.0.9}\n  dns:\n", "network.egress[0].source",
			`10.0.0.9 is not an address of this node: use one of its static addresses or a cluster VIP (replies must come back to the node), or "masquerade"`},
		{"egress families", "  dns:\n", "  egress:\n    - {to: \"2001:db8:9::/48\", source: 10.0.0.5}\n  dns:\n", "network.egress[0].source",
			"10.0.0.5 and the destination 2001:db8:9::/48 are of different families: give a source of the destination's family"},
		{"egress without source", "  dns:\n", "  egress:\n    - {to: 192.0.2.0/24}\n  dns:\n", "network.egress[0].source",
			`missing: give an address of this node or "masquerade"`},
		{"egress undeclared interface", "  dns:\n", "  egress:\n    - {interface: eth9, source: masquerade}\n  dns:\n", "network.egress[0].interface",
			`"eth9" is not in network.interfaces: egress leaves through a declared interface`},
		{"egress host bits", "  dns:\n", "  egress:\n    - {to: 192.0.2.1/24, source: masquerade}\n  dns:\n", "network.egress[0].to",
			"192.0.2.1/24 has host bits set: write 192.0.2.0/24"},
		{"firewall", "  dns:\n", "  firewall:\n    enabled: true\n    managementNets: [10.9.0.0/16, 10.8.0.1]\n    rules:\n      - {name: web, protocol: tcp, ports: [\"443\", \"8000-8100\"], from: [192.0.2.0/24], interface: eth0}\n  dns:\n", "", ""},
		{"firewall protocol", "  dns:\n", "  firewall:\n    rules:\n      - {protocol: sctp, ports: [\"9\"]}\n  dns:\n", "network.firewall.rules[0].protocol", `"sctp": use tcp or udp`},
		{"firewall port range", "  dns:\n", "  firewall:\n    rules:\n      - {protocol: udp, ports: [\"9000-80\"]}\n  dns:\n", "network.firewall.rules[0].ports[0]",
			`"9000-80": write a port (1–65535) or a range first-last`},
		{"firewall no ports", "  dns:\n", "  firewall:\n    rules:\n      - {protocol: udp}\n  dns:\n", "network.firewall.rules[0].ports",
			`missing: list the ports to open, e.g. ["443", "8000-8100"]`},
		{"firewall source", "  dns:\n", "  firewall:\n    managementNets: [10.9.0.1/16]\n  dns:\n", "network.firewall.managementNets[0]",
			"10.9.0.1/16 has host bits set: write 10.9.0.0/16"},
		{"ignition unknown key", "cluster:\n", "ignition:\n  ignition: {version: 3.4.0}\n  storag: {}\ncluster:\n", "ignition.storag", "unused key storag"},
		{"ignition too new", "cluster:\n", "ignition:\n  ignition: {version: 9.0.0}\ncluster:\n", "ignition", "unsupported config version: this agent reads Ignition spec 3.0 to 3.5.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := strings.Replace(base, tc.old, tc.new, 1)
			if doc == base {
				t.Fatalf("replacement %q not found in base", tc.old)
			}
			_, _, err := Parse([]byte(doc))
			if tc.path == "" {
				if err != nil {
					t.Fatalf("Parse: %v, want success", err)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error %v (%T), want Errors", err, err)
			}
			for _, e := range errs {
				if e.Path == tc.path && e.Msg == tc.want {
					if e.Line == 0 {
						t.Errorf("error %q has no line number", e)
					}
					return
				}
			}
			t.Fatalf("errors:\n%v\nwant %s: %s", err, tc.path, tc.want)
		})
	}
}

func TestIPv4MappedIsNormalisedWithWarning(t *testing.T) {
	doc := strings.Replace(base, "[10.0.0.53,", "[\"::ffff:10.0.0.53\",", 1)
	cfg, warnings, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Network.DNS.Servers[0] != "10.0.0.53" {
		t.Errorf("server = %q, want 10.0.0.53", cfg.Network.DNS.Servers[0])
	}
	if len(warnings) != 1 || warnings[0].Path != "network.dns.servers[0]" {
		t.Errorf("warnings = %v, want one for network.dns.servers[0]", warnings)
	}
}

func TestBareIgnitionConfig(t *testing.T) {
	cfg, _, err := Parse([]byte(`{"ignition": {"version": "3.2.0"}, "storage": {"files": [{"path": "/var/lib/x", "contents": {"source": "data:,hello"}}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	ign, err := cfg.IgnitionConfig()
	if err != nil {
		t.Fatal(err)
	}
	if len(ign.Storage.Files) != 1 || ign.Storage.Files[0].Path != "/var/lib/x" {
		t.Errorf("ignition files = %+v", ign.Storage.Files)
	}
}
