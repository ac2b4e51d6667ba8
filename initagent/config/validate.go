package config

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

type validator struct {
	cfg      *MachineConfig
	errs     Errors
	warnings []Warning

	// filled while walking interfaces
	names    map[string]int // interface name → index
	nodeAddr []nodeAddr
}

type nodeAddr struct {
	prefix netip.Prefix
	iface  int
	path   string
}

func (v *validator) fail(path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) warn(path, format string, args ...any) {
	v.warnings = append(v.warnings, Warning{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) validate() {
	c := v.cfg
	switch {
	case c.APIVersion == "":
		v.fail("apiVersion", "missing: set it to %q", APIVersion)
	case c.APIVersion != APIVersion:
		v.fail("apiVersion", "%q is not supported by this agent: use %q", c.APIVersion, APIVersion)
	}
	if c.Kind != "MachineConfig" {
		v.fail("kind", "must be \"MachineConfig\", got %q", c.Kind)
	}
	v.ignition()
	v.interfaces()
	v.rules()
	v.dns()
	v.probes()
	v.cluster()
	v.egress()
	v.firewall()
	v.kubelet()
	v.api()
	v.clusterSecrets()
	v.crossValidate()
}

// ipv4Compatible reports an IPv4-compatible IPv6 address (::a.b.c.d),
// deprecated by RFC 4291 §2.5.5.1; :: and ::1 are not.
func ipv4Compatible(a netip.Addr) bool {
	if !a.Is6() || a.Is4In6() {
		return false
	}
	b := a.As16()
	for _, x := range b[:12] {
		if x != 0 {
			return false
		}
	}
	return !(b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] <= 1)
}

const compatMsg = "is an IPv4-compatible IPv6 address (::a.b.c.d), deprecated by RFC 4291 and treated as IPv4 by some tools and IPv6 by others: write the IPv4 address %s, or a real IPv6 address"

// addr parses an address at path, normalising IPv4-mapped IPv6 to IPv4 (in
// place, with a warning) and refusing IPv4-compatible IPv6.
func (v *validator) addr(path string, s *string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(*s)
	if err != nil {
		v.fail(path, "%q is not an IP address", *s)
		return netip.Addr{}, false
	}
	if a.Zone() != "" {
		v.fail(path, "%q has a zone: name the interface in the interface section instead", *s)
		return netip.Addr{}, false
	}
	if ipv4Compatible(a) {
		b := a.As16()
		v.fail(path, "%s "+compatMsg, *s, netip.AddrFrom4([4]byte(b[12:])))
		return netip.Addr{}, false
	}
	if a.Is4In6() {
		n := a.Unmap()
		v.warn(path, "IPv4-mapped address %s normalised to %s", *s, n)
		*s = n.String()
		a = n
	}
	return a, true
}

// prefix parses "addr/len" the same way; the address keeps its host bits.
func (v *validator) prefix(path string, s *string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(*s)
	if err != nil {
		if _, aerr := netip.ParseAddr(*s); aerr == nil {
			v.fail(path, "%q has no prefix length: write it as %s/24 (IPv4) or %s/64 (IPv6) with the subnet's real length", *s, *s, *s)
		} else {
			v.fail(path, "%q is not an address with a prefix length (e.g. 10.0.0.5/24)", *s)
		}
		return netip.Prefix{}, false
	}
	a := p.Addr()
	if ipv4Compatible(a) {
		b := a.As16()
		v.fail(path, "%s "+compatMsg, *s, netip.AddrFrom4([4]byte(b[12:])))
		return netip.Prefix{}, false
	}
	if a.Is4In6() {
		if p.Bits() < 96 {
			v.fail(path, "%s is IPv4-mapped but its prefix length %d is shorter than 96: write the IPv4 form", *s, p.Bits())
			return netip.Prefix{}, false
		}
		n := netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		v.warn(path, "IPv4-mapped prefix %s normalised to %s", *s, n)
		*s = n.String()
		p = n
	}
	return p, true
}

var ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,15}$`)

func (v *validator) interfaces() {
	ifs := v.cfg.Network.Interfaces
	v.names = map[string]int{}
	macs := map[string]int{}
	bondOf := map[string]string{} // member → bond
	for i := range ifs {
		ifc := &ifs[i]
		p := fmt.Sprintf("network.interfaces[%d]", i)
		if ifc.Type == "" {
			ifc.Type = TypeEthernet
		}
		switch ifc.Type {
		case TypeEthernet, TypeBond, TypeVLAN, TypeBridge, TypeDummy:
		default:
			v.fail(p+".type", "%q is not a known type: use ethernet, bond, vlan, bridge or dummy", ifc.Type)
		}
		switch {
		case ifc.Name == "" && ifc.MAC == "":
			v.fail(p, "neither name nor mac: select the interface by its kernel name or its permanent MAC")
		case ifc.Name == "" && ifc.Type != TypeEthernet:
			v.fail(p+".name", "missing: a %s interface is created by the agent and needs a name", ifc.Type)
		case ifc.Name != "" && (!ifnameRE.MatchString(ifc.Name) || ifc.Name == "." || ifc.Name == ".."):
			v.fail(p+".name", "%q is not a valid interface name (1–15 letters, digits, '-', '_', '.', ':')", ifc.Name)
		}
		if ifc.Name != "" {
			if j, dup := v.names[ifc.Name]; dup {
				v.fail(p+".name", "%q is already declared at network.interfaces[%d]: merge the two entries", ifc.Name, j)
			} else {
				v.names[ifc.Name] = i
			}
		}
		if ifc.MAC != "" {
			hw, err := net.ParseMAC(ifc.MAC)
			if err != nil || len(hw) != 6 {
				v.fail(p+".mac", "%q is not a 6-byte MAC address (e.g. 52:54:00:12:34:56)", ifc.MAC)
			} else {
				ifc.MAC = hw.String()
				if j, dup := macs[ifc.MAC]; dup {
					v.fail(p+".mac", "%s is already selected by network.interfaces[%d]: one entry per NIC", ifc.MAC, j)
				} else {
					macs[ifc.MAC] = i
				}
				if ifc.Type != TypeEthernet {
					v.fail(p+".mac", "only ethernet interfaces are selected by MAC; a %s is created by name", ifc.Type)
				}
			}
		}
		switch ifc.State {
		case "", "up", "down":
		default:
			v.fail(p+".state", "%q: use up or down", ifc.State)
		}
		switch ifc.Managed {
		case "", "additive", "exclusive":
		default:
			v.fail(p+".managed", "%q: use additive (leave foreign addresses and routes alone) or exclusive (remove them)", ifc.Managed)
		}
		if ifc.Name == "" && (ifc.DHCP4 || ifc.DHCP6 != "") {
			v.fail(p+".name", "missing: an interface with DHCP needs a name (the NIC selected by mac is renamed to it)")
		}
		v.kindSection(p, ifc, bondOf)
		switch ifc.DHCP6 {
		case "", "stateful", "stateless":
		default:
			v.fail(p+".dhcp6", "%q: use stateful, stateless, or leave it out", ifc.DHCP6)
		}
		v.sysctls(p+".sysctls", ifc.Sysctls)
		v.addresses(p, i, ifc)
		if ifc.MTU != 0 {
			switch {
			case ifc.MTU < 68 || ifc.MTU > 65535:
				v.fail(p+".mtu", "%d is outside 68–65535", ifc.MTU)
			case ifc.MTU < 1280 && usesIPv6(ifc):
				v.fail(p+".mtu", "%d is below 1280, the minimum for IPv6 (RFC 8200): raise it, or set sysctls.disableIPv6: true", ifc.MTU)
			}
		}
	}
	// Overlaps between interfaces make the kernel's choice of egress interface arbitrary.
	for a := range v.nodeAddr {
		for b := a + 1; b < len(v.nodeAddr); b++ {
			x, y := v.nodeAddr[a], v.nodeAddr[b]
			if x.iface != y.iface && x.prefix.Overlaps(y.prefix) {
				v.fail(y.path, "%s overlaps %s at %s on another interface: one subnet belongs on one interface", y.prefix, x.prefix, x.path)
			}
		}
	}
	for i := range ifs {
		v.routes(fmt.Sprintf("network.interfaces[%d]", i), i, &ifs[i])
	}
	for i := range ifs {
		ifc := &ifs[i]
		p := fmt.Sprintf("network.interfaces[%d]", i)
		if ifc.VLAN != nil && ifc.VLAN.Link != "" {
			if _, ok := v.names[ifc.VLAN.Link]; !ok {
				v.fail(p+".vlan.link", "%q is not declared: add it to network.interfaces", ifc.VLAN.Link)
			}
		}
	}
}

func usesIPv6(ifc *Interface) bool {
	if ifc.Sysctls.DisableIPv6 != nil && *ifc.Sysctls.DisableIPv6 {
		return false
	}
	if ifc.DHCP6 != "" || (ifc.SLAAC != nil && *ifc.SLAAC) {
		return true
	}
	for _, a := range ifc.Addresses {
		if p, err := netip.ParsePrefix(a.Address); err == nil && p.Addr().Is6() && !p.Addr().Is4In6() {
			return true
		}
	}
	return false
}

var bondModes = map[string]bool{"balance-rr": true, "active-backup": true, "balance-xor": true, "broadcast": true,
	"802.3ad": true, "balance-tlb": true, "balance-alb": true}

func (v *validator) kindSection(p string, ifc *Interface, bondOf map[string]string) {
	if ifc.Bond != nil && ifc.Type != TypeBond {
		v.fail(p+".bond", "only allowed with type: bond")
	}
	if ifc.VLAN != nil && ifc.Type != TypeVLAN {
		v.fail(p+".vlan", "only allowed with type: vlan")
	}
	if ifc.Bridge != nil && ifc.Type != TypeBridge {
		v.fail(p+".bridge", "only allowed with type: bridge")
	}
	switch ifc.Type {
	case TypeBond:
		b := ifc.Bond
		if b == nil || len(b.Members) == 0 {
			v.fail(p+".bond.members", "a bond without members carries no traffic: list its member interfaces")
			return
		}
		if b.Mode == "" {
			b.Mode = "active-backup"
		}
		if !bondModes[b.Mode] {
			v.fail(p+".bond.mode", "%q is not a bonding mode: use one of balance-rr, active-backup, balance-xor, broadcast, 802.3ad, balance-tlb, balance-alb", b.Mode)
		}
		switch b.LACPRate {
		case "", "slow", "fast":
			if b.LACPRate != "" && b.Mode != "802.3ad" {
				v.fail(p+".bond.lacpRate", "only applies to mode 802.3ad")
			}
		default:
			v.fail(p+".bond.lacpRate", "%q: use slow or fast", b.LACPRate)
		}
		if b.MIIMon < 0 {
			v.fail(p+".bond.miimon", "%d must be 0 (default 100 ms) or positive", b.MIIMon)
		}
		for j, m := range b.Members {
			mp := fmt.Sprintf("%s.bond.members[%d]", p, j)
			if m == ifc.Name {
				v.fail(mp, "a bond cannot be its own member")
			}
			if other, dup := bondOf[m]; dup && other == ifc.Name {
				// reported by crossValidate: listed twice
			} else if dup {
				v.fail(mp, "%q is already a member of bond %q: an interface can be in one bond only", m, other)
			} else {
				bondOf[m] = ifc.Name
			}
		}
	case TypeVLAN:
		vl := ifc.VLAN
		if vl == nil {
			v.fail(p+".vlan", "missing: a vlan interface needs vlan.id and vlan.link")
			return
		}
		if vl.ID < 1 || vl.ID > 4094 {
			v.fail(p+".vlan.id", "%d is outside 1–4094 (0 and 4095 are reserved by IEEE 802.1Q)", vl.ID)
		}
		if vl.Link == "" {
			v.fail(p+".vlan.link", "missing: name the parent interface or bond")
		}
	case TypeBridge:
		if ifc.Bridge != nil {
			for j, m := range ifc.Bridge.Members {
				if m == ifc.Name {
					v.fail(fmt.Sprintf("%s.bridge.members[%d]", p, j), "a bridge cannot be its own member")
				}
			}
		}
	}
}

func (v *validator) sysctls(p string, s Sysctls) {
	if s.AcceptRA != nil && (*s.AcceptRA < 0 || *s.AcceptRA > 2) {
		v.fail(p+".acceptRA", "%d: use 0 (off), 1 (on unless forwarding) or 2 (on even when forwarding)", *s.AcceptRA)
	}
	if s.RPFilter != nil && (*s.RPFilter < 0 || *s.RPFilter > 2) {
		v.fail(p+".rpFilter", "%d: use 0 (off), 1 (strict) or 2 (loose)", *s.RPFilter)
	}
}

func (v *validator) addresses(p string, i int, ifc *Interface) {
	var mine []nodeAddr
	for j := range ifc.Addresses {
		a := &ifc.Addresses[j]
		ap := fmt.Sprintf("%s.addresses[%d]", p, j)
		pfx, ok := v.prefix(ap, &a.Address)
		if !ok {
			continue
		}
		addr := pfx.Addr()
		switch {
		case addr.IsUnspecified() || addr.IsLoopback() || addr.IsMulticast():
			v.fail(ap, "%s cannot be a node address (unspecified, loopback or multicast)", addr)
			continue
		case addr.Is4() && pfx.Bits() < 31 && addr == pfx.Masked().Addr():
			v.fail(ap, "%s is the network address of its subnet: use a host address", pfx)
			continue
		case addr.Is4() && pfx.Bits() < 31 && addr == lastAddr(pfx):
			v.fail(ap, "%s is the broadcast address of its subnet: use a host address", pfx)
			continue
		}
		if a.ValidLifetime < 0 || a.PreferredLifetime < 0 {
			v.fail(ap, "lifetimes are seconds and cannot be negative")
		} else if a.ValidLifetime > 0 && a.PreferredLifetime > a.ValidLifetime {
			v.fail(ap+".preferredLifetime", "%d is longer than validLifetime %d", a.PreferredLifetime, a.ValidLifetime)
		}
		for _, m := range mine {
			if m.prefix.Masked() == pfx.Masked() {
				v.fail(ap, "%s is in the same subnet as %s at %s: one address per subnet per interface (add a second address as a /32 or /128 if you really need it)", pfx, m.prefix, m.path)
			}
		}
		na := nodeAddr{prefix: pfx, iface: i, path: ap}
		mine = append(mine, na)
		v.nodeAddr = append(v.nodeAddr, na)
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

func (v *validator) routes(p string, i int, ifc *Interface) {
	for j := range ifc.Routes {
		r := &ifc.Routes[j]
		rp := fmt.Sprintf("%s.routes[%d]", p, j)
		var via netip.Addr
		if r.Via != "" {
			var ok bool
			if via, ok = v.addr(rp+".via", &r.Via); !ok {
				continue
			}
		}
		var to netip.Prefix
		switch r.To {
		case "":
			v.fail(rp+".to", "missing: give the destination prefix, or \"default\"")
			continue
		case "default":
			if !via.IsValid() {
				v.fail(rp+".to", "a default route needs via (the gateway)")
				continue
			}
			to = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if via.Is6() {
				to = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		default:
			var ok bool
			if to, ok = v.prefix(rp+".to", &r.To); !ok {
				continue
			}
			if to != to.Masked() {
				v.fail(rp+".to", "%s has host bits set: the destination is %s", to, to.Masked())
				continue
			}
		}
		if via.IsValid() && via.Is4() != to.Addr().Is4() {
			v.fail(rp+".via", "%s and destination %s are of different families", via, to)
			continue
		}
		// An IPv6 link-local gateway is on-link by definition (RFC 4291 §2.5.6).
		if via.IsValid() && !r.OnLink && !(via.Is6() && via.IsLinkLocalUnicast()) {
			if !v.onLink(i, via) && !dhcpFor(ifc, via.Is4()) {
				v.fail(rp+".via", "gateway %s is not inside any subnet of this interface (%s): fix the gateway, add the subnet's address, or set onlink: true if the gateway is reachable on the link anyway",
					via, v.subnetsOf(i, via.Is4()))
			}
		}
		if r.Src != "" {
			src, ok := v.addr(rp+".src", &r.Src)
			if ok && !v.isNodeAddr(src) {
				v.fail(rp+".src", "%s is not an address of this node: the kernel only uses its own addresses as source", src)
			}
		}
		switch r.Scope {
		case "", "global", "link", "host":
		default:
			v.fail(rp+".scope", "%q: use global, link or host", r.Scope)
		}
		if r.Metric < 0 {
			v.fail(rp+".metric", "%d cannot be negative", r.Metric)
		}
		if r.Table < 0 || r.Table == 255 {
			v.fail(rp+".table", "%d: use 0 (main) or a table number other than 255 (local)", r.Table)
		}
	}
}

func dhcpFor(ifc *Interface, v4 bool) bool {
	if v4 {
		return ifc.DHCP4
	}
	return ifc.DHCP6 != "" || (ifc.SLAAC != nil && *ifc.SLAAC)
}

func (v *validator) onLink(i int, a netip.Addr) bool {
	for _, n := range v.nodeAddr {
		if n.iface == i && n.prefix.Masked().Contains(a) {
			return true
		}
	}
	return false
}

func (v *validator) subnetsOf(i int, v4 bool) string {
	var s []string
	for _, n := range v.nodeAddr {
		if n.iface == i && n.prefix.Addr().Is4() == v4 {
			s = append(s, n.prefix.Masked().String())
		}
	}
	if len(s) == 0 {
		return "it has no address of that family"
	}
	return strings.Join(s, ", ")
}

func (v *validator) isNodeAddr(a netip.Addr) bool {
	for _, n := range v.nodeAddr {
		if n.prefix.Addr() == a {
			return true
		}
	}
	return false
}

func (v *validator) rules() {
	for i := range v.cfg.Network.Rules {
		r := &v.cfg.Network.Rules[i]
		p := fmt.Sprintf("network.rules[%d]", i)
		if r.Priority < 1 || r.Priority > 32765 {
			v.fail(p+".priority", "%d: use 1–32765 (0, 32766 and 32767 are the kernel's local, main and default rules)", r.Priority)
		}
		if r.Table <= 0 || r.Table == 255 {
			v.fail(p+".table", "%d: name the table to look up (a positive number other than 255, local)", r.Table)
		}
		var fam []netip.Prefix
		for _, f := range []struct {
			name string
			s    *string
		}{{"from", &r.From}, {"to", &r.To}} {
			if *f.s == "" {
				continue
			}
			if !strings.Contains(*f.s, "/") {
				a, ok := v.addr(p+"."+f.name, f.s)
				if !ok {
					continue
				}
				*f.s = netip.PrefixFrom(a, a.BitLen()).String()
			}
			if pfx, ok := v.prefix(p+"."+f.name, f.s); ok {
				fam = append(fam, pfx)
			}
		}
		if len(fam) == 2 && fam[0].Addr().Is4() != fam[1].Addr().Is4() {
			v.fail(p+".to", "from %s and to %s are of different families", fam[0], fam[1])
		}
		if r.From == "" && r.To == "" && r.IIF == "" && r.OIF == "" && r.FWMark == 0 {
			v.fail(p, "matches every packet: give at least one of from, to, iif, oif, fwmark")
		}
		for _, f := range []struct{ name, val string }{{"iif", r.IIF}, {"oif", r.OIF}} {
			if f.val != "" && !ifnameRE.MatchString(f.val) {
				v.fail(p+"."+f.name, "%q is not a valid interface name", f.val)
			}
		}
	}
}

var dnsNameRE = regexp.MustCompile(`^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.?$`)

func (v *validator) dns() {
	d := &v.cfg.Network.DNS
	for i := range d.Servers {
		p := fmt.Sprintf("network.dns.servers[%d]", i)
		a, ok := v.addr(p, &d.Servers[i])
		if !ok {
			continue
		}
		switch {
		case a.IsUnspecified():
			v.fail(p, "%s is the unspecified address: give the DNS server's real address", a)
		case a.IsLoopback():
			v.fail(p, "%s is loopback: the node runs its own local DNS server there; list the upstream servers", a)
		case a.IsLinkLocalUnicast():
			v.fail(p, "%s is link-local: it is ambiguous without an interface and breaks when links change; use a routable address", a)
		case a.IsMulticast():
			v.fail(p, "%s is multicast: give a unicast DNS server", a)
		}
	}
	for i, s := range d.Search {
		if !dnsNameRE.MatchString(s) || len(s) > 253 {
			v.fail(fmt.Sprintf("network.dns.search[%d]", i), "%q is not a domain name", s)
		}
	}
}

func (v *validator) cluster() {
	c := &v.cfg.Cluster
	switch c.Role {
	case "", "control-plane", "worker":
	default:
		v.fail("cluster.role", "%q: use control-plane or worker", c.Role)
	}
	if c.Name != "" && !dnsNameRE.MatchString(c.Name) {
		v.fail("cluster.name", "%q must be a DNS label (it is part of api.<name>.<domain>)", c.Name)
	}
	if c.Domain != "" && !dnsNameRE.MatchString(c.Domain) {
		v.fail("cluster.domain", "%q is not a domain name", c.Domain)
	}
	seen := map[netip.Addr]string{}
	for _, set := range []struct {
		name string
		vips []string
	}{{"cluster.apiVIPs", c.APIVIPs}, {"cluster.ingressVIPs", c.IngressVIPs}} {
		for i := range set.vips {
			p := fmt.Sprintf("%s[%d]", set.name, i)
			a, ok := v.addr(p, &set.vips[i])
			if !ok {
				continue
			}
			if other, dup := seen[a]; dup && strings.HasPrefix(other, set.name) {
				v.fail(p, "%s is listed twice (also %s): remove one", a, other)
			} else if dup {
				v.fail(p, "%s is also the API VIP at %s: the API and ingress VIPs are separate virtual routers and need their own addresses; pick another ingress VIP", a, other)
			} else {
				seen[a] = p
			}
			if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() {
				v.fail(p, "%s cannot float between nodes: use a unicast address in a node subnet", a)
				continue
			}
			inSubnet, dhcp := false, false
			for _, n := range v.nodeAddr {
				if n.prefix.Addr() == a {
					v.fail(p, "%s is also the node address at %s: a VIP must be an address no node owns", a, n.path)
				}
				if n.prefix.Masked().Contains(a) {
					inSubnet = true
				}
			}
			for j := range v.cfg.Network.Interfaces {
				dhcp = dhcp || dhcpFor(&v.cfg.Network.Interfaces[j], a.Is4())
			}
			if !inSubnet && !dhcp {
				v.fail(p, "%s is outside every node subnet: peers could not reach it on the link; pick an address in one of the node's subnets", a)
			}
		}
	}
	for i, s := range c.APIServers {
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" {
			v.fail(fmt.Sprintf("cluster.apiServers[%d]", i), "%q: write host:port, e.g. 10.0.0.11:6443 or [2001:db8::11]:6443", s)
		}
	}
	for i := range c.Peers {
		v.addr(fmt.Sprintf("cluster.peers[%d]", i), &c.Peers[i])
	}
	v.vip()
	v.apiProxy()
	for _, set := range []struct {
		name  string
		cidrs []string
	}{{"cluster.podCIDRs", c.PodCIDRs}, {"cluster.serviceCIDRs", c.ServiceCIDRs}} {
		for i := range set.cidrs {
			p := fmt.Sprintf("%s[%d]", set.name, i)
			pfx, ok := v.prefix(p, &set.cidrs[i])
			if !ok {
				continue
			}
			if pfx != pfx.Masked() {
				v.fail(p, "%s has host bits set: write %s", pfx, pfx.Masked())
				continue
			}
			for _, n := range v.nodeAddr {
				if pfx.Contains(n.prefix.Addr()) {
					v.fail(p, "%s contains the node address %s at %s: pod and service networks must not overlap the node's", pfx, n.prefix.Addr(), n.path)
				}
			}
		}
	}
}

// egress checks network.egress: each rule's source is "masquerade" or an
// address this node owns (a static address or a cluster VIP, which replies
// come back to), of the destination's family, on a declared interface.
func (v *validator) egress() {
	c := v.cfg
	declared := map[string]bool{}
	for _, ifc := range c.Network.Interfaces {
		declared[ifc.Name] = true
	}
	vips := map[netip.Addr]bool{}
	for _, s := range append(slices.Clone(c.Cluster.APIVIPs), c.Cluster.IngressVIPs...) {
		if a, err := netip.ParseAddr(s); err == nil {
			vips[a] = true
		}
	}
	for i := range c.Network.Egress {
		e := &c.Network.Egress[i]
		p := fmt.Sprintf("network.egress[%d]", i)
		var to netip.Prefix
		if e.To != "" {
			pfx, ok := v.prefix(p+".to", &e.To)
			if !ok {
				continue
			}
			if pfx != pfx.Masked() {
				v.fail(p+".to", "%s has host bits set: write %s", pfx, pfx.Masked())
				continue
			}
			to = pfx
		}
		if e.Interface != "" && !declared[e.Interface] {
			v.fail(p+".interface", "%q is not in network.interfaces: egress leaves through a declared interface", e.Interface)
		}
		switch e.Source {
		case "":
			v.fail(p+".source", "missing: give an address of this node or %q", EgressMasquerade)
		case EgressMasquerade:
		default:
			a, ok := v.addr(p+".source", &e.Source)
			if !ok {
				continue
			}
			if !v.isNodeAddr(a) && !vips[a] {
				v.fail(p+".source", "%s is not an address of this node: use one of its static addresses or a cluster VIP (replies must come back to the node), or %q", a, EgressMasquerade)
			}
			if to.IsValid() && to.Addr().Is4() != a.Is4() {
				v.fail(p+".source", "%s and the destination %s are of different families: give a source of the destination's family", a, to)
			}
		}
	}
}

// firewall checks network.firewall: rules name a protocol, valid ports and
// sources, and a declared interface.
func (v *validator) firewall() {
	f := &v.cfg.Network.Firewall
	for i := range f.ManagementNets {
		v.source(fmt.Sprintf("network.firewall.managementNets[%d]", i), &f.ManagementNets[i])
	}
	declared := map[string]bool{}
	for _, ifc := range v.cfg.Network.Interfaces {
		declared[ifc.Name] = true
	}
	for i := range f.Rules {
		r := &f.Rules[i]
		p := fmt.Sprintf("network.firewall.rules[%d]", i)
		if r.Protocol != "tcp" && r.Protocol != "udp" {
			v.fail(p+".protocol", "%q: use tcp or udp", r.Protocol)
		}
		if len(r.Ports) == 0 {
			v.fail(p+".ports", "missing: list the ports to open, e.g. [\"443\", \"8000-8100\"]")
		}
		for j, port := range r.Ports {
			if _, _, err := PortRange(port); err != nil {
				v.fail(fmt.Sprintf("%s.ports[%d]", p, j), "%v", err)
			}
		}
		for j := range r.From {
			v.source(fmt.Sprintf("%s.from[%d]", p, j), &r.From[j])
		}
		if r.Interface != "" && !declared[r.Interface] {
			v.fail(p+".interface", "%q is not in network.interfaces", r.Interface)
		}
	}
}

// source parses an address or a prefix (an address becomes a /32 or /128).
func (v *validator) source(path string, s *string) {
	if !strings.Contains(*s, "/") {
		if a, ok := v.addr(path, s); ok {
			*s = netip.PrefixFrom(a, a.BitLen()).String()
		}
		return
	}
	if pfx, ok := v.prefix(path, s); ok && pfx != pfx.Masked() {
		v.fail(path, "%s has host bits set: write %s", pfx, pfx.Masked())
	}
}

// PortRange parses "443" or "8000-8100".
func PortRange(s string) (first, last uint16, err error) {
	a, b, isRange := strings.Cut(s, "-")
	f, err1 := strconv.ParseUint(a, 10, 16)
	l := f
	var err2 error
	if isRange {
		l, err2 = strconv.ParseUint(b, 10, 16)
	}
	if err1 != nil || err2 != nil || f == 0 || l < f {
		return 0, 0, fmt.Errorf("%q: write a port (1–65535) or a range first-last", s)
	}
	return uint16(f), uint16(l), nil
}

func (v *validator) kubelet() {
	n := &v.cfg.Kubelet.NodeIP
	fams := map[bool]string{}
	for i := range n.Addresses {
		p := fmt.Sprintf("kubelet.nodeIP.addresses[%d]", i)
		if a, ok := v.addr(p, &n.Addresses[i]); ok {
			if other, dup := fams[a.Is4()]; dup {
				v.fail(p, "a second address of the same family as %s: give at most one IPv4 and one IPv6", other)
			}
			fams[a.Is4()] = p
		}
	}
	for i := range n.Subnets {
		v.prefix(fmt.Sprintf("kubelet.nodeIP.subnets[%d]", i), &n.Subnets[i])
	}
	switch n.Family {
	case "", "ipv4", "ipv6":
	default:
		v.fail("kubelet.nodeIP.family", "%q: use ipv4 or ipv6", n.Family)
	}
}

func (v *validator) probes() {
	n := &v.cfg.Network
	for i := range n.Probes {
		pr := &n.Probes[i]
		p := fmt.Sprintf("network.probes[%d]", i)
		set := 0
		for _, f := range []string{pr.TCP, pr.HTTP, pr.ICMP} {
			if f != "" {
				set++
			}
		}
		if set != 1 {
			v.fail(p, "set exactly one of tcp, http, icmp")
			continue
		}
		switch {
		case pr.TCP != "":
			if host, port, err := net.SplitHostPort(pr.TCP); err != nil || host == "" || port == "" {
				v.fail(p+".tcp", "%q: write host:port", pr.TCP)
			}
		case pr.HTTP != "":
			if !strings.HasPrefix(pr.HTTP, "http://") && !strings.HasPrefix(pr.HTTP, "https://") {
				v.fail(p+".http", "%q: write an http:// or https:// URL", pr.HTTP)
			}
		case pr.ICMP != "":
			v.addr(p+".icmp", &pr.ICMP)
		}
	}
	t := n.Transaction
	if t.DeadlineSeconds < 0 || t.DeadlineSeconds > 300 {
		v.fail("network.transaction.deadlineSeconds", "%d: use 1–300 (0 means 10)", t.DeadlineSeconds)
	}
	if t.ProbeTimeoutSeconds < 0 || (t.DeadlineSeconds > 0 && t.ProbeTimeoutSeconds > t.DeadlineSeconds) {
		v.fail("network.transaction.probeTimeoutSeconds", "%d: must be positive and within the deadline", t.ProbeTimeoutSeconds)
	}
}
