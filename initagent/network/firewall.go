package network

import (
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/netfilter"
)

// Ports the firewall opens for what a node runs.
const (
	kubeAPIServerPort = 6443
	kubeletPort       = 10250
	etcdClientPort    = 2379
	etcdPeerPort      = 2380
	nodePortFirst     = 30000 // kube-apiserver's default --service-node-port-range
	nodePortLast      = 32767
)

// firewallOf is the inbound filter of a validated config: nil when
// network.firewall is not enabled. The openings follow what the node runs;
// a config without a role opens what a control plane needs.
func firewallOf(cfg *config.MachineConfig) *netfilter.Firewall {
	f := cfg.Network.Firewall
	if !f.Enabled {
		return nil
	}
	c := cfg.Cluster
	controlPlane := c.Role != "worker"
	pods := config.Prefixes(c.PodCIDRs, config.DefaultPodCIDR)
	hosts := func(addrs []string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range addrs {
			if a, err := netip.ParseAddr(s); err == nil {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		return out
	}
	peers := hosts(c.Peers)
	var apiHosts []string
	for _, ep := range c.APIServers {
		if h, _, err := net.SplitHostPort(ep); err == nil {
			apiHosts = append(apiHosts, h)
		}
	}
	vips := hosts(append(slices.Clone(c.APIVIPs), c.IngressVIPs...))
	tcp := func(name string, from []netip.Prefix, first, last uint16) netfilter.Opening {
		return netfilter.Opening{Name: name, Protocol: netfilter.TCP, From: from, Ports: []netfilter.PortRange{{First: first, Last: last}}}
	}
	var open []netfilter.Opening
	var dhcp4, dhcp6 bool
	for _, ifc := range cfg.Network.Interfaces {
		dhcp4, dhcp6 = dhcp4 || ifc.DHCP4, dhcp6 || ifc.DHCP6 != ""
	}
	if dhcp4 {
		open = append(open, netfilter.Opening{Name: "dhcpv4 client", Protocol: netfilter.UDP, Ports: []netfilter.PortRange{{First: 68}}})
	}
	if dhcp6 {
		open = append(open, netfilter.Opening{Name: "dhcpv6 client", Protocol: netfilter.UDP, Ports: []netfilter.PortRange{{First: 546}}})
	}
	if cfg.API.Enabled() {
		if _, port, err := net.SplitHostPort(cfg.API.Address()); err == nil {
			p, _ := strconv.ParseUint(port, 10, 16)
			open = append(open, tcp("node api", prefixList(f.ManagementNets), uint16(p), 0))
		}
	}
	if controlPlane {
		open = append(open,
			tcp("kube-apiserver", nil, kubeAPIServerPort, 0),
			tcp("etcd from control-plane peers", peers, etcdClientPort, etcdPeerPort))
	}
	// kubelet: the apiservers (control planes, and the VIPs they may use as
	// source) and pods (metrics-server).
	kubeletFrom := slices.Concat(peers, hosts(apiHosts), vips, pods)
	open = append(open, tcp("kubelet from control planes and pods", kubeletFrom, kubeletPort, 0))
	if len(vips) > 0 && len(peers) > 0 {
		open = append(open, netfilter.Opening{Name: "vrrp from peers", Protocol: netfilter.VRRP, From: peers})
	}
	for _, proto := range []string{netfilter.UDP, netfilter.TCP} {
		open = append(open, netfilter.Opening{Name: "dns from pods", Protocol: proto, From: pods, Ports: []netfilter.PortRange{{First: 53}}})
	}
	for _, proto := range []string{netfilter.TCP, netfilter.UDP} {
		open = append(open, netfilter.Opening{Name: "nodeports", Protocol: proto, Ports: []netfilter.PortRange{{First: nodePortFirst, Last: nodePortLast}}})
	}
	for i, r := range f.Rules {
		o := netfilter.Opening{Name: r.Name, Protocol: r.Protocol, From: prefixList(r.From), Interface: r.Interface}
		if o.Name == "" {
			o.Name = "network.firewall.rules[" + strconv.Itoa(i) + "]"
		}
		for _, p := range r.Ports {
			first, last, _ := config.PortRange(p)
			o.Ports = append(o.Ports, netfilter.PortRange{First: first, Last: last})
		}
		open = append(open, o)
	}
	return &netfilter.Firewall{Openings: open}
}

// prefixList parses validated prefixes; empty means any source (nil).
func prefixList(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
