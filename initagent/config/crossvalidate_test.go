package config

import (
	"errors"
	"strings"
	"testing"
)

// edit is one replacement applied to base.
type edit struct{ old, new string }

const (
	beforeRules = "  rules:\n"
	lastLine    = "  apiServers: [\"10.0.0.11:6443\"]\n"
)

func addIface(yaml string) edit  { return edit{beforeRules, yaml + beforeRules} }
func appendDoc(yaml string) edit { return edit{lastLine, lastLine + yaml} }

// TestCrossObjectChecks is the list of every pair of objects that must
// agree, with the error that names both. A case without path must parse.
func TestCrossObjectChecks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edits []edit
		path  string   // the field the error is reported at
		has   []string // parts of the message: the other object's path and what to do
	}{
		// bond and bridge members
		{"bond member not declared", []edit{{"members: [eth1, eth2]", "members: [eth1, eth2, eth9]"}},
			"network.interfaces[3].bond.members[2]", []string{`"eth9" is not declared: add it to network.interfaces`}},
		{"bond member listed twice", []edit{{"members: [eth1, eth2]", "members: [eth1, eth2, eth1]"}},
			"network.interfaces[3].bond.members[2]", []string{"listed twice (also network.interfaces[3].bond.members[0]): remove one"}},
		{"bond member also a bridge port", []edit{addIface("    - {name: br0, type: bridge, bridge: {members: [eth2]}}\n")},
			"network.interfaces[5].bridge.members[0]", []string{`already a member of bond "bond0" at network.interfaces[3].bond.members[1]`, "put the bond in the bridge"}},
		{"port of two bridges", []edit{addIface("    - {name: eth5}\n    - {name: br0, type: bridge, bridge: {members: [eth5]}}\n    - {name: br1, type: bridge, bridge: {members: [eth5]}}\n")},
			"network.interfaces[7].bridge.members[0]", []string{`already a port of bridge "br0" at network.interfaces[6].bridge.members[0]`}},
		{"bridge port listed twice", []edit{addIface("    - {name: eth5}\n    - {name: br0, type: bridge, bridge: {members: [eth5, eth5]}}\n")},
			"network.interfaces[6].bridge.members[1]", []string{"listed twice (also network.interfaces[6].bridge.members[0])"}},
		{"bridge in a bridge", []edit{addIface("    - {name: br0, type: bridge}\n    - {name: br1, type: bridge, bridge: {members: [br0]}}\n")},
			"network.interfaces[6].bridge.members[0]", []string{`"br0" is a bridge (network.interfaces[5])`}},
		{"address on a bond member", []edit{{"    - name: eth2\n", "    - name: eth2\n      addresses: [10.1.0.5/24]\n"}},
			"network.interfaces[2].addresses[0]", []string{"network.interfaces[3].bond.members[1]", "move them to network.interfaces[3]"}},
		{"route on a bond member", []edit{{"    - name: eth2\n", "    - name: eth2\n      routes: [{to: 10.30.0.0/16, via: 10.0.0.1, onlink: true}]\n"}},
			"network.interfaces[2].routes[0]", []string{"network.interfaces[3].bond.members[1]", "move them to network.interfaces[3]"}},
		{"DHCP on a bond member", []edit{{"    - name: eth2\n", "    - name: eth2\n      dhcp4: true\n"}},
			"network.interfaces[2].dhcp4", []string{"network.interfaces[3].bond.members[1]", "set dhcp4 on network.interfaces[3]"}},
		{"SLAAC on a bridge port", []edit{addIface("    - {name: eth5, slaac: true}\n    - {name: br0, type: bridge, bridge: {members: [eth5]}}\n")},
			"network.interfaces[5].slaac", []string{"network.interfaces[6].bridge.members[0]", "set slaac on network.interfaces[6]"}},
		{"bond containing its own VLAN", []edit{{"members: [eth1, eth2]", "members: [eth1, eth2, bond0.100]"}},
			"network.interfaces[3]", []string{"bond0 at network.interfaces[3] → bond0.100 at network.interfaces[4] → bond0", "take one out"}},

		// VLANs and their parents
		{"VLAN on a bond member", []edit{{"link: bond0", "link: eth1"}},
			"network.interfaces[4].vlan.link", []string{"network.interfaces[3].bond.members[0]", "set vlan.link: bond0"}},
		{"VLAN its own parent", []edit{{"link: bond0", "link: bond0.100"}},
			"network.interfaces[4].vlan.link", []string{"a VLAN cannot be its own parent"}},
		{"two VLANs with one id on one parent", []edit{addIface("    - {name: v100, type: vlan, vlan: {id: 100, link: bond0}}\n")},
			"network.interfaces[5].vlan.id", []string{`VLAN 100 on "bond0" is already network.interfaces[4]`, "remove one or change the id"}},
		{"VLAN on a bridge port is allowed", []edit{addIface("    - {name: eth5}\n    - {name: br0, type: bridge, bridge: {members: [eth5]}}\n    - {name: eth5.7, type: vlan, vlan: {id: 7, link: eth5}}\n")}, "", nil},

		// MTUs
		{"VLAN MTU above its parent's", []edit{{"      vlan: {id: 100, link: bond0}\n", "      vlan: {id: 100, link: bond0}\n      mtu: 9216\n"}},
			"network.interfaces[4].mtu", []string{`above the MTU 9000 of its parent "bond0" at network.interfaces[3].mtu`, "set mtu: 9216 (or more) on network.interfaces[3]"}},
		{"VLAN MTU above a bond without mtu", []edit{{"      mtu: 9000\n      bond:", "      bond:"}, {"    - name: eth1\n      mtu: 9000\n", "    - name: eth1\n"},
			{"      vlan: {id: 100, link: bond0}\n", "      vlan: {id: 100, link: bond0}\n      mtu: 9000\n"}},
			"network.interfaces[4].mtu", []string{"above the MTU 1500", "network.interfaces[3] (no mtu: a new bond has 1500)"}},
		{"VLAN with IPv6 inheriting an MTU below 1280", []edit{{"      mtu: 9000\n      bond:", "      mtu: 1200\n      bond:"}, {"    - name: eth1\n      mtu: 9000\n", "    - name: eth1\n"},
			{"[192.168.100.5/24]", "[192.168.100.5/24, \"2001:db8:100::5/64\"]"}},
			"network.interfaces[4].vlan.link", []string{"inherits MTU 1200 from network.interfaces[3].mtu", "set mtu: 1280 (or more) on network.interfaces[3] and here"}},
		{"bond member MTU differs from the bond's", []edit{{"    - name: eth1\n      mtu: 9000\n", "    - name: eth1\n      mtu: 1500\n"}},
			"network.interfaces[1].mtu", []string{`differs from the MTU 9000 of bond "bond0" at network.interfaces[3].mtu`, "set mtu: 1500 on the bond (network.interfaces[3]) and remove it here"}},
		{"bond member MTU with the bond's unset", []edit{{"      mtu: 9000\n      bond:", "      bond:"}},
			"network.interfaces[1].mtu", []string{"differs from the MTU 1500", "network.interfaces[3] (no mtu: a new bond has 1500)", "set mtu: 9000 on the bond"}},
		{"bridge port MTU below the bridge's", []edit{addIface("    - {name: eth5, mtu: 1500}\n    - {name: br0, type: bridge, mtu: 9000, bridge: {members: [eth5]}}\n")},
			"network.interfaces[5].mtu", []string{`below the MTU 9000 of bridge "br0" at network.interfaces[6].mtu`, "raise it to 9000"}},
		{"bridge with IPv6 over ports below 1280", []edit{addIface("    - {name: eth5, mtu: 1200, sysctls: {disableIPv6: true}}\n    - {name: br0, type: bridge, addresses: [\"2001:db8:9::1/64\"], bridge: {members: [eth5]}}\n")},
			"network.interfaces[6].mtu", []string{"takes MTU 1200 from network.interfaces[6] (no mtu: its smallest port's, network.interfaces[5].mtu)"}},

		// link states and kinds
		{"VLAN on a parent that is down", []edit{{"      mtu: 9000\n      bond:", "      mtu: 9000\n      state: down\n      bond:"}},
			"network.interfaces[4].vlan.link", []string{`parent "bond0" is down (network.interfaces[3].state)`, "set the parent's state to up"}},
		{"bond member down", []edit{{"    - name: eth2\n", "    - name: eth2\n      state: down\n"}},
			"network.interfaces[2].state", []string{"network.interfaces[3].bond.members[1]", "remove state: down"}},
		{"routes on a down interface", []edit{{"    - name: eth0\n", "    - name: eth0\n      state: down\n"}},
			"network.interfaces[0].routes[0]", []string{"down (network.interfaces[0].state)", "bring it up or remove its routes"}},
		{"DHCP on a down interface", []edit{addIface("    - {name: eth5, state: down, dhcp4: true}\n")},
			"network.interfaces[5].state", []string{"DHCP needs the link up"}},
		{"DHCP on a dummy", []edit{addIface("    - {name: d0, type: dummy, dhcp4: true}\n")},
			"network.interfaces[5].type", []string{"DHCP and SLAAC never answer"}},
		{"the agent's pod DNS link name", []edit{addIface("    - {name: ballast-dns, type: dummy}\n")},
			"network.interfaces[5].name", []string{"the link the agent creates for the pods' DNS address 169.254.20.10: pick another name"}},
		{"the agent's pod DNS address", []edit{{"[192.168.100.5/24]", "[192.168.100.5/24, 169.254.20.10/32]"}},
			"network.interfaces[4].addresses[1]", []string{"the pods' DNS address", "use another address"}},

		// routes against routes and addresses
		{"same route on two interfaces", []edit{{"      addresses: [192.168.100.5/24]\n", "      addresses: [192.168.100.5/24]\n      routes: [{to: 10.20.0.0/16, via: 192.168.100.1, table: 100}]\n"}},
			"network.interfaces[4].routes[0].to", []string{"10.20.0.0/16 in table 100 with metric 0 is already routed through eth0 by network.interfaces[0].routes[1]", "give them different metrics"}},
		{"same route twice on one interface", []edit{{"metric: 100}\n", "metric: 100}\n        - {to: default, via: 10.0.0.2, metric: 100}\n"}},
			"network.interfaces[0].routes[1].to", []string{"0.0.0.0/0 in table main with metric 100 is already routed on the same interface by network.interfaces[0].routes[0]"}},
		{"same IPv6 route with metric 0 and 1024", []edit{{"metric: 100}\n", "metric: 100}\n        - {to: \"::/0\", via: \"2001:db8::1\"}\n        - {to: \"::/0\", via: \"2001:db8::2\", metric: 1024}\n"}},
			"network.interfaces[0].routes[2].to", []string{"already routed on the same interface by network.interfaces[0].routes[1]"}},
		{"same destination with another metric is a fallback", []edit{{"metric: 100}\n", "metric: 100}\n        - {to: default, via: 10.0.0.2, metric: 200}\n"}}, "", nil},
		{"gateway is the node's own address", []edit{{"via: 10.0.0.1, metric", "via: 10.0.0.5, metric"}},
			"network.interfaces[0].routes[0].via", []string{"this node's own address (network.interfaces[0].addresses[0]): the gateway is the next router"}},
		{"gateway is a VIP", []edit{{"via: 10.0.0.1, metric", "via: 10.0.0.100, metric"}},
			"network.interfaces[0].routes[0].via", []string{"the VIP at cluster.apiVIPs[0]", "route via a router's fixed address"}},
		{"gateway is the broadcast address", []edit{{"via: 10.0.0.1, metric", "via: 10.0.0.255, metric"}},
			"network.interfaces[0].routes[0].via", []string{"broadcast address of the subnet 10.0.0.0/24 (network.interfaces[0].addresses[0])"}},
		{"gateway is the network address", []edit{{"via: 10.0.0.1, metric", "via: 10.0.0.0, metric"}},
			"network.interfaces[0].routes[0].via", []string{"network address of the subnet 10.0.0.0/24 (network.interfaces[0].addresses[0])"}},
		{"source of the other family", []edit{{"metric: 100}", "metric: 100, src: \"2001:db8::5\"}"}},
			"network.interfaces[0].routes[0].src", []string{"different families"}},
		{"route to the own subnet via a gateway", []edit{{"metric: 100}\n", "metric: 100}\n        - {to: 10.0.0.0/24, via: 10.0.0.1}\n"}},
			"network.interfaces[0].routes[1].to", []string{"this interface's own subnet (network.interfaces[0].addresses[0])", "remove this route"}},
		{"route to another interface's subnet", []edit{{"      addresses: [192.168.100.5/24]\n", "      addresses: [192.168.100.5/24]\n      routes: [{to: 10.0.0.0/24}]\n"}},
			"network.interfaces[4].routes[0].to", []string{"the subnet of network.interfaces[0].addresses[0] on another interface"}},
		{"route into the service network is allowed", []edit{{"metric: 100}\n", "metric: 100}\n        - {to: 10.96.0.0/12, via: 10.0.0.1}\n"},
			appendDoc("  serviceCIDRs: [10.96.0.0/12]\n")}, "", nil},

		// rules against routes, rules and interfaces
		{"rule to a table without routes", []edit{{"from: 192.168.100.5, table: 100}", "from: 192.168.100.5, table: 200}"}},
			"network.rules[0].table", []string{"no IPv4 route in network.interfaces[*].routes has table: 200", "add the routes with table: 200"}},
		{"routes in a table no rule reads", []edit{{"from: 192.168.100.5, table: 100}", "from: 192.168.100.5, table: 200}"}},
			"network.interfaces[0].routes[1].table", []string{"no IPv4 rule in network.rules looks up table 100", "add a rule"}},
		{"rule of the other family than the table's routes", []edit{{"from: 192.168.100.5, table: 100}", "from: \"2001:db8::5\", table: 100}"}},
			"network.rules[0].table", []string{"no IPv6 route in network.interfaces[*].routes has table: 100"}},
		{"fwmark rule for an IPv6 table", []edit{{"metric: 100}\n", "metric: 100}\n        - {to: \"2001:db8:20::/48\", via: \"2001:db8::1\", table: 101}\n"},
			{"table: 100}\n  dns", "table: 100}\n    - {priority: 101, fwmark: 1, table: 101}\n  dns"}},
			"network.rules[1].table", []string{"no IPv4 route", "a rule without from or to is an IPv4 rule"}},
		{"rule to the main table needs no route", []edit{{"table: 100}\n  dns", "table: 100}\n    - {priority: 101, fwmark: 1, table: 254}\n  dns"}}, "", nil},
		{"same rule twice", []edit{{"table: 100}\n  dns", "table: 100}\n    - {priority: 100, from: 192.168.100.5, table: 100}\n  dns"}},
			"network.rules[1]", []string{"same priority and match as network.rules[0]", "merge them or give them different priorities"}},
		{"rule on a bond member", []edit{{"table: 100}\n  dns", "table: 100}\n    - {priority: 101, iif: eth1, table: 100}\n  dns"}},
			"network.rules[1].iif", []string{`member of bond "bond0" (network.interfaces[3].bond.members[0])`, `name "bond0"`}},

		// VIPs
		{"API VIP = ingress VIP", []edit{{"ingressVIPs: [10.0.0.101]", "ingressVIPs: [10.0.0.100]"}},
			"cluster.ingressVIPs[0]", []string{"also the API VIP at cluster.apiVIPs[0]", "pick another ingress VIP"}},
		{"VIP listed twice", []edit{{"apiVIPs: [10.0.0.100]", "apiVIPs: [10.0.0.100, 10.0.0.100]"}},
			"cluster.apiVIPs[1]", []string{"listed twice (also cluster.apiVIPs[0]): remove one"}},
		{"VIP inside the pod network", []edit{appendDoc("  podCIDRs: [10.0.0.96/28]\n")},
			"cluster.apiVIPs[0]", []string{"inside the pod network 10.0.0.96/28 (cluster.podCIDRs[0])", "pick one in a node subnet"}},
		{"VIP inside the service network", []edit{appendDoc("  serviceCIDRs: [10.0.0.96/28]\n")},
			"cluster.ingressVIPs[0]", []string{"inside the service network 10.0.0.96/28 (cluster.serviceCIDRs[0])"}},
		{"VIP interface not declared", []edit{appendDoc("  vip: {interface: eth9}\n")},
			"cluster.vip.interface", []string{`"eth9" is not declared`}},
		{"VIP interface a bond member", []edit{appendDoc("  vip: {interface: eth1}\n")},
			"cluster.vip.interface", []string{`member of bond "bond0" (network.interfaces[3].bond.members[0])`}},
		{"VIP interface without the VIP's subnet", []edit{appendDoc("  vip: {interface: bond0.100}\n")},
			"cluster.vip.interface", []string{"no subnet holding the VIP 10.0.0.100 (cluster.apiVIPs[0])"}},
		{"VIP interface down", []edit{{"    - name: eth0\n", "    - name: eth0\n      state: down\n"}, appendDoc("  vip: {interface: eth0}\n")},
			"cluster.vip.interface", []string{"down (network.interfaces[0].state)"}},
		{"peers without a VIP's family", []edit{{"apiVIPs: [10.0.0.100]", "apiVIPs: [10.0.0.100, \"2001:db8::100\"]"}, appendDoc("  peers: [10.0.0.12]\n")},
			"cluster.apiVIPs[1]", []string{"cluster.peers has no IPv6 address", "add the peers' IPv6 addresses"}},

		// pod and service networks
		{"pod and service networks overlap", []edit{appendDoc("  podCIDRs: [10.244.0.0/16]\n  serviceCIDRs: [10.244.128.0/20]\n")},
			"cluster.serviceCIDRs[0]", []string{"overlaps the pod network 10.244.0.0/16 (cluster.podCIDRs[0])", "pick one outside it"}},
		{"two IPv4 pod networks", []edit{appendDoc("  podCIDRs: [10.244.0.0/16, 10.245.0.0/16]\n")},
			"cluster.podCIDRs[1]", []string{"a second IPv4 pod network (cluster.podCIDRs[0]", "at most one per family"}},
		{"pod network overlaps a node subnet", []edit{appendDoc("  podCIDRs: [192.168.100.128/25]\n")},
			"cluster.podCIDRs[0]", []string{"overlaps the node subnet 192.168.100.0/24 (network.interfaces[4].addresses[0])"}},
		{"dual-stack pod and service networks", []edit{appendDoc("  podCIDRs: [10.244.0.0/16, \"fd00:10:244::/56\"]\n  serviceCIDRs: [10.96.0.0/12, \"fd00:10:96::/112\"]\n")}, "", nil},

		// DNS servers
		{"DNS server listed twice", []edit{{"[10.0.0.53, \"2001:db8::53\"]", "[10.0.0.53, 10.0.0.53]"}},
			"network.dns.servers[1]", []string{"listed twice (also network.dns.servers[0]): remove one"}},
		{"DNS server in the service network", []edit{{"[10.0.0.53, \"2001:db8::53\"]", "[10.96.0.10]"}, appendDoc("  serviceCIDRs: [10.96.0.0/12]\n")},
			"network.dns.servers[0]", []string{"inside the service network 10.96.0.0/12 (cluster.serviceCIDRs[0])", "list the upstream DNS servers"}},
		{"DNS server is the API VIP", []edit{{"[10.0.0.53, \"2001:db8::53\"]", "[10.0.0.100]"}},
			"network.dns.servers[0]", []string{"the API VIP (cluster.apiVIPs[0])", "list the upstream DNS servers"}},
		{"search domain listed twice", []edit{{"search: [example.com]", "search: [example.com, Example.com.]"}},
			"network.dns.search[1]", []string{"listed twice (also network.dns.search[0])"}},

		// nodeIP hints
		{"nodeIP address is a VIP", []edit{appendDoc("kubelet: {nodeIP: {addresses: [10.0.0.100]}}\n")},
			"kubelet.nodeIP.addresses[0]", []string{"the VIP at cluster.apiVIPs[0]", "give a node address"}},
		{"nodeIP address not on the node", []edit{appendDoc("kubelet: {nodeIP: {addresses: [10.0.0.9]}}\n")},
			"kubelet.nodeIP.addresses[0]", []string{"not an address of this node", "network.interfaces[*].addresses"}},
		{"nodeIP address from DHCP", []edit{addIface("    - {name: eth5, dhcp4: true}\n"), appendDoc("kubelet: {nodeIP: {addresses: [172.16.0.9]}}\n")}, "", nil},
		{"nodeIP address in the pod network", []edit{appendDoc("  podCIDRs: [10.244.0.0/16]\nkubelet: {nodeIP: {addresses: [10.244.0.9]}}\n")},
			"kubelet.nodeIP.addresses[0]", []string{"inside the pod network 10.244.0.0/16 (cluster.podCIDRs[0])"}},
		{"nodeIP subnet holds no node address", []edit{appendDoc("kubelet: {nodeIP: {subnets: [172.16.0.0/12]}}\n")},
			"kubelet.nodeIP.subnets[0]", []string{"holds no address of this node", "network.interfaces[*].addresses"}},
		{"nodeIP subnet in the service network", []edit{appendDoc("  serviceCIDRs: [10.96.0.0/12]\nkubelet: {nodeIP: {subnets: [10.96.0.0/16]}}\n")},
			"kubelet.nodeIP.subnets[0]", []string{"inside the service network 10.96.0.0/12 (cluster.serviceCIDRs[0])"}},

		// apiserver endpoints and peers
		{"apiserver listed twice", []edit{{lastLine, "  apiServers: [\"10.0.0.11:6443\", \"10.0.0.11:6443\"]\n"}},
			"cluster.apiServers[1]", []string{"listed twice (also cluster.apiServers[0])"}},
		{"apiserver is the API VIP on a control-plane node", []edit{{lastLine, "  apiServers: [\"10.0.0.100:6443\"]\n"}},
			"cluster.apiServers[0]", []string{"the API VIP (cluster.apiVIPs[0])", "forward to itself"}},
		{"apiserver is the API VIP on a worker", []edit{{lastLine, "  apiServers: [\"10.0.0.100:6443\"]\n" + workerJoin()}, {"role: control-plane", "role: worker"}}, "", nil},
		{"apiserver is the local proxy", []edit{{lastLine, "  apiServers: [\"127.0.0.1:7445\"]\n"}},
			"cluster.apiServers[0]", []string{"the API proxy's own frontend (cluster.apiProxy.port 7445)"}},
		{"apiserver in the service network", []edit{{lastLine, "  apiServers: [\"10.96.0.1:443\"]\n  serviceCIDRs: [10.96.0.0/12]\n"}},
			"cluster.apiServers[0]", []string{"inside the service network 10.96.0.0/12 (cluster.serviceCIDRs[0])"}},
		{"apiserver on this node", []edit{{lastLine, "  apiServers: [\"10.0.0.5:6443\"]\n"}}, "", nil},
		{"peer is the node itself", []edit{appendDoc("  peers: [10.0.0.5]\n")},
			"cluster.peers[0]", []string{"this node's own address (network.interfaces[0].addresses[0])", "peers are the other control-plane nodes"}},
		{"peer is a VIP", []edit{appendDoc("  peers: [10.0.0.101]\n")},
			"cluster.peers[0]", []string{"the VIP at cluster.ingressVIPs[0]"}},
		{"peer listed twice", []edit{appendDoc("  peers: [10.0.0.12, 10.0.0.12]\n")},
			"cluster.peers[1]", []string{"listed twice (also cluster.peers[0])"}},
		{"peer in the pod network", []edit{appendDoc("  podCIDRs: [10.244.0.0/16]\n  peers: [10.244.0.12]\n")},
			"cluster.peers[0]", []string{"inside the pod network 10.244.0.0/16 (cluster.podCIDRs[0])"}},

		// node API listener
		{"API listens on a VIP", []edit{appendDoc("api: {listen: \"10.0.0.100:50000\"}\n")},
			"api.listen", []string{"the VIP at cluster.apiVIPs[0]", "leave the host out"}},
		{"API listens on a foreign address", []edit{appendDoc("api: {listen: \"10.0.0.9:50000\"}\n")},
			"api.listen", []string{"not an address of this node"}},
		{"API on the kubelet's port", []edit{appendDoc("api: {listen: \":10250\"}\n")},
			"api.listen", []string{"port 10250 is the kubelet's"}},
		{"API on the apiserver's port", []edit{appendDoc("api: {listen: \"10.0.0.5:6443\"}\n")},
			"api.listen", []string{"port 6443 is the kube-apiserver's"}},
		{"API on the proxy's port", []edit{appendDoc("  apiProxy: {port: 7000}\napi: {listen: \":7000\"}\n")},
			"api.listen", []string{"port 7000 is the API proxy's (cluster.apiProxy.port)"}},

		{"API on the local DNS port", []edit{appendDoc("api: {listen: \":53\"}\n")},
			"api.listen", []string{"port 53 is the local DNS server's"}},
		{"API proxy on the kubelet's port", []edit{appendDoc("  apiProxy: {port: 10250}\n")},
			"cluster.apiProxy.port", []string{"10250 is the kubelet's port on 127.0.0.1", "pick another port"}},

		// services and kubelet flags
		{"VIP service without VIPs", []edit{{"  apiVIPs: [10.0.0.100]\n  ingressVIPs: [10.0.0.101]\n", ""}, appendDoc("services: {vip: true}\n")},
			"services.vip", []string{"cluster.apiVIPs and cluster.ingressVIPs are empty"}},
		{"API proxy service without apiservers", []edit{{lastLine, "services: {apiProxy: true}\n"}},
			"services.apiProxy", []string{"cluster.apiServers is empty"}},
		{"DNS service without a cluster domain", []edit{{"  domain: example.com\n", ""}, appendDoc("services: {dns: true}\n")},
			"services.dns", []string{"cluster.name and cluster.domain"}},
		{"kubelet --node-ip in extraArgs", []edit{appendDoc("kubelet: {extraArgs: {node-ip: 10.0.0.5}}\n")},
			"kubelet.extraArgs.node-ip", []string{"use kubelet.nodeIP.addresses"}},
		{"kubelet --hostname-override in extraArgs", []edit{appendDoc("kubelet: {extraArgs: {--hostname-override: x}}\n")},
			"kubelet.extraArgs.--hostname-override", []string{"the agent sets --hostname-override itself"}},
		{"ICMP probe of the node itself", []edit{{"  dns:\n", "  probes: [{icmp: 10.0.0.5}]\n  dns:\n"}},
			"network.probes[0].icmp", []string{"this node's own address (network.interfaces[0].addresses[0]), which always answers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := base
			for _, e := range tc.edits {
				if !strings.Contains(doc, e.old) {
					t.Fatalf("%q not found in the document", e.old)
				}
				doc = strings.Replace(doc, e.old, e.new, 1)
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
		next:
			for _, e := range errs {
				if e.Path != tc.path {
					continue
				}
				for _, h := range tc.has {
					if !strings.Contains(e.Msg, h) {
						continue next
					}
				}
				if e.Line == 0 {
					t.Errorf("error %q has no line number", e)
				}
				return
			}
			t.Fatalf("errors:\n%v\nwant %s: …%s…", err, tc.path, strings.Join(tc.has, "…"))
		})
	}
}

