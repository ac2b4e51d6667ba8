package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
)

// Information refresh times (RFC 8415 §7.6, §21.23).
const (
	irtDefault = 24 * time.Hour    // IRT_DEFAULT
	irtMinimum = 600 * time.Second // IRT_MINIMUM
)

// statusError is a DHCPv6 status code other than Success (RFC 8415 §21.13).
type statusError struct {
	Where string // "reply" or "IA_NA"
	Code  iana.StatusCode
	Msg   string
}

func (e *statusError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("%s status %s", e.Where, e.Code)
	}
	return fmt.Sprintf("%s status %s: %s", e.Where, e.Code, e.Msg)
}

func checkStatus(where string, st *dhcpv6.OptStatusCode) error {
	if st == nil || st.StatusCode == iana.StatusSuccess {
		return nil
	}
	return &statusError{Where: where, Code: st.StatusCode, Msg: st.StatusMessage}
}

// isStatus reports whether err is a statusError with code.
func isStatus(err error, code iana.StatusCode) bool {
	se, ok := errors.AsType[*statusError](err)
	return ok && se.Code == code
}

// findIANA returns the IA_NA with iaid in m, or nil.
func findIANA(m *dhcpv6.Message, iaid [4]byte) *dhcpv6.OptIANA {
	for _, ia := range m.Options.IANA() {
		if ia.IaId == iaid {
			return ia
		}
	}
	return nil
}

// usableAddr returns the first address of ia with a non-zero valid lifetime
// and a preferred lifetime not above it (RFC 8415 §21.6: the client MUST
// discard any other).
func usableAddr(ia *dhcpv6.OptIANA) *dhcpv6.OptIAAddress {
	for _, a := range ia.Options.Addresses() {
		if a.ValidLifetime > 0 && a.PreferredLifetime <= a.ValidLifetime && a.IPv6Addr.To16() != nil && a.IPv6Addr.To4() == nil &&
			checkStatus("address", a.Options.Status()) == nil {
			return a
		}
	}
	return nil
}

// leaseFromReply6 turns a DHCPv6 Reply received at now from the address
// from into a Lease: the IA_NA address when iaid is non-nil (stateful), or
// only the configuration options (information-request).
func leaseFromReply6(iface string, reply *dhcpv6.Message, iaid *[4]byte, from netip.Addr, now time.Time) (Lease, error) {
	if err := checkStatus("reply", reply.Options.Status()); err != nil {
		return Lease{}, err
	}
	l := Lease{Interface: iface, Family: 6, Server: from, Acquired: now}
	if sid := reply.Options.ServerID(); sid != nil {
		l.ServerID = sid.ToBytes()
	}
	for _, ip := range reply.Options.DNS() {
		if a, ok := netip.AddrFromSlice(ip); ok && a.Is6() && !a.Is4In6() && !a.IsUnspecified() {
			l.DNS = append(l.DNS, a)
		}
	}
	if s := reply.Options.DomainSearchList(); s != nil {
		l.Search = append(l.Search, s.Labels...)
	}

	if iaid == nil {
		// RFC 8415 §21.23: refresh after the server's time (not below
		// IRT_MINIMUM), or IRT_DEFAULT when it gives none.
		irt := max(reply.Options.InformationRefreshTime(irtDefault), irtMinimum)
		l.RenewAt = now.Add(irt)
		return l, nil
	}

	ia := findIANA(reply, *iaid)
	if ia == nil {
		return Lease{}, fmt.Errorf("reply has no IA_NA %x", *iaid)
	}
	if err := checkStatus("IA_NA", ia.Options.Status()); err != nil {
		return Lease{}, err
	}
	if ia.T1 > ia.T2 && ia.T2 > 0 {
		// RFC 8415 §21.4: the client MUST discard such an IA_NA.
		return Lease{}, fmt.Errorf("IA_NA has T1 %s above T2 %s", ia.T1, ia.T2)
	}
	a := usableAddr(ia)
	if a == nil {
		return Lease{}, errors.New("IA_NA holds no usable address")
	}
	addr, _ := netip.AddrFromSlice(a.IPv6Addr.To16())
	// DHCPv6 conveys no prefix length: the address is a /128, and the
	// on-link prefix comes from router advertisements (RFC 8415 §21.6,
	// RFC 5942).
	l.Address = netip.PrefixFrom(addr, 128)
	l.LeaseTime = a.ValidLifetime
	l.ExpiresAt = now.Add(a.ValidLifetime)
	l.PreferredUntil = now.Add(a.PreferredLifetime)
	// T1 or T2 of 0 leaves the times to the client: 0.5 and 0.8 of the
	// preferred lifetime (RFC 8415 §21.4, §18.2.4).
	t1, t2 := ia.T1, ia.T2
	if t1 == 0 {
		t1 = a.PreferredLifetime / 2
	}
	if t2 == 0 {
		t2 = a.PreferredLifetime * 4 / 5
	}
	t2 = min(max(t2, t1), a.ValidLifetime)
	t1 = min(t1, t2)
	l.RenewAt = now.Add(t1)
	l.RebindAt = now.Add(t2)
	return l, nil
}

// linkLocal returns a link-local IPv6 address of ifc.
func linkLocal(ifc *net.Interface) (netip.Addr, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses: %w", err)
	}
	for _, x := range addrs {
		if ipn, ok := x.(*net.IPNet); ok && ipn.IP.To4() == nil && ipn.IP.IsLinkLocalUnicast() {
			a, _ := netip.AddrFromSlice(ipn.IP)
			return a.WithZone(ifc.Name), nil
		}
	}
	return netip.Addr{}, errors.New("no IPv6 link-local address on the interface (IPv6 disabled, or link down?)")
}
