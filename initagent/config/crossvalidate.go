package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Cross-object checks: pairs of objects in different parts of the config
// that must agree. Each field is checked on its own first (validate.go);
// these checks run afterwards, on the values that parsed, and every error
// names the paths of both objects.
//
// The pairs, by object kind (✓ checked here or in validate.go, – not a
// mistake and deliberately not checked):
//
//	interface ↔ interface   ✓ same name, ✓ same MAC, ✓ overlapping subnets
//	bond/bridge ↔ member    ✓ member not declared, ✓ member in two bonds/bridges or a bond and a bridge,
//	                        ✓ listed twice, ✓ bridge in a bridge, ✓ member with addresses/routes/DHCP/SLAAC,
//	                        ✓ member MTU ≠ bond MTU, ✓ bridge port MTU < bridge MTU, ✓ member down, ✓ loops
//	vlan ↔ parent           ✓ parent missing, ✓ parent itself, ✓ parent a bond member, ✓ MTU above the
//	                        parent's, ✓ IPv6 on a VLAN inheriting an MTU below 1280, ✓ parent down,
//	                        ✓ two VLANs with one id on one parent; – parent a bridge port or a VLAN (QinQ)
//	address ↔ address       ✓ same subnet on one interface, ✓ overlap across interfaces
//	address ↔ agent         ✓ the pod DNS link name ballast-dns and its address 169.254.20.10
//	route ↔ address         ✓ gateway off every subnet, ✓ gateway = a node address, ✓ gateway = the
//	                        subnet's network or broadcast address, ✓ src not a node address, ✓ src family,
//	                        ✓ a gateway route to a connected subnet, or one on another interface
//	route ↔ route           ✓ same destination, table and metric (on one or two interfaces)
//	route ↔ interface       ✓ routes or DHCP on an interface that is down; ✓ DHCP/SLAAC on a dummy
//	route ↔ rule            ✓ rule → a table with no route of its family, ✓ routes in a table no rule reads
//	rule ↔ rule             ✓ same priority and match
//	rule ↔ interface        ✓ iif/oif a bond or bridge member; – iif/oif undeclared (lo, CNI links)
//	VIP ↔ VIP               ✓ listed twice, ✓ API VIP = ingress VIP
//	VIP ↔ address           ✓ = node address, ✓ outside every node subnet, ✓ = a gateway
//	VIP ↔ pod/service CIDR  ✓ inside
//	VIP ↔ vip.interface     ✓ interface undeclared, a member, down, or without the VIP's subnet
//	VIP ↔ peers             ✓ peer = VIP, ✓ no peer of a VIP's family while peers are given
//	pod ↔ service CIDR      ✓ overlap, ✓ two of one family, ✓ overlap with node subnets (and addresses)
//	DNS server ↔ *          ✓ listed twice, ✓ = API VIP, ✓ inside pod/service CIDR; – = ingress VIP
//	DNS search ↔ search     ✓ listed twice
//	nodeIP ↔ *              ✓ address = VIP, ✓ address in pod/service CIDR, ✓ address/subnet that no
//	                        static address or DHCP/SLAAC of its family can provide, ✓ subnet in pod/service CIDR
//	apiServers ↔ *          ✓ listed twice, ✓ = API VIP on a control-plane node (the proxy's own frontend),
//	                        ✓ the local proxy frontend, ✓ in pod/service CIDR; – = a node address (local apiserver)
//	peers ↔ *               ✓ listed twice, ✓ = own address, ✓ = VIP, ✓ in pod/service CIDR
//	api.listen ↔ *          ✓ host = VIP, ✓ host not a node address, ✓ port of the API proxy, kubelet,
//	                        apiserver, etcd or local DNS
//	apiProxy.port ↔ *       ✓ port of kubelet, etcd, controller-manager or scheduler on 127.0.0.1
//	services ↔ cluster      ✓ vip without VIPs, apiProxy without apiServers, dns without name and domain
//	kubelet.extraArgs ↔ *   ✓ flags the agent sets itself (node-ip, config, kubeconfig, hostname-override)
//	probes ↔ address        ✓ icmp probe of the node's own address; – static routes into pod/service
//	                        CIDRs (a known workaround for service IPs)
type cross struct {
	*validator
	ifs     []Interface
	master  map[string]membership // member name → its bond or bridge
	vips    []pathAddr
	pods    []pathPrefix // cluster.podCIDRs and serviceCIDRs
	routes  []routeInfo
	mtuMemo map[int]effMTU
}

type membership struct {
	master int    // index of the bond or bridge
	path   string // the members entry
	kind   string // TypeBond or TypeBridge
}

type pathAddr struct {
	addr netip.Addr
	path string
}

type pathPrefix struct {
	prefix netip.Prefix
	path   string
	what   string // "pod network", "service network"
}

type routeInfo struct {
	iface int
	path  string
	to    netip.Prefix
	via   netip.Addr
	table int // 0 → 254
	r     *Route
}

func (v *validator) crossValidate() {
	x := &cross{validator: v, ifs: v.cfg.Network.Interfaces, master: map[string]membership{}, mtuMemo: map[int]effMTU{}}
	x.collect()
	x.members()
	x.vlans()
	x.mtus()
	x.states()
	x.loops()
	x.reserved()
	x.routeChecks()
	x.ruleChecks()
	x.vipChecks()
	x.clusterCIDRs()
	x.dnsChecks()
	x.nodeIP()
	x.apiServers()
	x.peers()
	x.apiListen()
	x.apiProxyPort()
	x.services()
	x.extraArgs()
	x.probeChecks()
}