// TestDecodeErrorsAreFieldErrors: what the YAML decoder itself refuses is
// reported at its field, never as "BUG: … does not decode".
func TestDecodeErrorsAreFieldErrors(t *testing.T) {
	const head = "apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n"
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"duplicate key", head + "network:\n  interfaces:\n    - name: eth0\n      mtu: 1500\n      mtu: 9000\n",
			"network.interfaces[0].mtu: duplicate key (line 6 and line 7): keep one"},
		{"duplicate key on one line", head + "kubelet: {extraArgs: {v: 1, v: 2}}\n",
			"kubelet.extraArgs.v: duplicate key (line 3, columns 23 and 29): keep one (line 3)"},
		{"duplicate section", head + "services: {}\nservices: {}\n",
			"services: duplicate key (line 3 and line 4): keep one"},
		{"duplicate key in ignition", head + "ignition:\n  ignition: {version: 3.4.0}\n  storage: {}\n  storage: {}\n",
			"ignition.storage: duplicate key (line 5 and line 6): keep one"},
		{"bool tag on a non-bool", head + "network: {interfaces: [{name: a, dhcp4: !!bool maybe}]}\n",
			`network.interfaces[0].dhcp4: must be true or false, got "maybe" (line 3)`},
		{"int tag on a non-int", head + "network: {interfaces: [{name: a, mtu: !!int abc}]}\n",
			`network.interfaces[0].mtu: must be a whole number, got "abc" (line 3)`},
		{"list as a map key", head + "kubelet: {extraArgs: {[a]: b}}\n",
			`kubelet.extraArgs[""]: the key is a list: write a plain string key (line 3)`},
		{"bad tag in ignition", head + "ignition:\n  ignition: {version: 3.4.0}\n  x: !!int abc\n",
			`ignition.x: "abc" does not fit its tag !!int: remove the tag or fix the value (line 5)`},
		{"alias in ignition", head + "ignition:\n  ignition: {version: 3.4.0}\n  x: &a [1]\n  y: *a\n",
			"ignition.x: YAML anchors and aliases are not supported: write the value out (line 5)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Parse([]byte(tc.doc))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error %v (%T), want Errors", err, err)
			}
			for _, e := range errs {
				if e.Error() == tc.want {
					return
				}
			}
			t.Fatalf("errors:\n%v\nwant %s", err, tc.want)
		})
	}
}

// FuzzNoDecodeBug: whatever the input, Parse never reaches the decoder with
// something the structure check let through and the decoder refuses.
func FuzzNoDecodeBug(f *testing.F) {
	f.Add([]byte(base))
	f.Add([]byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\nnetwork: {interfaces: [{name: a, mtu: 1, mtu: 2}]}\n"))
	f.Add([]byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\nkubelet: {extraArgs: {[a]: !!int b}}\nignition: {x: !!float y}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, err := Parse(data)
		if err != nil && strings.Contains(err.Error(), "BUG") {
			t.Fatalf("%v\ninput:\n%s", err, data)
		}
	})
}
