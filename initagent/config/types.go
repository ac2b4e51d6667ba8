// Package config reads and validates a node's MachineConfig: YAML or JSON,
// versioned, strict. Unknown fields are errors, every error names the field
// path and says what to do, and network values that are legal but dangerous
// (a gateway off every subnet, an IPv4-compatible IPv6 address, a VIP that is
// also a node address) are refused rather than fixed silently.
//
//	cfg, warnings, err := config.Parse(data)
package config

import "net/netip"

// APIVersion is the MachineConfig version this agent reads.
const APIVersion = "ballast.dev/v1alpha1"

// MachineConfig is the whole node configuration.
type MachineConfig struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	// Ignition is an Ignition v3.x config, applied once on first boot. Parsed
	// by coreos/ignition/v2; see Ignition().
	Ignition map[string]any `yaml:"ignition"`
	Network  Network        `yaml:"network"`
	Cluster  Cluster        `yaml:"cluster"`
	Kubelet  Kubelet        `yaml:"kubelet"`
	Services Services       `yaml:"services"`
	API      API            `yaml:"api"`

	ignitionJSON []byte // the ignition section as JSON, for the Ignition parser
}

// Network is the host network: interfaces with their addresses and routes,
// policy rules, DNS.
type Network struct {
	Interfaces []Interface `yaml:"interfaces"`
	Rules      []Rule      `yaml:"rules"`
	DNS        DNS         `yaml:"dns"`
	// Probes are checked after every change in addition to the gateways,
	// DNS servers and API servers the config implies.
	Probes      []Probe     `yaml:"probes"`
	Transaction Transaction `yaml:"transaction"`
	// Egress chooses the source address of pod traffic that leaves the
	// node for destinations outside the pod and service networks.
	Egress []Egress `yaml:"egress"`
	// Firewall filters traffic addressed to the node.
	Firewall Firewall `yaml:"firewall"`
}

// Firewall is the node's inbound filter. Enabled, it drops every packet to
// the node except replies, loopback, the ICMP that IPv4 and IPv6 need, and
// the openings: those derived from what the node runs (DHCP, the node API,
// the apiserver, kubelet and etcd from the control planes, VRRP from the
// peers, DNS from pods, NodePorts) and the declared rules.
type Firewall struct {
	Enabled bool `yaml:"enabled"`
	// ManagementNets may reach the node API; empty: any source.
	ManagementNets []string       `yaml:"managementNets"`
	Rules          []FirewallRule `yaml:"rules"`
}

// FirewallRule opens ports to sources.
type FirewallRule struct {
	Name      string   `yaml:"name"`      // why: shown in status and the ruleset
	Protocol  string   `yaml:"protocol"`  // tcp or udp
	Ports     []string `yaml:"ports"`     // "443" or "8000-8100"
	From      []string `yaml:"from"`      // addresses or prefixes; empty: any
	Interface string   `yaml:"interface"` // incoming interface; empty: any
}

// Egress is one pod egress rule; the first rule that matches a packet
// (by destination and outgoing interface) decides its source address. With
// no rules, pod traffic masquerades on every interface; with rules, pod
// traffic that none matches leaves with its pod address.
type Egress struct {
	To        string `yaml:"to"`        // destination prefix; empty: any destination of the source's family
	Interface string `yaml:"interface"` // outgoing interface; empty: any
	// Source is an address of this node (a static address or a cluster
	// VIP) pod traffic leaves with, or "masquerade" for the outgoing
	// interface's primary address.
	Source string `yaml:"source"`
}

// EgressMasquerade is Egress.Source for the outgoing interface's address.
const EgressMasquerade = "masquerade"

// Probe is a user-defined connectivity check; exactly one field is set.
type Probe struct {
	TCP  string `yaml:"tcp"`  // host:port accepts a connection
	HTTP string `yaml:"http"` // http(s) URL answers 2xx–3xx
	ICMP string `yaml:"icmp"` // address answers echo
}

// Transaction tunes how long a change may take to prove itself.
type Transaction struct {
	DeadlineSeconds     int `yaml:"deadlineSeconds"`     // apply plus probes; 0 means 10
	ProbeTimeoutSeconds int `yaml:"probeTimeoutSeconds"` // each probe; 0 means 3
}

// Interface types.
const (
	TypeEthernet = "ethernet"
	TypeBond     = "bond"
	TypeVLAN     = "vlan"
	TypeBridge   = "bridge"
	TypeDummy    = "dummy"
)