// cleanAddr parses what validation accepted: no zone, no IPv4-compatible.
func cleanAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || ipv4Compatible(a) || a.Is4In6() {
		return netip.Addr{}, false
	}
	return a, true
}

func cleanPrefix(s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil || ipv4Compatible(p.Addr()) || p.Addr().Is4In6() {
		return netip.Prefix{}, false
	}
	return p, true
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func ifPath(i int) string { return fmt.Sprintf("network.interfaces[%d]", i) }

// masterMembers returns a bond's or bridge's members and the field that
// lists them ("bond" or "bridge"); field is empty for other interfaces.
func masterMembers(ifc *Interface) (members []string, field string) {
	switch {
	case ifc.Type == TypeBond && ifc.Bond != nil:
		return ifc.Bond.Members, "bond"
	case ifc.Type == TypeBridge && ifc.Bridge != nil:
		return ifc.Bridge.Members, "bridge"
	}
	return nil, ""
}

func (x *cross) collect() {
	for i := range x.ifs {
		ifc := &x.ifs[i]
		members, field := masterMembers(ifc)
		if field == "" {
			continue
		}
		for j, m := range members {
			mp := fmt.Sprintf("%s.%s.members[%d]", ifPath(i), field, j)
			if m == ifc.Name {
				continue // reported by kindSection
			}
			first, dup := x.master[m]
			switch {
			case !dup:
				x.master[m] = membership{master: i, path: mp, kind: ifc.Type}
			case first.master == i:
				x.fail(mp, "%q is listed twice (also %s): remove one", m, first.path)
			case first.kind == TypeBond && ifc.Type == TypeBond:
				// reported by kindSection
			case first.kind == TypeBond || ifc.Type == TypeBond:
				x.fail(mp, "%q is already a member of %s %q at %s: a link has one master; put the bond in the bridge instead of its members",
					m, first.kind, x.ifs[first.master].Name, first.path)
			default:
				x.fail(mp, "%q is already a port of bridge %q at %s: a link can be in one bridge only", m, x.ifs[first.master].Name, first.path)
			}
		}
	}
	c := &x.cfg.Cluster
	for _, set := range []struct {
		name string
		vips []string
	}{{"cluster.apiVIPs", c.APIVIPs}, {"cluster.ingressVIPs", c.IngressVIPs}} {
		for i, s := range set.vips {
			if a, ok := cleanAddr(s); ok {
				x.vips = append(x.vips, pathAddr{a, fmt.Sprintf("%s[%d]", set.name, i)})
			}
		}
	}
	for _, set := range []struct {
		name, what string
		cidrs      []string
	}{{"cluster.podCIDRs", "pod network", c.PodCIDRs}, {"cluster.serviceCIDRs", "service network", c.ServiceCIDRs}} {
		for i, s := range set.cidrs {
			if p, ok := cleanPrefix(s); ok && p == p.Masked() {
				x.pods = append(x.pods, pathPrefix{p, fmt.Sprintf("%s[%d]", set.name, i), set.what})
			}
		}
	}
	for i := range x.ifs {
		for j := range x.ifs[i].Routes {
			r := &x.ifs[i].Routes[j]
			if r.Table < 0 || r.Table == 255 {
				continue // refused by routes()
			}
			ri := routeInfo{iface: i, path: fmt.Sprintf("%s.routes[%d]", ifPath(i), j), table: r.Table, r: r}
			if ri.table == 0 {
				ri.table = 254
			}
			if r.Via != "" {
				a, ok := cleanAddr(r.Via)
				if !ok {
					continue
				}
				ri.via = a
			}
			switch r.To {
			case "default":
				if !ri.via.IsValid() {
					continue
				}
				ri.to = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
				if ri.via.Is6() {
					ri.to = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
				}
			default:
				p, ok := cleanPrefix(r.To)
				if !ok || p != p.Masked() {
					continue
				}
				ri.to = p
			}
			if ri.via.IsValid() && ri.via.Is4() != ri.to.Addr().Is4() {
				continue
			}
			x.routes = append(x.routes, ri)
		}
	}
}

// inPods reports the pod or service network that contains a.
func (x *cross) inPods(a netip.Addr) (pathPrefix, bool) {
	for _, p := range x.pods {
		if p.prefix.Contains(a) {
			return p, true
		}
	}
	return pathPrefix{}, false
}

func (x *cross) vipAt(a netip.Addr) (pathAddr, bool) {
	for _, v := range x.vips {
		if v.addr == a {
			return v, true
		}
	}
	return pathAddr{}, false
}

func (x *cross) nodeAddrAt(a netip.Addr) (nodeAddr, bool) {
	for _, n := range x.nodeAddr {
		if n.prefix.Addr() == a {
			return n, true
		}
	}
	return nodeAddr{}, false
}

// dynamic reports whether some interface gets addresses of a's family from
// DHCP or SLAAC (or declares no interface), so that an address missing from
// the config may still come.
func (x *cross) dynamic(v4 bool) bool {
	if len(x.ifs) == 0 {
		return true // the config leaves the network alone: anything may be there
	}
	for i := range x.ifs {
		if dhcpFor(&x.ifs[i], v4) {
			return true
		}
	}
	return false
}

func (x *cross) members() {
	for i := range x.ifs {
		ifc := &x.ifs[i]
		members, field := masterMembers(ifc)
		if field == "" {
			continue
		}
		for j, m := range members {
			mp := fmt.Sprintf("%s.%s.members[%d]", ifPath(i), field, j)
			k, ok := x.names[m]
			if !ok {
				if m != ifc.Name {
					x.fail(mp, "%q is not declared: add it to network.interfaces (by name, or by mac with name: %s)", m, m)
				}
				continue
			}
			if ifc.Type == TypeBridge && x.ifs[k].Type == TypeBridge && k != i {
				x.fail(mp, "%q is a bridge (%s): the kernel does not put a bridge in a bridge; connect them with a veth pair or merge them", m, ifPath(k))
			}
		}
	}
	// A member's traffic is the master's: addresses, routes and DHCP belong there.
	for i := range x.ifs {
		ifc := &x.ifs[i]
		ms, ok := x.master[ifc.Name]
		if ifc.Name == "" || !ok {
			continue
		}
		p := ifPath(i)
		mname := x.ifs[ms.master].Name
		what := fmt.Sprintf("%s is a member of %s %q (%s): its traffic arrives on the %s, so", ifc.Name, ms.kind, mname, ms.path, ms.kind)
		if len(ifc.Addresses) > 0 {
			x.fail(p+".addresses[0]", "%s addresses belong there: move them to %s", what, ifPath(ms.master))
		}
		if len(ifc.Routes) > 0 {
			x.fail(p+".routes[0]", "%s routes belong there: move them to %s", what, ifPath(ms.master))
		}
		if ifc.DHCP4 {
			x.fail(p+".dhcp4", "%s DHCP belongs there: set dhcp4 on %s and remove it here", what, ifPath(ms.master))
		}
		if ifc.DHCP6 != "" {
			x.fail(p+".dhcp6", "%s DHCPv6 belongs there: set dhcp6 on %s and remove it here", what, ifPath(ms.master))
		}
		if ifc.SLAAC != nil && *ifc.SLAAC {
			x.fail(p+".slaac", "%s SLAAC belongs there: set slaac on %s and remove it here", what, ifPath(ms.master))
		}
	}
}

func (x *cross) vlans() {
	type key struct {
		link string
		id   int
	}
	seen := map[key]int{}
	for i := range x.ifs {
		ifc := &x.ifs[i]
		if ifc.Type != TypeVLAN || ifc.VLAN == nil || ifc.VLAN.Link == "" {
			continue
		}
		p := ifPath(i)
		link := ifc.VLAN.Link
		if link == ifc.Name {
			x.fail(p+".vlan.link", "a VLAN cannot be its own parent: name the interface or bond it is tagged on")
			continue
		}
		if ms, ok := x.master[link]; ok && ms.kind == TypeBond {
			x.fail(p+".vlan.link", "%q is a member of bond %q (%s): a VLAN on a bond member bypasses the bond; set vlan.link: %s",
				link, x.ifs[ms.master].Name, ms.path, x.ifs[ms.master].Name)
		}
		if ifc.VLAN.ID >= 1 && ifc.VLAN.ID <= 4094 {
			k := key{link, ifc.VLAN.ID}
			if j, dup := seen[k]; dup {
				x.fail(p+".vlan.id", "VLAN %d on %q is already %s: the kernel allows one VLAN per id and parent; remove one or change the id",
					ifc.VLAN.ID, link, ifPath(j))
			} else {
				seen[k] = i
			}
		}
	}
}

// effMTU is what the kernel will give a link: its mtu, else for a VLAN its
// parent's, for a bond or dummy 1500, for a bridge its ports' smallest; ok
// is false when only the hardware knows (an ethernet NIC without mtu).
type effMTU struct {
	mtu  int
	ok   bool
	from string // where it comes from, for messages
}

func (x *cross) mtuOf(i int) effMTU {
	if e, done := x.mtuMemo[i]; done {
		return e // also breaks loops (reported by loops): unknown while in progress
	}
	x.mtuMemo[i] = effMTU{}
	e := x.computeMTU(i)
	x.mtuMemo[i] = e
	return e
}

func (x *cross) computeMTU(i int) effMTU {
	ifc := &x.ifs[i]
	if ifc.MTU != 0 {
		return effMTU{ifc.MTU, true, ifPath(i) + ".mtu"}
	}
	switch ifc.Type {
	case TypeBond, TypeDummy:
		return effMTU{1500, true, ifPath(i) + " (no mtu: a new " + ifc.Type + " has 1500)"}
	case TypeVLAN:
		if ifc.VLAN != nil {
			if k, ok := x.names[ifc.VLAN.Link]; ok && k != i {
				e := x.mtuOf(k)
				if e.ok {
					e.from = ifPath(i) + " (no mtu: inherited from " + e.from + ")"
				}
				return e
			}
		}
	case TypeBridge:
		if ifc.Bridge == nil || len(ifc.Bridge.Members) == 0 {
			return effMTU{}
		}
		min := effMTU{}
		for _, m := range ifc.Bridge.Members {
			k, ok := x.names[m]
			if !ok || k == i {
				return effMTU{}
			}
			e := x.mtuOf(k)
			if !e.ok {
				return effMTU{}
			}
			if !min.ok || e.mtu < min.mtu {
				min = e
			}
		}
		min.from = ifPath(i) + " (no mtu: its smallest port's, " + min.from + ")"
		return min
	}
	return effMTU{}
}

func (x *cross) mtus() {
	for i := range x.ifs {
		ifc := &x.ifs[i]
		p := ifPath(i)
		// VLAN ≤ parent.
		if ifc.Type == TypeVLAN && ifc.VLAN != nil {
			if k, ok := x.names[ifc.VLAN.Link]; ok && k != i {
				parent := x.mtuOf(k)
				switch {
				case !parent.ok:
				case ifc.MTU != 0 && ifc.MTU > parent.mtu:
					x.fail(p+".mtu", "%d is above the MTU %d of its parent %q at %s: the kernel refuses a VLAN larger than its parent; set mtu: %d (or more) on %s, or lower this one",
						ifc.MTU, parent.mtu, ifc.VLAN.Link, parent.from, ifc.MTU, ifPath(k))
				case ifc.MTU == 0 && parent.mtu < 1280 && usesIPv6(ifc):
					x.fail(p+".vlan.link", "this VLAN uses IPv6 but inherits MTU %d from %s, below 1280, the minimum for IPv6 (RFC 8200): set mtu: 1280 (or more) on %s and here, or sysctls.disableIPv6: true",
						parent.mtu, parent.from, ifPath(k))
				}
			}
		}
		if ifc.Type == TypeBridge && ifc.MTU == 0 && usesIPv6(ifc) {
			if e := x.mtuOf(i); e.ok && e.mtu < 1280 {
				x.fail(p+".mtu", "this bridge uses IPv6 but takes MTU %d from %s, below 1280, the minimum for IPv6 (RFC 8200): set mtu: 1280 (or more) on its ports, or sysctls.disableIPv6: true",
					e.mtu, e.from)
			}
		}
		// Members against their master.
		ms, ok := x.master[ifc.Name]
		if ifc.Name == "" || !ok || ifc.MTU == 0 {
			continue
		}
		m := &x.ifs[ms.master]
		switch ms.kind {
		case TypeBond:
			bond := x.mtuOf(ms.master)
			if bond.ok && bond.mtu != ifc.MTU {
				x.fail(p+".mtu", "%d differs from the MTU %d of bond %q at %s: the bond sets its members' MTU to its own; set mtu: %d on the bond (%s) and remove it here",
					ifc.MTU, bond.mtu, m.Name, bond.from, ifc.MTU, ifPath(ms.master))
			}
		case TypeBridge:
			if m.MTU != 0 && ifc.MTU < m.MTU {
				x.fail(p+".mtu", "%d is below the MTU %d of bridge %q at %s.mtu: frames larger than %d are dropped on this port; raise it to %d or lower the bridge's",
					ifc.MTU, m.MTU, m.Name, ifPath(ms.master), ifc.MTU, m.MTU)
			}
		}
	}
}

func (x *cross) states() {
	down := func(i int) bool { return x.ifs[i].State == "down" }
	for i := range x.ifs {
		ifc := &x.ifs[i]
		p := ifPath(i)
		if ifc.Type == TypeVLAN && ifc.VLAN != nil && !down(i) {
			if k, ok := x.names[ifc.VLAN.Link]; ok && k != i && down(k) {
				x.fail(p+".vlan.link", "parent %q is down (%s.state), so this VLAN cannot come up: set the parent's state to up, or this VLAN's to down", ifc.VLAN.Link, ifPath(k))
			}
		}
		if ms, ok := x.master[ifc.Name]; ok && ifc.Name != "" && down(i) && !down(ms.master) {
			x.fail(p+".state", "down, but %s is a member of %s %q (%s), which brings its members up: remove state: down, or take it out of the members",
				ifc.Name, ms.kind, x.ifs[ms.master].Name, ms.path)
		}
		if down(i) {
			if len(ifc.Routes) > 0 {
				x.fail(p+".routes[0]", "this interface is down (%s.state) and the kernel refuses routes through a down link: bring it up or remove its routes", p)
			}
			if ifc.DHCP4 || ifc.DHCP6 != "" {
				x.fail(p+".state", "down, but DHCP needs the link up: bring it up or turn DHCP off")
			}
		}
		if ifc.Type == TypeDummy {
			if ifc.DHCP4 || ifc.DHCP6 != "" || (ifc.SLAAC != nil && *ifc.SLAAC) {
				x.fail(p+".type", "a dummy link has no neighbours, so DHCP and SLAAC never answer: give it static addresses, or use the interface that has a network")
			}
		}
	}
}

// loops finds links stacked on each other in a circle (bond0 containing a
// VLAN of bond0): the kernel refuses them.
func (x *cross) loops() {
	// lower → uppers: a VLAN is the upper of its parent, a bond or bridge of its members.
	uppers := map[int][]int{}
	for i := range x.ifs {
		ifc := &x.ifs[i]
		if ifc.Type == TypeVLAN && ifc.VLAN != nil {
			if k, ok := x.names[ifc.VLAN.Link]; ok && k != i {
				uppers[k] = append(uppers[k], i)
			}
		}
	}
	for name, ms := range x.master {
		if k, ok := x.names[name]; ok && k != ms.master {
			uppers[k] = append(uppers[k], ms.master)
		}
	}
	for k := range uppers {
		sort.Ints(uppers[k])
	}
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(x.ifs))
	var stack []int
	var visit func(i int)
	visit = func(i int) {
		color[i] = grey
		stack = append(stack, i)
		for _, u := range uppers[i] {
			switch color[u] {
			case white:
				visit(u)
			case grey:
				start := slices.Index(stack, u)
				var names []string
				for _, s := range stack[start:] {
					names = append(names, fmt.Sprintf("%s at %s", x.ifs[s].Name, ifPath(s)))
				}
				names = append(names, x.ifs[u].Name)
				x.fail(ifPath(u), "links are stacked in a loop (%s, each on the one before): the kernel refuses it; take one out of the other's members or vlan.link",
					strings.Join(names, " → "))
			}
		}
		stack = stack[:len(stack)-1]
		color[i] = black
	}
	for i := range x.ifs {
		if color[i] == white {
			visit(i)
		}
	}
}

