package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// requestedOptions4 returns the parameter request list (option 55) sent in
// every DISCOVER and REQUEST: everything leaseFromACK reads.
func requestedOptions4() []dhcpv4.OptionCode {
	return []dhcpv4.OptionCode{
		dhcpv4.OptionSubnetMask,           // 1
		dhcpv4.OptionRouter,               // 3
		dhcpv4.OptionDomainNameServer,     // 6
		dhcpv4.OptionHostName,             // 12
		dhcpv4.OptionDomainName,           // 15
		dhcpv4.OptionInterfaceMTU,         // 26
		dhcpv4.OptionIPAddressLeaseTime,   // 51
		dhcpv4.OptionRenewTimeValue,       // 58
		dhcpv4.OptionRebindingTimeValue,   // 59
		dhcpv4.OptionDNSDomainSearchList,  // 119
		dhcpv4.OptionClasslessStaticRoute, // 121
	}
}

// minMTU4 is the smallest MTU option 26 may carry (RFC 2132 §5.1).
const minMTU4 = 68

// errNoSubnetMask is returned for an ACK without option 1: the prefix length
// of the address is then unknown, and guessing (/24, or the classful mask)
// configures a wrong on-link range.
var errNoSubnetMask = errors.New("no subnet mask (option 1) in DHCPACK; refusing to guess a prefix length")

// leaseFromACK turns a DHCPACK received at now into a Lease. prev, when
// non-nil, is the lease being extended: its prefix length is kept if a
// renewal ACK leaves out the subnet mask (some servers send only the
// changed options on renewal), which is not a guess. Options that are
// present but unusable are reported to log and left out.
func leaseFromACK(iface string, ack *dhcpv4.DHCPv4, now time.Time, prev *Lease, log *slog.Logger) (Lease, error) {
	log = discardLogger(log)
	l := Lease{Interface: iface, Family: 4, Acquired: now}

	addr, ok := addr4(ack.YourIPAddr)
	if !ok || addr.IsUnspecified() {
		return Lease{}, fmt.Errorf("DHCPACK carries no address (yiaddr %v)", ack.YourIPAddr)
	}
	var bits int
	switch mask := ack.SubnetMask(); {
	case mask != nil:
		ones, size := mask.Size()
		if size != 32 || ones == 0 {
			return Lease{}, fmt.Errorf("invalid subnet mask %s (option 1) in DHCPACK", net.IP(mask))
		}
		bits = ones
	case prev != nil && prev.Address.Addr() == addr:
		bits = prev.Address.Bits()
	default:
		return Lease{}, errNoSubnetMask
	}
	l.Address = netip.PrefixFrom(addr, bits)

	server, ok := addr4(ack.ServerIdentifier())
	if !ok || server.IsUnspecified() {
		return Lease{}, errors.New("no server identifier (option 54) in DHCPACK")
	}
	l.Server = server

	// Option 51 is mandatory in a DHCPACK to a DHCPREQUEST (RFC 2131
	// §4.3.1, Table 3). 0xffffffff means "infinite" and gives 136 years,
	// which is as good.
	lt := ack.IPAddressLeaseTime(0)
	if lt <= 0 {
		return Lease{}, errors.New("no lease time (option 51) in DHCPACK")
	}
	l.LeaseTime = lt
	// RFC 2131 §4.4.5: T1 defaults to 0.5 and T2 to 0.875 of the lease.
	// Values out of order (T1 ≤ T2 ≤ lease) are replaced by the defaults.
	t2 := ack.IPAddressRebindingTime(lt * 7 / 8)
	if t2 <= 0 || t2 > lt {
		log.Warn("ignoring invalid T2 (option 59)", "t2", t2, "leaseTime", lt)
		t2 = lt * 7 / 8
	}
	t1 := ack.IPAddressRenewalTime(lt / 2)
	if t1 <= 0 || t1 > t2 {
		log.Warn("ignoring invalid T1 (option 58)", "t1", t1, "t2", t2)
		t1 = min(lt/2, t2)
	}
	l.RenewAt = now.Add(t1)
	l.RebindAt = now.Add(t2)
	l.ExpiresAt = now.Add(lt)

	if ack.Options.Has(dhcpv4.OptionClasslessStaticRoute) {
		// RFC 3442 §2: with option 121 the client MUST ignore option 3. A
		// malformed option 121 is an error rather than a fallback to
		// option 3: the server meant other routes than option 3 gives.
		routes := ack.ClasslessStaticRoute()
		if routes == nil {
			return Lease{}, errors.New("malformed classless static routes (option 121) in DHCPACK")
		}
		for _, r := range routes {
			dst, ok := addr4(r.Dest.IP)
			ones, size := r.Dest.Mask.Size()
			if !ok || size != 32 {
				return Lease{}, fmt.Errorf("invalid destination %v in option 121", r.Dest)
			}
			gw, ok := addr4(r.Router)
			if !ok {
				return Lease{}, fmt.Errorf("invalid gateway %v in option 121", r.Router)
			}
			route := Route{Dst: netip.PrefixFrom(dst, ones).Masked()}
			if !gw.IsUnspecified() { // 0.0.0.0: on-link (RFC 3442 §3)
				route.Gateway = gw
			}
			l.Routes = append(l.Routes, route)
		}
	} else {
		for _, ip := range ack.Router() {
			if gw, ok := addr4(ip); ok && !gw.IsUnspecified() {
				l.Router = gw
				l.Routes = []Route{{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gateway: gw}}
				break
			}
		}
	}

	for _, ip := range ack.DNS() {
		if a, ok := addr4(ip); ok && !a.IsUnspecified() {
			l.DNS = append(l.DNS, a)
		} else {
			log.Warn("ignoring invalid DNS server (option 6)", "dns", ip)
		}
	}
	// Some servers NUL-terminate strings (RFC 2132 §2 says they should not).
	l.Domain = strings.TrimRight(ack.DomainName(), "\x00")
	l.Hostname = strings.TrimRight(ack.HostName(), "\x00")
	if s := ack.DomainSearch(); s != nil {
		l.Search = append(l.Search, s.Labels...)
	}
	if v := ack.Options.Get(dhcpv4.OptionInterfaceMTU); v != nil {
		if len(v) != 2 {
			log.Warn("ignoring malformed interface MTU (option 26)", "len", len(v))
		} else if mtu := int(binary.BigEndian.Uint16(v)); mtu < minMTU4 {
			log.Warn("ignoring interface MTU below 68 (option 26, RFC 2132 §5.1)", "mtu", mtu)
		} else {
			l.MTU = mtu
		}
	}
	return l, nil
}

func addr4(ip net.IP) (netip.Addr, bool) {
	ip4 := ip.To4()
	if ip4 == nil {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(ip4)), true
}