// Interface is one link: a physical NIC (by name or permanent MAC) or a
// virtual one the agent creates.
type Interface struct {
	Name string `yaml:"name"` // kernel name; for ethernet with mac set, the name the NIC is renamed to (optional)
	MAC  string `yaml:"mac"`  // permanent MAC selecting a physical NIC
	Type string `yaml:"type"` // ethernet (default), bond, vlan, bridge, dummy
	// State is "up" (default) or "down".
	State string `yaml:"state"`
	MTU   int    `yaml:"mtu"` // 0 keeps the kernel's
	// Managed is "additive" (default: addresses and routes the agent did not
	// create are left alone) or "exclusive" (they are removed).
	Managed string  `yaml:"managed"`
	Bond    *Bond   `yaml:"bond"`
	VLAN    *VLAN   `yaml:"vlan"`
	Bridge  *Bridge `yaml:"bridge"`

	Addresses []Address `yaml:"addresses"`
	Routes    []Route   `yaml:"routes"`
	DHCP4     bool      `yaml:"dhcp4"`
	// DHCP6 is "" (off), "stateful" or "stateless" (information-request only).
	DHCP6   string  `yaml:"dhcp6"`
	SLAAC   *bool   `yaml:"slaac"` // nil keeps the kernel's default
	Sysctls Sysctls `yaml:"sysctls"`
}

// Bond settings; see the kernel's bonding.rst.
type Bond struct {
	Mode     string   `yaml:"mode"`     // balance-rr, active-backup, balance-xor, broadcast, 802.3ad, balance-tlb, balance-alb
	MIIMon   int      `yaml:"miimon"`   // ms; 0 means 100
	LACPRate string   `yaml:"lacpRate"` // slow (default) or fast; 802.3ad only
	Members  []string `yaml:"members"`  // interface names
}

// VLAN settings.
type VLAN struct {
	ID   int    `yaml:"id"`   // 1–4094
	Link string `yaml:"link"` // parent interface or bond
}

// Bridge settings.
type Bridge struct {
	Members []string `yaml:"members"`
}

// Address is an address with its prefix length ("10.0.0.5/24"), optionally
// with lifetimes (seconds; 0 means forever).
type Address struct {
	Address           string `yaml:"address"`
	ValidLifetime     int    `yaml:"validLifetime"`
	PreferredLifetime int    `yaml:"preferredLifetime"`
}

// Route is a static route.
type Route struct {
	To     string `yaml:"to"`     // destination prefix; "default" means 0.0.0.0/0 or ::/0 by the family of via
	Via    string `yaml:"via"`    // gateway; may be an IPv6 link-local address
	Src    string `yaml:"src"`    // preferred source address
	Metric int    `yaml:"metric"` // priority
	Table  int    `yaml:"table"`  // 0 means main (254)
	Scope  string `yaml:"scope"`  // global (default), link, host
	OnLink bool   `yaml:"onlink"` // the gateway is reachable on the link though outside every subnet
}

// Rule is a policy routing rule (`ip rule`).
type Rule struct {
	Priority int    `yaml:"priority"`
	From     string `yaml:"from"`
	To       string `yaml:"to"`
	IIF      string `yaml:"iif"`
	OIF      string `yaml:"oif"`
	FWMark   uint32 `yaml:"fwmark"`
	Table    int    `yaml:"table"`
}

// Sysctls are per-interface kernel settings; nil keeps the kernel's.
type Sysctls struct {
	Forwarding  *bool `yaml:"forwarding"`  // net.ipv4.conf.X.forwarding and net.ipv6.conf.X.forwarding
	AcceptRA    *int  `yaml:"acceptRA"`    // 0, 1, or 2 (accept even when forwarding)
	RPFilter    *int  `yaml:"rpFilter"`    // 0 off, 1 strict, 2 loose
	DisableIPv6 *bool `yaml:"disableIPv6"` // net.ipv6.conf.X.disable_ipv6
}

// DNS is the node's resolver configuration (upstreams of the local DNS server).
type DNS struct {
	Servers []string `yaml:"servers"`
	Search  []string `yaml:"search"`
}

// Cluster describes the Kubernetes cluster the node belongs to.
type Cluster struct {
	Name        string   `yaml:"name"`
	Domain      string   `yaml:"domain"`
	Role        string   `yaml:"role"` // control-plane or worker
	APIVIPs     []string `yaml:"apiVIPs"`
	IngressVIPs []string `yaml:"ingressVIPs"`
	APIServers  []string `yaml:"apiServers"` // host:port of kube-apiservers
	Peers       []string `yaml:"peers"`      // addresses of the other control-plane nodes
	// PodCIDRs and ServiceCIDRs are the cluster's pod and service networks:
	// never a node address, and allowed to use the node's DNS resolver.
	PodCIDRs     []string `yaml:"podCIDRs"`
	ServiceCIDRs []string `yaml:"serviceCIDRs"`
	// VIP tunes the VIP speaker that floats apiVIPs and ingressVIPs.
	VIP VIP `yaml:"vip"`
	// APIProxy tunes the local API proxy in front of apiServers.
	APIProxy APIProxy `yaml:"apiProxy"`
	// CA is the cluster's Kubernetes CA. Control-plane nodes sign the
	// cluster's certificates with it (certificate and key); without it a
	// lone control-plane node creates one. Workers carry the certificate
	// only: it is how they trust the apiservers.
	CA ClusterCA `yaml:"ca"`
	// EtcdCA, FrontProxyCA and ServiceAccountKey (PEM) are shared by every
	// control-plane node, each signing its own certificates with them:
	// required on a control plane with peers, optional on a lone one.
	EtcdCA            ClusterCA `yaml:"etcdCA"`
	FrontProxyCA      ClusterCA `yaml:"frontProxyCA"`
	ServiceAccountKey string    `yaml:"serviceAccountKey"`
	// Token is a kubeadm bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}) the
	// bootstrapping control plane creates; workers join with it. Required
	// on workers and on control planes with peers.
	Token string `yaml:"token"`
}