// podDNSAddr and podDNSLink are what the agent creates for the pods' DNS.
const (
	podDNSLink = "ballast-dns"
	podDNSAddr = "169.254.20.10"
)

func (x *cross) reserved() {
	for i := range x.ifs {
		ifc := &x.ifs[i]
		if ifc.Name == podDNSLink {
			x.fail(ifPath(i)+".name", "%q is the link the agent creates for the pods' DNS address %s: pick another name", podDNSLink, podDNSAddr)
		}
	}
	for _, n := range x.nodeAddr {
		if n.prefix.Addr() == netip.MustParseAddr(podDNSAddr) {
			x.fail(n.path, "%s is the pods' DNS address, which the agent puts on its own link %s: use another address", podDNSAddr, podDNSLink)
		}
	}
}

func tableName(t int) string {
	if t == 254 {
		return "main"
	}
	return strconv.Itoa(t)
}

func (x *cross) routeChecks() {
	type key struct {
		to     netip.Prefix
		table  int
		metric int
	}
	seen := map[key]routeInfo{}
	for _, ri := range x.routes {
		r := ri.r
		metric := r.Metric
		if metric == 0 && ri.to.Addr().Is6() {
			metric = 1024 // the kernel's IPv6 default
		}
		k := key{ri.to, ri.table, metric}
		if first, dup := seen[k]; dup {
			where := "on the same interface"
			if first.iface != ri.iface {
				where = "through " + x.ifs[first.iface].Name
			}
			x.fail(ri.path+".to", "%s in table %s with metric %d is already routed %s by %s: the kernel keeps one route per destination, table and metric; remove one, or give them different metrics (the lower one wins, the other is the fallback)",
				ri.to, tableName(ri.table), r.Metric, where, first.path)
		} else {
			seen[k] = ri
		}
		if ri.via.IsValid() {
			if n, ok := x.nodeAddrAt(ri.via); ok {
				x.fail(ri.path+".via", "%s is this node's own address (%s): the gateway is the next router; give its address", ri.via, n.path)
			} else if vp, ok := x.vipAt(ri.via); ok {
				x.fail(ri.path+".via", "%s is the VIP at %s, which moves between nodes: route via a router's fixed address", ri.via, vp.path)
			}
			for _, n := range x.nodeAddr {
				if n.iface != ri.iface || !n.prefix.Addr().Is4() || n.prefix.Bits() >= 31 || !n.prefix.Masked().Contains(ri.via) {
					continue
				}
				if ri.via == n.prefix.Masked().Addr() {
					x.fail(ri.path+".via", "%s is the network address of the subnet %s (%s): give the router's address", ri.via, n.prefix.Masked(), n.path)
				} else if ri.via == lastAddr(n.prefix) {
					x.fail(ri.path+".via", "%s is the broadcast address of the subnet %s (%s): give the router's address", ri.via, n.prefix.Masked(), n.path)
				}
			}
		}
		if r.Src != "" {
			if src, ok := cleanAddr(r.Src); ok && src.Is4() != ri.to.Addr().Is4() {
				x.fail(ri.path+".src", "%s and destination %s are of different families: give a source of the destination's family", src, ri.to)
			}
		}
		// A route to a connected subnet: the kernel already has it.
		if ri.table == 254 && ri.to.Bits() < ri.to.Addr().BitLen() {
			for _, n := range x.nodeAddr {
				if n.prefix.Masked() != ri.to || n.prefix.Bits() == n.prefix.Addr().BitLen() {
					continue
				}
				switch {
				case n.iface != ri.iface:
					x.fail(ri.path+".to", "%s is the subnet of %s on another interface, which the kernel routes there: remove this route, or move the address", ri.to, n.path)
				case ri.via.IsValid():
					x.fail(ri.path+".to", "%s is this interface's own subnet (%s), reached without a gateway: remove this route", ri.to, n.path)
				}
				break
			}
		}
	}
}

