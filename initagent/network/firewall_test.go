package network

import (
	"strings"
	"testing"

	"github.com/ballast-os/ballast/initagent/config"
)

func TestNetfilterFromConfig(t *testing.T) {
	parse := func(extraNetwork, role string) *config.MachineConfig {
		t.Helper()
		cfg, _, err := config.Parse([]byte(`apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - {name: eth0, addresses: [10.0.0.5/24], dhcp6: stateless}
` + extraNetwork + `
cluster:
  role: ` + role + `
  apiVIPs: [10.0.0.100]
  apiServers: ["10.0.0.6:6443"]
  podCIDRs: [10.244.0.0/16]
`))
		if err != nil {
			t.Fatal(err)
		}
		// Peers make validation ask for the cluster's shared secrets,
		// which have nothing to do with the firewall.
		cfg.Cluster.Peers = []string{"10.0.0.6", "10.0.0.7"}
		return cfg
	}
	describe := func(cfg *config.MachineConfig) (string, string) {
		d, err := FromConfig(cfg, "test")
		if err != nil {
			t.Fatal(err)
		}
		fw, eg := d.Netfilter.Describe()
		return strings.Join(fw, "\n"), strings.Join(eg, "\n")
	}

	fw, eg := describe(parse("", "control-plane"))
	if fw != "" {
		t.Errorf("firewall without network.firewall.enabled:\n%s", fw)
	}
	if eg != "masquerade" {
		t.Errorf("default egress %q, want masquerade", eg)
	}

	fw, eg = describe(parse(`  egress:
    - {to: 192.0.2.0/24, source: 10.0.0.5}
    - {source: masquerade, interface: eth0}
  firewall:
    enabled: true
    managementNets: [10.9.0.0/16]
    rules:
      - {name: node-exporter, protocol: tcp, ports: ["9100"], from: [10.9.0.0/16]}`, "control-plane"))
	for _, want := range []string{
		"dhcpv6 client: udp 546",
		"kube-apiserver: tcp 6443",
		"etcd from control-plane peers: tcp 2379-2380 from 10.0.0.6/32,10.0.0.7/32",
		"kubelet from control planes and pods: tcp 10250 from 10.0.0.6/32,10.0.0.7/32,10.0.0.6/32,10.0.0.100/32,10.244.0.0/16",
		"vrrp from peers: vrrp from 10.0.0.6/32,10.0.0.7/32",
		"dns from pods: udp 53 from 10.244.0.0/16",
		"nodeports: tcp 30000-32767",
		"node-exporter: tcp 9100 from 10.9.0.0/16",
	} {
		if !strings.Contains(fw, want+"\n") && !strings.HasSuffix(fw, want) {
			t.Errorf("control-plane firewall lacks %q:\n%s", want, fw)
		}
	}
	if strings.Contains(fw, "dhcpv4") || strings.Contains(fw, "node api") {
		t.Errorf("firewall opens DHCPv4 (not used) or the node API (not enabled):\n%s", fw)
	}
	if eg != "to 192.0.2.0/24 snat to 10.0.0.5\nvia eth0 masquerade" {
		t.Errorf("egress:\n%s", eg)
	}

	worker := parse("  firewall: {enabled: true}", "control-plane")
	worker.Cluster.Role = "worker" // a worker's join secrets are beside the point here
	fw, _ = describe(worker)
	if strings.Contains(fw, "6443") || strings.Contains(fw, "etcd") {
		t.Errorf("worker firewall opens control-plane ports:\n%s", fw)
	}
}