// ClusterCA is a CA certificate and its key, inline PEM.
type ClusterCA struct {
	Certificate string `yaml:"certificate"`
	Key         string `yaml:"key"`
}

// VIP tunes the VRRPv3 speaker. Peers come from cluster.peers: with peers
// the speaker talks unicast and ignores everyone else; without, multicast.
type VIP struct {
	// Interface carries the adverts and the VIPs; empty: the interface
	// whose subnet holds the VIP.
	Interface string `yaml:"interface"`
	// Priority of this node, 1–254; 0 means 100. A master at priority 1
	// yields to any node with a higher one (a node whose API proxy reaches
	// no apiserver advertises 1), so 1 makes a node the last resort.
	Priority int `yaml:"priority"`
	// Preempt lets a higher-priority node take the VIPs from a healthy
	// master; off by default, so the VIPs move only when a master fails
	// or yields.
	Preempt bool `yaml:"preempt"`
	// PreemptDelaySeconds keeps a freshly booted node from preempting.
	PreemptDelaySeconds int `yaml:"preemptDelaySeconds"`
	// APIVRID and IngressVRID, 1–255; 0 derives them from the cluster name.
	APIVRID     int `yaml:"apiVRID"`
	IngressVRID int `yaml:"ingressVRID"`
	// AdvertIntervalMs is the advert interval, a multiple of 10 from 10 to
	// 40950; 0 means the speaker's default (100 ms).
	AdvertIntervalMs int `yaml:"advertIntervalMs"`
	// IngressCheck is the health the ingress VIP follows; empty: none.
	IngressCheck HealthCheck `yaml:"ingressCheck"`
}

// HealthCheck is an HTTP or TCP check with what its failure costs.
type HealthCheck struct {
	HTTP string `yaml:"http"` // URL answering 2xx
	TCP  string `yaml:"tcp"`  // host:port accepting connections
	// Weight lowers the priority while the check fails; Fault gives the VIP up instead.
	Weight int  `yaml:"weight"`
	Fault  bool `yaml:"fault"`
}

// APIProxy tunes the local API proxy.
type APIProxy struct {
	// Port of the node-local frontend on 127.0.0.1; 0 means 7445.
	Port int `yaml:"port"`
	// Balance is round-robin (default) or least-conn.
	Balance string `yaml:"balance"`
	// CheckIntervalMs between /readyz checks of each apiserver; 0 means 1000.
	CheckIntervalMs int `yaml:"checkIntervalMs"`
	// PinnedSPKI are hex sha256 digests of the apiservers' public keys,
	// trusted by the health checks until the cluster CA is known.
	PinnedSPKI []string `yaml:"pinnedSPKI"`
}

// Kubelet settings that the agent decides for kubelet.
type Kubelet struct {
	NodeIP    NodeIP            `yaml:"nodeIP"`
	ExtraArgs map[string]string `yaml:"extraArgs"`
}

// NodeIP hints for choosing the node's address.
type NodeIP struct {
	Addresses []string `yaml:"addresses"` // explicit, at most one per family
	Subnets   []string `yaml:"subnets"`   // valid subnets, in order of preference
	Family    string   `yaml:"family"`    // ipv4 or ipv6: which goes first
}

// Services switches the agent's daemons; nil means the role's default.
type Services struct {
	DNS      *bool `yaml:"dns"`
	APIProxy *bool `yaml:"apiProxy"`
	VIP      *bool `yaml:"vip"`
}

// The cluster's networks when the config names none (kubeadm's and
// flannel's usual choices).
var (
	DefaultPodCIDR     = netip.MustParsePrefix("10.244.0.0/16")
	DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
)

// Prefixes parses a validated list of CIDRs (masked); an empty list is def.
func Prefixes(cidrs []string, def netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range cidrs {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	if len(out) == 0 {
		out = []netip.Prefix{def}
	}
	return out
}