func ruleFamily(r *Rule) bool { // true: IPv4
	for _, s := range []string{r.From, r.To} {
		if p, ok := cleanPrefix(s); ok {
			return p.Addr().Is4()
		}
	}
	return true // netconf installs a rule without from or to for IPv4
}

func (x *cross) ruleChecks() {
	rules := x.cfg.Network.Rules
	type tf struct {
		table int
		v4    bool
	}
	routed := map[tf]bool{}
	for _, ri := range x.routes {
		routed[tf{ri.table, ri.to.Addr().Is4()}] = true
	}
	read := map[tf]bool{}
	type match struct {
		prio               int
		from, to, iif, oif string
		fwmark             uint32
		v4                 bool
	}
	seen := map[match]int{}
	for i := range rules {
		r := &rules[i]
		p := fmt.Sprintf("network.rules[%d]", i)
		v4 := ruleFamily(r)
		fam := "IPv4"
		if !v4 {
			fam = "IPv6"
		}
		if r.Table > 0 && r.Table != 255 {
			read[tf{r.Table, v4}] = true
			if r.Table != 253 && r.Table != 254 && !routed[tf{r.Table, v4}] {
				hint := ""
				if r.From == "" && r.To == "" {
					hint = " (a rule without from or to is an IPv4 rule)"
				}
				x.fail(p+".table", "no %s route in network.interfaces[*].routes has table: %d%s, so the rule sends packets to an empty table: add the routes with table: %d, or point the rule at the table that has them",
					fam, r.Table, hint, r.Table)
			}
		}
		m := match{r.Priority, r.From, r.To, r.IIF, r.OIF, r.FWMark, v4}
		if j, dup := seen[m]; dup {
			x.fail(p, "has the same priority and match as network.rules[%d]: the kernel tries them in an order the config cannot state; merge them or give them different priorities", j)
		} else {
			seen[m] = i
		}
		for _, f := range []struct{ name, val string }{{"iif", r.IIF}, {"oif", r.OIF}} {
			if ms, ok := x.master[f.val]; ok && f.val != "" {
				x.fail(p+"."+f.name, "%q is a member of %s %q (%s): packets enter and leave through the %s; name %q",
					f.val, ms.kind, x.ifs[ms.master].Name, ms.path, ms.kind, x.ifs[ms.master].Name)
			}
		}
	}
	reported := map[tf]bool{}
	for _, ri := range x.routes {
		k := tf{ri.table, ri.to.Addr().Is4()}
		if ri.table == 254 || ri.table == 253 || read[k] || reported[k] {
			continue
		}
		reported[k] = true
		x.fail(ri.path+".table", "no %s rule in network.rules looks up table %d, so the kernel never uses this route: add a rule (e.g. {priority: 100, from: <this interface's address>, table: %d}), or leave table out for the main table",
			family(ri.to.Addr()), ri.table, ri.table)
	}
}

