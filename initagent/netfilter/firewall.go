package netfilter

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Firewall drops every packet addressed to the node unless it belongs to a
// connection the node made or accepted, comes from loopback, is ICMP that
// IPv4/IPv6 need (echo, errors and PMTU, neighbour and router discovery,
// MLD), or matches an Opening. Forwarded traffic (pods, Services) is not
// filtered here.
type Firewall struct {
	Openings []Opening
}

// Protocols an Opening can name.
const (
	TCP  = "tcp"
	UDP  = "udp"
	VRRP = "vrrp" // IP protocol 112
)

// Opening accepts one kind of inbound traffic.
type Opening struct {
	Name      string         // why it is open, e.g. "etcd peers": the rule's comment
	Protocol  string         // TCP, UDP or VRRP
	Ports     []PortRange    // destination ports (TCP, UDP); empty: all
	From      []netip.Prefix // sources; empty: any
	To        []netip.Addr   // destinations; empty: any of the node's
	Interface string         // incoming interface; empty: any
}

// PortRange is First–Last inclusive; Last 0 means First alone.
type PortRange struct{ First, Last uint16 }

func (r PortRange) last() uint16 {
	if r.Last == 0 {
		return r.First
	}
	return r.Last
}

func (r PortRange) String() string {
	if r.last() == r.First {
		return fmt.Sprint(r.First)
	}
	return fmt.Sprintf("%d-%d", r.First, r.last())
}

func (o Opening) String() string {
	var b strings.Builder
	b.WriteString(o.Protocol)
	if len(o.Ports) > 0 {
		var ps []string
		for _, p := range o.Ports {
			ps = append(ps, p.String())
		}
		b.WriteString(" " + strings.Join(ps, ","))
	}
	if len(o.From) > 0 {
		var fs []string
		for _, p := range o.From {
			fs = append(fs, p.String())
		}
		b.WriteString(" from " + strings.Join(fs, ","))
	}
	if len(o.To) > 0 {
		var ts []string
		for _, a := range o.To {
			ts = append(ts, a.String())
		}
		b.WriteString(" to " + strings.Join(ts, ","))
	}
	if o.Interface != "" {
		b.WriteString(" on " + o.Interface)
	}
	return b.String()
}

func (o Opening) validate() error {
	switch o.Protocol {
	case TCP, UDP:
	case VRRP:
		if len(o.Ports) > 0 {
			return fmt.Errorf("opening %q: VRRP has no ports", o.Name)
		}
	default:
		return fmt.Errorf("opening %q: protocol %q: use tcp, udp or vrrp", o.Name, o.Protocol)
	}
	for _, p := range o.Ports {
		if p.First == 0 || p.last() < p.First {
			return fmt.Errorf("opening %q: port range %s: want 1–65535, first ≤ last", o.Name, p)
		}
	}
	if o.Interface != "" {
		if _, err := ifname(o.Interface); err != nil {
			return fmt.Errorf("opening %q: %w", o.Name, err)
		}
	}
	return nil
}

// InputChain is the firewall's base chain.
const InputChain = "input"

// icmpTypes are the ICMP types the node accepts from anyone: echo, and the
// errors that path MTU discovery and diagnostics need.
var icmpTypes = []byte{3, 8, 11, 12} // destination unreachable, echo request, time exceeded, parameter problem

// icmpv6Types are RFC 4890's must-not-drop types for a host: errors,
// echo, MLD and neighbour/router discovery.
var icmpv6Types = []byte{1, 2, 3, 4, 128, 130, 131, 132, 133, 134, 135, 136, 137, 143}

func addFirewall(conn *nftables.Conn, table *nftables.Table, f *Firewall) {
	drop := nftables.ChainPolicyDrop
	chain := conn.AddChain(&nftables.Chain{
		Name: InputChain, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop,
	})
	add := func(comment string, exprs ...expr.Any) {
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, comment)})
	}
	accept := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}
	add("established, related", slices.Concat(ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept)...)
	add("invalid", slices.Concat(ctState(expr.CtStateBitINVALID), []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}})...)
	lo, _ := ifname("lo")
	add("loopback", slices.Concat([]expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: lo}}, accept)...)
	for _, t := range icmpTypes {
		add("icmp", slices.Concat(l4proto(unix.IPPROTO_ICMP), icmpType(t), accept)...)
	}
	for _, t := range icmpv6Types {
		add("icmpv6", slices.Concat(l4proto(unix.IPPROTO_ICMPV6), icmpType(t), accept)...)
	}
	for _, o := range f.Openings {
		for _, match := range o.matches() {
			add(o.Name, slices.Concat(match, accept)...)
		}
	}
}

// matches are the rules of an opening: one per source prefix and port
// range (nftables rules match one of each).
func (o Opening) matches() [][]expr.Any {
	var proto byte
	switch o.Protocol {
	case TCP:
		proto = unix.IPPROTO_TCP
	case UDP:
		proto = unix.IPPROTO_UDP
	case VRRP:
		proto = 112
	}
	froms := o.From
	if len(froms) == 0 {
		froms = []netip.Prefix{{}}
	}
	ports := o.Ports
	if len(ports) == 0 {
		ports = []PortRange{{}}
	}
	tos := o.To
	if len(tos) == 0 {
		tos = []netip.Addr{{}}
	}
	var out [][]expr.Any
	for _, from := range froms {
		for _, to := range tos {
			if from.IsValid() && to.IsValid() && from.Addr().Is4() != to.Is4() {
				continue
			}
			for _, pr := range ports {
				var e []expr.Any
				if from.IsValid() {
					e = append(e, family(from.Addr())...)
					e = append(e, prefixMatch(saddr, from, expr.CmpOpEq)...)
				}
				if to.IsValid() {
					if !from.IsValid() {
						e = append(e, family(to)...)
					}
					e = append(e, prefixMatch(daddr, netip.PrefixFrom(to, to.BitLen()), expr.CmpOpEq)...)
				}
				if o.Interface != "" {
					name, _ := ifname(o.Interface) // validated
					e = append(e, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name})
				}
				e = append(e, l4proto(proto)...)
				if pr.First != 0 {
					e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
					if pr.last() == pr.First {
						e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, pr.First)})
					} else {
						e = append(e, &expr.Range{Op: expr.CmpOpEq, Register: 1,
							FromData: binary.BigEndian.AppendUint16(nil, pr.First), ToData: binary.BigEndian.AppendUint16(nil, pr.last())})
					}
				}
				out = append(out, e)
			}
		}
	}
	return out
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// icmpType matches the ICMP or ICMPv6 type (the transport header's first byte).
func icmpType(t byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{t}},
	}
}

// ctState matches connections in any of the states (CtStateBit* values).
func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}
