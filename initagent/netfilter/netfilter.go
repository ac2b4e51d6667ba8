// Package netfilter programs the node's own nftables table over netlink
// (google/nftables): the source NAT of pod egress and the host firewall
// (inbound default-drop with declared openings). The table is ballast's
// alone and is replaced as a whole in one netlink batch, so the kernel
// holds either the old rules or the new ones, never a mix; kube-proxy's and
// anyone else's tables are left alone.
package netfilter

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableName is ballast's table, in the inet family (IPv4 and IPv6).
const TableName = "ballast"

// Ruleset is everything ballast's table holds.
type Ruleset struct {
	// Egress is the pod egress NAT; nil: none (a node without pods).
	Egress *Egress
	// Firewall filters inbound traffic; nil: everything is accepted.
	Firewall *Firewall
}

// Egress rewrites the source of pod traffic leaving for destinations
// outside the cluster's networks.
type Egress struct {
	Pods     []netip.Prefix // the pod networks: the sources rewritten
	Internal []netip.Prefix // pod and service networks: destinations never rewritten
	// Rules, first match wins; none means masquerade on every interface.
	// Pod traffic no rule matches keeps its pod address.
	Rules []EgressRule
}

// EgressRule is one egress choice.
type EgressRule struct {
	To        netip.Prefix // destination; zero: any of the source's family
	Interface string       // outgoing interface; empty: any
	Source    netip.Addr   // zero: masquerade (the outgoing interface's address)
}

func (r EgressRule) String() string {
	var b strings.Builder
	if r.To.IsValid() {
		fmt.Fprintf(&b, "to %s ", r.To)
	}
	if r.Interface != "" {
		fmt.Fprintf(&b, "via %s ", r.Interface)
	}
	if r.Source.IsValid() {
		fmt.Fprintf(&b, "snat to %s", r.Source)
	} else {
		b.WriteString("masquerade")
	}
	return b.String()
}

// Describe renders the ruleset for status: the firewall's openings
// ("name: match") and the egress rules, in order.
func (rs Ruleset) Describe() (firewall, egress []string) {
	if rs.Firewall != nil {
		firewall = append(firewall, "default: drop (replies, loopback and ICMP accepted)")
		for _, o := range rs.Firewall.Openings {
			firewall = append(firewall, o.Name+": "+o.String())
		}
	}
	if rs.Egress != nil {
		rules := rs.Egress.Rules
		if len(rules) == 0 {
			rules = []EgressRule{{}}
		}
		for _, r := range rules {
			egress = append(egress, r.String())
		}
	}
	return firewall, egress
}

// batchBuffer is the netlink socket's send and receive buffer for Apply's
// batch: the whole table goes in one sendmsg (about 400 KB for a thousand
// rules, more than the kernel's default socket buffer) and each message is
// acknowledged.
const batchBuffer = 16 << 20

// opTimeout bounds one netlink operation (a batch and its acknowledgements).
const opTimeout = 10 * time.Second

// New returns a connection to nftables in the network namespace netnsFD
// (0: the caller's) that can send a large table in one batch. It forces
// the buffers past net.core.wmem_max and rmem_max (CAP_NET_ADMIN, which changing
// nftables needs anyway).
func New(netnsFD int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		// Each operation dials its own socket: bound it, so a kernel that
		// never answers fails the apply (a network transaction then rolls
		// back) instead of blocking the network manager.
		if err := c.SetDeadline(time.Now().Add(opTimeout)); err != nil {
			return err
		}
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, batchBuffer)
			if serr == nil { // the kernel acknowledges every message of the batch
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, batchBuffer)
			}
		}); err != nil {
			return err
		}
		return serr
	})}
	if netnsFD != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	return nftables.New(opts...)
}

// Apply replaces ballast's table in the namespace conn talks to with rs,
// atomically.
func Apply(conn *nftables.Conn, rs Ruleset) error {
	if err := rs.validate(); err != nil {
		return err // before anything is queued on conn
	}
	table := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	// Adding first makes the delete valid whether or not the table exists;
	// the batch is one transaction.
	conn.AddTable(table)
	conn.DelTable(table)
	if rs.Egress != nil || rs.Firewall != nil {
		conn.AddTable(table)
	}
	if rs.Egress != nil {
		addEgress(conn, table, rs.Egress)
	}
	if rs.Firewall != nil {
		addFirewall(conn, table, rs.Firewall)
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", TableName, err)
	}
	return nil
}