func (x *cross) vipChecks() {
	c := &x.cfg.Cluster
	for _, vp := range x.vips {
		if pp, ok := x.inPods(vp.addr); ok {
			x.fail(vp.path, "%s is inside the %s %s (%s): a VIP is an address on the node's link; pick one in a node subnet", vp.addr, pp.what, pp.prefix, pp.path)
		}
	}
	if c.VIP.Interface != "" && ifnameRE.MatchString(c.VIP.Interface) && len(x.vips) > 0 {
		p := "cluster.vip.interface"
		k, ok := x.names[c.VIP.Interface]
		switch {
		case !ok:
			x.fail(p, "%q is not declared: add it to network.interfaces, or leave vip.interface out to use the interface whose subnet holds the VIP", c.VIP.Interface)
		case x.ifs[k].State == "down":
			x.fail(p, "%q is down (%s.state): the VIPs need a link that is up", c.VIP.Interface, ifPath(k))
		default:
			if ms, isMember := x.master[c.VIP.Interface]; isMember {
				x.fail(p, "%q is a member of %s %q (%s): name the %s", c.VIP.Interface, ms.kind, x.ifs[ms.master].Name, ms.path, ms.kind)
				break
			}
			for _, vp := range x.vips {
				if x.onLink(k, vp.addr) || dhcpFor(&x.ifs[k], vp.addr.Is4()) {
					continue
				}
				x.fail(p, "%q has no subnet holding the VIP %s (%s): put the VIPs on the interface of their subnet, or leave vip.interface out", c.VIP.Interface, vp.addr, vp.path)
			}
		}
	}
	// Unicast VRRP talks to the peers of the router's family; a family without
	// peers falls back to multicast, which the unicast peers ignore.
	if len(c.Peers) > 0 {
		peerFam := map[bool]bool{}
		for _, s := range c.Peers {
			if a, ok := cleanAddr(s); ok {
				peerFam[a.Is4()] = true
			}
		}
		if len(peerFam) > 0 {
			reported := map[bool]bool{}
			for _, vp := range x.vips {
				if fam := vp.addr.Is4(); !peerFam[fam] && !reported[fam] {
					reported[fam] = true
					x.fail(vp.path, "cluster.peers has no %s address, so the %s VIPs would fall back to multicast adverts while the others go unicast to the peers: add the peers' %s addresses",
						family(vp.addr), family(vp.addr), family(vp.addr))
				}
			}
		}
	}
}

