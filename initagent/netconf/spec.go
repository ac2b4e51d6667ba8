// Package netconf applies a desired network state to the kernel with
// netlink, touching only what differs: applying the same Spec twice makes no
// changes the second time. Addresses, routes and rules it did not create are
// left alone unless an interface is declared exclusive.
//
//	spec, err := netconf.FromConfig(cfg.Network)
//	res, err := (&netconf.Applier{Log: log}).Apply(ctx, spec)
package netconf

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ballast-os/ballast/initagent/config"
)

// Spec is the desired network state.
type Spec struct {
	Links []LinkSpec
	Rules []RuleSpec
}

// LinkSpec is one interface and everything configured on it.
type LinkSpec struct {
	Name string           // kernel name (after an optional rename)
	MAC  net.HardwareAddr // select a physical NIC by permanent MAC
	Kind string           // config.TypeEthernet, TypeBond, …
	Down bool
	MTU  int // 0 keeps the kernel's
	// Exclusive removes addresses and routes that nobody declared.
	Exclusive bool
	Bond      *BondSpec
	VLANID    int    // vlan only
	VLANLink  string // vlan only: parent
	Master    string // bond or bridge this link is a member of

	Addresses []AddrSpec
	Routes    []RouteSpec
	Sysctls   config.Sysctls
	SLAAC     *bool
}

// BondSpec are the bond's attributes.
type BondSpec struct {
	Mode     string
	MIIMon   int
	LACPRate string
}

// AddrSpec is one address; zero lifetimes mean forever.
type AddrSpec struct {
	Prefix    netip.Prefix
	Valid     time.Duration
	Preferred time.Duration
}

// RouteSpec is one route through its link.
type RouteSpec struct {
	Dst    netip.Prefix
	Gw     netip.Addr // invalid: a direct (link-scope) route
	Src    netip.Addr
	Metric int
	Table  int // 0 means main
	Scope  string
	OnLink bool
}

// RuleSpec is one policy routing rule.
type RuleSpec struct {
	Priority int
	From, To netip.Prefix
	IIF, OIF string
	FWMark   uint32
	Table    int
	Family   int // 4 or 6
}

// FromConfig turns a validated config.Network into a Spec.
func FromConfig(n config.Network) (Spec, error) {
	var s Spec
	members := map[string]string{}
	for _, ifc := range n.Interfaces {
		if ifc.Bond != nil {
			for _, m := range ifc.Bond.Members {
				members[m] = ifc.Name
			}
		}
		if ifc.Bridge != nil {
			for _, m := range ifc.Bridge.Members {
				members[m] = ifc.Name
			}
		}
	}
	for i, ifc := range n.Interfaces {
		l := LinkSpec{
			Name: ifc.Name, Kind: ifc.Type, Down: ifc.State == "down", MTU: ifc.MTU,
			Exclusive: ifc.Managed == "exclusive", Master: members[ifc.Name],
			Sysctls: ifc.Sysctls, SLAAC: ifc.SLAAC,
		}
		if l.Kind == "" {
			l.Kind = config.TypeEthernet
		}
		if ifc.MAC != "" {
			mac, err := net.ParseMAC(ifc.MAC)
			if err != nil {
				return Spec{}, fmt.Errorf("network.interfaces[%d].mac: %w", i, err)
			}
			l.MAC = mac
		}
		if ifc.Bond != nil {
			l.Bond = &BondSpec{Mode: ifc.Bond.Mode, MIIMon: ifc.Bond.MIIMon, LACPRate: ifc.Bond.LACPRate}
			if l.Bond.MIIMon == 0 {
				l.Bond.MIIMon = 100
			}
			if l.Bond.Mode == "" {
				l.Bond.Mode = "active-backup"
			}
			if l.Bond.Mode == "802.3ad" && l.Bond.LACPRate == "" {
				l.Bond.LACPRate = "slow" // the kernel's default, made explicit so it compares
			}
		}
		if ifc.VLAN != nil {
			l.VLANID, l.VLANLink = ifc.VLAN.ID, ifc.VLAN.Link
		}
		for j, a := range ifc.Addresses {
			p, err := netip.ParsePrefix(a.Address)
			if err != nil {
				return Spec{}, fmt.Errorf("network.interfaces[%d].addresses[%d]: %w", i, j, err)
			}
			l.Addresses = append(l.Addresses, AddrSpec{Prefix: p,
				Valid: time.Duration(a.ValidLifetime) * time.Second, Preferred: time.Duration(a.PreferredLifetime) * time.Second})
		}
		for j, r := range ifc.Routes {
			rs, err := routeFromConfig(r)
			if err != nil {
				return Spec{}, fmt.Errorf("network.interfaces[%d].routes[%d]: %w", i, j, err)
			}
			l.Routes = append(l.Routes, rs)
		}
		s.Links = append(s.Links, l)
	}
	for i, r := range n.Rules {
		rs := RuleSpec{Priority: r.Priority, IIF: r.IIF, OIF: r.OIF, FWMark: r.FWMark, Table: r.Table, Family: 4}
		for _, f := range []struct {
			s   string
			dst *netip.Prefix
		}{{r.From, &rs.From}, {r.To, &rs.To}} {
			if f.s == "" {
				continue
			}
			p, err := netip.ParsePrefix(f.s)
			if err != nil {
				return Spec{}, fmt.Errorf("network.rules[%d]: %w", i, err)
			}
			*f.dst = p
			if p.Addr().Is6() {
				rs.Family = 6
			}
		}
		s.Rules = append(s.Rules, rs)
	}
	return s, nil
}

func routeFromConfig(r config.Route) (RouteSpec, error) {
	rs := RouteSpec{Metric: r.Metric, Table: r.Table, Scope: r.Scope, OnLink: r.OnLink}
	var err error
	if r.Via != "" {
		if rs.Gw, err = netip.ParseAddr(r.Via); err != nil {
			return rs, err
		}
	}
	if r.Src != "" {
		if rs.Src, err = netip.ParseAddr(r.Src); err != nil {
			return rs, err
		}
	}
	if r.To == "default" {
		rs.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if rs.Gw.Is6() {
			rs.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return rs, nil
	}
	rs.Dst, err = netip.ParsePrefix(r.To)
	return rs, err
}
