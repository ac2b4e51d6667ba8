package nodeip

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ballast-os/ballast/initagent/config"
)

// ErrIPv4Compatible is returned for an IPv4-compatible IPv6 address
// (::a.b.c.d), which some tools treat as IPv4 and others as IPv6.
var ErrIPv4Compatible = errors.New("IPv4-compatible IPv6 address (::a.b.c.d, deprecated by RFC 4291)")

// HintsFromConfig takes the node IP hints and VIPs from the machine config.
// ExcludeInterfaces is not in the config; the caller fills it in. IPv4-mapped addresses become IPv4; IPv4-compatible
// ones are refused.
func HintsFromConfig(cfg *config.MachineConfig) (Hints, error) {
	var h Hints
	n := cfg.Kubelet.NodeIP
	switch n.Family {
	case "", "ipv4":
		h.Family = IPv4
	case "ipv6":
		h.Family = IPv6
	default:
		return h, fmt.Errorf("kubelet.nodeIP.family: %q: use ipv4 or ipv6", n.Family)
	}
	var err error
	seen := map[Family]netip.Addr{}
	for i, s := range n.Addresses {
		a, perr := parseAddr(s)
		if perr != nil {
			return h, fmt.Errorf("kubelet.nodeIP.addresses[%d]: %w", i, perr)
		}
		f := FamilyOf(a)
		if o, dup := seen[f]; dup {
			return h, fmt.Errorf("kubelet.nodeIP.addresses[%d]: %s: %s already names the %s address, give at most one per family", i, a, o, f)
		}
		seen[f] = a
		h.Addresses = append(h.Addresses, a)
	}
	for i, s := range n.Subnets {
		p, perr := netip.ParsePrefix(s)
		if perr != nil {
			return h, fmt.Errorf("kubelet.nodeIP.subnets[%d]: %q: %w (write e.g. 10.0.0.0/24)", i, s, perr)
		}
		if ipv4Compatible(p.Addr()) {
			return h, fmt.Errorf("kubelet.nodeIP.subnets[%d]: %s: %w", i, s, ErrIPv4Compatible)
		}
		h.Subnets = append(h.Subnets, normPrefix(p).Masked())
	}
	if h.APIVIPs, err = parseAddrs("cluster.apiVIPs", cfg.Cluster.APIVIPs); err != nil {
		return h, err
	}
	if h.IngressVIPs, err = parseAddrs("cluster.ingressVIPs", cfg.Cluster.IngressVIPs); err != nil {
		return h, err
	}
	for _, set := range []struct {
		field string
		in    []string
		out   *[]netip.Prefix
	}{{"cluster.podCIDRs", cfg.Cluster.PodCIDRs, &h.PodCIDRs}, {"cluster.serviceCIDRs", cfg.Cluster.ServiceCIDRs, &h.ServiceCIDRs}} {
		for i, s := range set.in {
			p, perr := netip.ParsePrefix(s)
			if perr != nil {
				return h, fmt.Errorf("%s[%d]: %q: %w", set.field, i, s, perr)
			}
			*set.out = append(*set.out, normPrefix(p).Masked())
		}
	}
	return h, nil
}

func parseAddrs(field string, in []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for i, s := range in {
		a, err := parseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// parseAddr parses an address; the family comes from netip, never from the
// characters in s.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, fmt.Errorf("%q: %w", s, err)
	}
	if a.Zone() != "" {
		return a, fmt.Errorf("%q: a node address has no zone", s)
	}
	if ipv4Compatible(a) {
		return a, fmt.Errorf("%s: %w: write %s or a real IPv6 address", s, ErrIPv4Compatible, netip.AddrFrom4([4]byte(a.AsSlice()[12:])))
	}
	return a.Unmap(), nil
}