func (x *cross) clusterCIDRs() {
	byFam := map[string]pathPrefix{}
	for i, a := range x.pods {
		k := a.what + family(a.prefix.Addr())
		if first, dup := byFam[k]; dup {
			x.fail(a.path, "a second %s %s (%s is %s too): Kubernetes takes at most one per family; keep one", family(a.prefix.Addr()), a.what, first.path, first.prefix)
		} else {
			byFam[k] = a
		}
		for _, b := range x.pods[:i] {
			if a.prefix.Overlaps(b.prefix) {
				x.fail(a.path, "%s overlaps the %s %s (%s): pods and services need separate ranges; pick one outside it", a.prefix, b.what, b.prefix, b.path)
			}
		}
		for _, n := range x.nodeAddr {
			if n.prefix.Bits() == n.prefix.Addr().BitLen() || a.prefix.Contains(n.prefix.Addr()) {
				continue // a host address, or reported by cluster()
			}
			if a.prefix.Overlaps(n.prefix.Masked()) {
				x.fail(a.path, "%s overlaps the node subnet %s (%s): addresses in the overlap become unreachable from the node; pick a range outside it",
					a.prefix, n.prefix.Masked(), n.path)
			}
		}
	}
}

func (x *cross) dnsChecks() {
	d := &x.cfg.Network.DNS
	seen := map[netip.Addr]string{}
	for i, s := range d.Servers {
		p := fmt.Sprintf("network.dns.servers[%d]", i)
		a, ok := cleanAddr(s)
		if !ok {
			continue
		}
		if first, dup := seen[a]; dup {
			x.fail(p, "%s is listed twice (also %s): remove one", a, first)
			continue
		}
		seen[a] = p
		if pp, ok := x.inPods(a); ok {
			x.fail(p, "%s is inside the %s %s (%s): the cluster's DNS forwards to the node's resolver, which would forward back; list the upstream DNS servers", a, pp.what, pp.prefix, pp.path)
		}
		if vp, ok := x.vipAt(a); ok && strings.HasPrefix(vp.path, "cluster.apiVIPs") {
			x.fail(p, "%s is the API VIP (%s), which serves the Kubernetes API, not DNS: list the upstream DNS servers", a, vp.path)
		}
	}
	names := map[string]string{}
	for i, s := range d.Search {
		p := fmt.Sprintf("network.dns.search[%d]", i)
		k := strings.TrimSuffix(strings.ToLower(s), ".")
		if first, dup := names[k]; dup {
			x.fail(p, "%q is listed twice (also %s): remove one", s, first)
		} else {
			names[k] = p
		}
	}
}