// Remove deletes ballast's table, if there is one.
func Remove(conn *nftables.Conn) error { return Apply(conn, Ruleset{}) }

// EgressChain is the postrouting NAT chain of the egress rules.
const EgressChain = "egress"

func (rs Ruleset) validate() error {
	if rs.Egress != nil {
		for i, r := range rs.Egress.Rules {
			if r.Interface != "" {
				if _, err := ifname(r.Interface); err != nil {
					return fmt.Errorf("egress rule %d (%s): %w", i, r, err)
				}
			}
		}
	}
	if rs.Firewall != nil {
		for _, o := range rs.Firewall.Openings {
			if err := o.validate(); err != nil {
				return err
			}
		}
	}
	return nil
}

func addEgress(conn *nftables.Conn, table *nftables.Table, e *Egress) {
	chain := conn.AddChain(&nftables.Chain{
		Name: EgressChain, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	add := func(exprs ...expr.Any) {
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: exprs})
	}
	for _, p := range e.Internal {
		add(slices.Concat(family(p.Addr()), prefixMatch(daddr, p, expr.CmpOpEq), []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}})...)
	}
	rules := e.Rules
	if len(rules) == 0 {
		rules = []EgressRule{{}}
	}
	for _, r := range rules {
		for _, pod := range e.Pods {
			v4 := pod.Addr().Is4()
			if (r.To.IsValid() && r.To.Addr().Is4() != v4) || (r.Source.IsValid() && r.Source.Is4() != v4) {
				continue
			}
			exprs := slices.Concat(family(pod.Addr()), prefixMatch(saddr, pod, expr.CmpOpEq))
			if r.To.IsValid() {
				exprs = append(exprs, prefixMatch(daddr, r.To, expr.CmpOpEq)...)
			}
			if r.Interface != "" {
				name, _ := ifname(r.Interface) // validated
				exprs = append(exprs, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name})
			}
			exprs = append(exprs, &expr.Counter{})
			if r.Source.IsValid() {
				nfproto := uint32(unix.NFPROTO_IPV4)
				if !v4 {
					nfproto = unix.NFPROTO_IPV6
				}
				exprs = append(exprs, &expr.Immediate{Register: 1, Data: r.Source.AsSlice()},
					&expr.NAT{Type: expr.NATTypeSourceNAT, Family: nfproto, RegAddrMin: 1})
			} else {
				exprs = append(exprs, &expr.Masq{})
			}
			add(exprs...)
		}
	}
}

type direction int

const (
	saddr direction = iota
	daddr
)

// family matches packets of a's family (the table is inet).
func family(a netip.Addr) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	if !a.Is4() {
		proto = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// prefixMatch compares the source or destination address, masked to p's
// length, with p.
func prefixMatch(d direction, p netip.Prefix, op expr.CmpOp) []expr.Any {
	p = p.Masked()
	offset, size := uint32(12), uint32(4) // IPv4 header: saddr at 12, daddr at 16
	if !p.Addr().Is4() {
		offset, size = 8, 16 // IPv6 header: saddr at 8, daddr at 24
	}
	if d == daddr {
		offset += size
	}
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size}
	if p.Bits() == int(size*8) {
		return []expr.Any{load, &expr.Cmp{Op: op, Register: 1, Data: p.Addr().AsSlice()}}
	}
	return []expr.Any{
		load,
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: maskBytes(p.Bits(), size), Xor: make([]byte, size)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Addr().AsSlice()},
	}
}

// maskBytes is a netmask of bits ones in size bytes.
func maskBytes(bits int, size uint32) []byte {
	m := make([]byte, size)
	for i := range bits {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// ifname is an interface name as nftables compares it: NUL-padded to IFNAMSIZ.
func ifname(name string) ([]byte, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("interface name %q: want 1 to %d bytes", name, unix.IFNAMSIZ-1)
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b, nil
}