func (x *cross) nodeIP() {
	n := &x.cfg.Kubelet.NodeIP
	for i, s := range n.Addresses {
		p := fmt.Sprintf("kubelet.nodeIP.addresses[%d]", i)
		a, ok := cleanAddr(s)
		if !ok {
			continue
		}
		if vp, ok := x.vipAt(a); ok {
			x.fail(p, "%s is the VIP at %s: kubelet's node address must be one this node always owns; give a node address", a, vp.path)
			continue
		}
		if pp, ok := x.inPods(a); ok {
			x.fail(p, "%s is inside the %s %s (%s): give the node's own address", a, pp.what, pp.prefix, pp.path)
			continue
		}
		if _, own := x.nodeAddrAt(a); !own && !x.dynamic(a.Is4()) {
			x.fail(p, "%s is not an address of this node, and no interface gets %s addresses from DHCP or SLAAC: give one of network.interfaces[*].addresses", a, family(a))
		}
	}
	for i, s := range n.Subnets {
		p := fmt.Sprintf("kubelet.nodeIP.subnets[%d]", i)
		sub, ok := cleanPrefix(s)
		if !ok {
			continue
		}
		sub = sub.Masked()
		for _, pp := range x.pods {
			if pp.prefix.Overlaps(sub) && pp.prefix.Bits() <= sub.Bits() {
				x.fail(p, "%s is inside the %s %s (%s): the node address is never a pod or service address; give a node subnet", sub, pp.what, pp.prefix, pp.path)
			}
		}
		held := false
		for _, na := range x.nodeAddr {
			held = held || sub.Contains(na.prefix.Addr())
		}
		if !held && !x.dynamic(sub.Addr().Is4()) {
			x.fail(p, "%s holds no address of this node, and no interface gets %s addresses from DHCP or SLAAC: give the subnet of one of network.interfaces[*].addresses", sub, family(sub.Addr()))
		}
	}
}

func (x *cross) apiServers() {
	c := &x.cfg.Cluster
	proxyPort := c.APIProxy.Port
	if proxyPort == 0 {
		proxyPort = 7445
	}
	seen := map[string]string{}
	for i, s := range c.APIServers {
		p := fmt.Sprintf("cluster.apiServers[%d]", i)
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" {
			continue
		}
		key := strings.ToLower(net.JoinHostPort(host, port))
		if a, ok := cleanAddr(host); ok {
			key = a.String() + "|" + port
		}
		if first, dup := seen[key]; dup {
			x.fail(p, "%q is listed twice (also %s): remove one", s, first)
			continue
		}
		seen[key] = p
		a, ok := cleanAddr(host)
		if !ok {
			continue
		}
		if vp, ok := x.vipAt(a); ok && strings.HasPrefix(vp.path, "cluster.apiVIPs") && c.Role == "control-plane" {
			x.fail(p, "%s is the API VIP (%s): on a control-plane node the API proxy itself listens there, so it would forward to itself; list the kube-apiservers' own addresses", a, vp.path)
		}
		if a.IsLoopback() && port == strconv.Itoa(proxyPort) {
			x.fail(p, "%q is the API proxy's own frontend (cluster.apiProxy.port %d): list the kube-apiservers' addresses", s, proxyPort)
		}
		if pp, ok := x.inPods(a); ok {
			x.fail(p, "%s is inside the %s %s (%s): the API proxy runs before the cluster network does; list the kube-apiservers' node addresses", a, pp.what, pp.prefix, pp.path)
		}
	}
}

func (x *cross) peers() {
	seen := map[netip.Addr]string{}
	for i, s := range x.cfg.Cluster.Peers {
		p := fmt.Sprintf("cluster.peers[%d]", i)
		a, ok := cleanAddr(s)
		if !ok {
			continue
		}
		if first, dup := seen[a]; dup {
			x.fail(p, "%s is listed twice (also %s): remove one", a, first)
			continue
		}
		seen[a] = p
		if n, ok := x.nodeAddrAt(a); ok {
			x.fail(p, "%s is this node's own address (%s): peers are the other control-plane nodes; remove it", a, n.path)
		}
		if vp, ok := x.vipAt(a); ok {
			x.fail(p, "%s is the VIP at %s: list the other control-plane nodes' own addresses", a, vp.path)
		}
		if pp, ok := x.inPods(a); ok {
			x.fail(p, "%s is inside the %s %s (%s): list the other control-plane nodes' own addresses", a, pp.what, pp.prefix, pp.path)
		}
	}
}

func (x *cross) apiListen() {
	a := x.cfg.API
	if a.Listen == "" {
		return
	}
	host, portStr, err := net.SplitHostPort(a.Listen)
	port, perr := strconv.Atoi(portStr)
	if err != nil || perr != nil {
		return
	}
	const p = "api.listen"
	var ip netip.Addr
	if host != "" {
		var ok bool
		if ip, ok = cleanAddr(host); !ok {
			return
		}
		if vp, ok := x.vipAt(ip); ok {
			x.fail(p, "%s is the VIP at %s, which is on this node only while it is master: listen on a node address, or leave the host out", ip, vp.path)
			return
		}
		if _, own := x.nodeAddrAt(ip); !own && !ip.IsUnspecified() && !ip.IsLoopback() && !x.dynamic(ip.Is4()) {
			x.fail(p, "%s is not an address of this node: listen on one of network.interfaces[*].addresses, or leave the host out", ip)
			return
		}
	}
	wildcard := !ip.IsValid() || ip.IsUnspecified()
	proxyPort := x.cfg.Cluster.APIProxy.Port
	if proxyPort == 0 {
		proxyPort = 7445
	}
	taken := map[int]string{10250: "kubelet's"}
	if wildcard || ip.IsLoopback() {
		taken[proxyPort] = "API proxy's (cluster.apiProxy.port)"
	}
	if x.cfg.Cluster.Role == "control-plane" {
		taken[6443] = "kube-apiserver's"
		taken[2379] = "etcd's"
		taken[2380] = "etcd's"
	}
	if c := x.cfg.Cluster; wildcard && c.Name != "" && c.Domain != "" && (x.cfg.Services.DNS == nil || *x.cfg.Services.DNS) {
		taken[53] = "local DNS server's (127.0.0.53 and 169.254.20.10)"
	}
	if who, ok := taken[port]; ok {
		x.fail(p, "port %d is the %s: pick another port (the default is %d)", port, who, DefaultAPIPort)
	}
}

// apiProxyPort: the proxy's frontend on 127.0.0.1 must not take a port that
// kubelet or a control-plane component listens on there.
func (x *cross) apiProxyPort() {
	c := x.cfg.Cluster
	taken := map[int]string{10248: "kubelet's health port", 10250: "kubelet's port"}
	if c.Role == "control-plane" {
		for port, who := range map[int]string{2379: "etcd's client port", 2381: "etcd's metrics port",
			10257: "kube-controller-manager's port", 10259: "kube-scheduler's port"} {
			taken[port] = who
		}
	}
	if who, ok := taken[c.APIProxy.Port]; ok {
		x.fail("cluster.apiProxy.port", "%d is the %s on 127.0.0.1: pick another port, or leave it out for 7445", c.APIProxy.Port, who)
	}
}

func (x *cross) services() {
	s := &x.cfg.Services
	c := &x.cfg.Cluster
	if s.VIP != nil && *s.VIP && len(c.APIVIPs)+len(c.IngressVIPs) == 0 {
		x.fail("services.vip", "true, but cluster.apiVIPs and cluster.ingressVIPs are empty: add the VIPs, or remove services.vip")
	}
	if s.APIProxy != nil && *s.APIProxy && len(c.APIServers) == 0 {
		x.fail("services.apiProxy", "true, but cluster.apiServers is empty, so the proxy has no backend: add the apiservers, or remove services.apiProxy")
	}
	if s.DNS != nil && *s.DNS && (c.Name == "" || c.Domain == "") {
		x.fail("services.dns", "true, but the local DNS server runs only with cluster.name and cluster.domain: set both, or remove services.dns")
	}
}

func (x *cross) extraArgs() {
	keys := make([]string, 0, len(x.cfg.Kubelet.ExtraArgs))
	for k := range x.cfg.Kubelet.ExtraArgs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		flag := strings.TrimLeft(k, "-")
		p := join("kubelet.extraArgs", k)
		switch flag {
		case "node-ip":
			x.fail(p, "the agent sets --node-ip from its node address decision: use kubelet.nodeIP.addresses or subnets instead")
		case "config", "kubeconfig", "hostname-override":
			x.fail(p, "the agent sets --%s itself and a second one would override it: remove it", flag)
		}
	}
}

func (x *cross) probeChecks() {
	for i, pr := range x.cfg.Network.Probes {
		if pr.ICMP == "" {
			continue
		}
		if a, ok := cleanAddr(pr.ICMP); ok {
			if n, own := x.nodeAddrAt(a); own {
				x.fail(fmt.Sprintf("network.probes[%d].icmp", i), "%s is this node's own address (%s), which always answers: probe a router or a peer", a, n.path)
			}
		}
	}
}
