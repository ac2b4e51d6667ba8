package dhcp

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// ack4 builds a DHCPACK for 192.0.2.50 from 192.0.2.1 with a one-hour
// lease, plus mods.
func ack4(t testing.TB, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 50)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1))),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(time.Hour)),
	}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Round-trip through the wire format, as a received ACK is.
	m, err = dhcpv4.FromBytes(m.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var mask24 = dhcpv4.WithNetmask(net.CIDRMask(24, 32))

func TestLeaseFromACK(t *testing.T) {
	for _, tt := range []struct {
		name    string
		mods    []dhcpv4.Modifier
		prev    *Lease
		check   func(t *testing.T, l Lease)
		wantErr string
	}{{
		name: "all options",
		mods: []dhcpv4.Modifier{mask24,
			dhcpv4.WithOption(dhcpv4.OptRouter(net.IPv4(192, 0, 2, 1), net.IPv4(192, 0, 2, 2))),
			dhcpv4.WithOption(dhcpv4.OptDNS(net.IPv4(192, 0, 2, 53), net.IPv4(192, 0, 2, 54))),
			dhcpv4.WithOption(dhcpv4.OptDomainName("example.test\x00")),
			dhcpv4.WithOption(dhcpv4.OptHostName("node-a")),
			dhcpv4.WithDomainSearchList("example.test", "corp.example"),
			dhcpv4.WithGeneric(dhcpv4.OptionInterfaceMTU, []byte{0x05, 0x78}), // 1400
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(10 * time.Minute)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(20 * time.Minute)),
		},
		check: func(t *testing.T, l Lease) {
			want := Lease{
				Interface: "eth0", Family: 4,
				Address:   netip.MustParsePrefix("192.0.2.50/24"),
				Server:    netip.MustParseAddr("192.0.2.1"),
				Router:    netip.MustParseAddr("192.0.2.1"),
				Routes:    []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("192.0.2.1")}},
				DNS:       []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("192.0.2.54")},
				Domain:    "example.test",
				Search:    []string{"example.test", "corp.example"},
				Hostname:  "node-a",
				MTU:       1400,
				Acquired:  t0,
				LeaseTime: time.Hour,
				RenewAt:   t0.Add(10 * time.Minute),
				RebindAt:  t0.Add(20 * time.Minute),
				ExpiresAt: t0.Add(time.Hour),
			}
			if g, w := mustJSON(t, l), mustJSON(t, want); g != w {
				t.Errorf("lease:\n got %s\nwant %s", g, w)
			}
		},
	}, {
		name: "option 121 overrides option 3",
		mods: []dhcpv4.Modifier{mask24,
			dhcpv4.WithOption(dhcpv4.OptRouter(net.IPv4(192, 0, 2, 1))),
			dhcpv4.WithOption(dhcpv4.OptClasslessStaticRoute(
				&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4(10, 10, 0, 0), Mask: net.CIDRMask(16, 32)}, Router: net.IPv4(192, 0, 2, 254)},
				&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4(198, 51, 100, 0), Mask: net.CIDRMask(24, 32)}, Router: net.IPv4zero},
				&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Router: net.IPv4(192, 0, 2, 9)},
			)),
		},
		check: func(t *testing.T, l Lease) {
			if l.Router.IsValid() {
				t.Errorf("Router = %s, want none (RFC 3442: ignore option 3)", l.Router)
			}
			want := []Route{
				{Dst: netip.MustParsePrefix("10.10.0.0/16"), Gateway: netip.MustParseAddr("192.0.2.254")},
				{Dst: netip.MustParsePrefix("198.51.100.0/24")}, // on-link
				{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("192.0.2.9")},
			}
			if !slices.Equal(l.Routes, want) {
				t.Errorf("Routes = %v, want %v", l.Routes, want)
			}
		},
	}, {
		name: "T1 and T2 default to 0.5 and 0.875 of the lease",
		mods: []dhcpv4.Modifier{mask24},
		check: func(t *testing.T, l Lease) {
			if got, want := l.RenewAt.Sub(t0), 30*time.Minute; got != want {
				t.Errorf("T1 = %s, want %s", got, want)
			}
			if got, want := l.RebindAt.Sub(t0), 52*time.Minute+30*time.Second; got != want {
				t.Errorf("T2 = %s, want %s", got, want)
			}
		},
	}, {
		name: "T1 above T2 and T2 above the lease are replaced",
		mods: []dhcpv4.Modifier{mask24,
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(50 * time.Minute)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(2 * time.Hour)),
		},
		check: func(t *testing.T, l Lease) {
			if got, want := l.RebindAt.Sub(t0), 52*time.Minute+30*time.Second; got != want {
				t.Errorf("T2 = %s, want %s", got, want)
			}
			if got, want := l.RenewAt.Sub(t0), 50*time.Minute; got != want {
				t.Errorf("T1 = %s, want %s (valid: below the corrected T2)", got, want)
			}
		},
	}, {
		name: "MTU below 68 is ignored",
		mods: []dhcpv4.Modifier{mask24, dhcpv4.WithGeneric(dhcpv4.OptionInterfaceMTU, []byte{0, 67})},
		check: func(t *testing.T, l Lease) {
			if l.MTU != 0 {
				t.Errorf("MTU = %d, want 0", l.MTU)
			}
		},
	}, {
		name: "/32 with an on-link router route",
		mods: []dhcpv4.Modifier{dhcpv4.WithNetmask(net.CIDRMask(32, 32))},
		check: func(t *testing.T, l Lease) {
			if want := netip.MustParsePrefix("192.0.2.50/32"); l.Address != want {
				t.Errorf("Address = %s, want %s", l.Address, want)
			}
		},
	}, {
		name:    "no subnet mask",
		wantErr: errNoSubnetMask.Error(),
	}, {
		name: "renewal without subnet mask keeps the lease's prefix",
		prev: &Lease{Address: netip.MustParsePrefix("192.0.2.50/26")},
		check: func(t *testing.T, l Lease) {
			if want := netip.MustParsePrefix("192.0.2.50/26"); l.Address != want {
				t.Errorf("Address = %s, want %s", l.Address, want)
			}
		},
	}, {
		name:    "renewal without subnet mask for another address",
		prev:    &Lease{Address: netip.MustParsePrefix("192.0.2.51/26")},
		wantErr: errNoSubnetMask.Error(),
	}, {
		name:    "non-contiguous mask",
		mods:    []dhcpv4.Modifier{dhcpv4.WithNetmask(net.IPv4Mask(255, 0, 255, 0))},
		wantErr: "invalid subnet mask",
	}, {
		name:    "no lease time",
		mods:    []dhcpv4.Modifier{mask24, dhcpv4.WithoutOption(dhcpv4.OptionIPAddressLeaseTime)},
		wantErr: "no lease time",
	}, {
		name:    "no server identifier",
		mods:    []dhcpv4.Modifier{mask24, dhcpv4.WithoutOption(dhcpv4.OptionServerIdentifier)},
		wantErr: "no server identifier",
	}, {
		name:    "no address",
		mods:    []dhcpv4.Modifier{mask24, dhcpv4.WithYourIP(net.IPv4zero)},
		wantErr: "no address",
	}, {
		name:    "malformed option 121",
		mods:    []dhcpv4.Modifier{mask24, dhcpv4.WithGeneric(dhcpv4.OptionClasslessStaticRoute, []byte{33, 1, 2})},
		wantErr: "option 121",
	}} {
		t.Run(tt.name, func(t *testing.T) {
			l, err := leaseFromACK("eth0", ack4(t, tt.mods...), t0, tt.prev, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("leaseFromACK() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("leaseFromACK() error = %v", err)
			}
			tt.check(t, l)
		})
	}
	if _, err := leaseFromACK("eth0", ack4(t), t0, nil, nil); !errors.Is(err, errNoSubnetMask) {
		t.Errorf("leaseFromACK(no mask) = %v, want errors.Is errNoSubnetMask", err)
	}
}

// FuzzLeaseFromACK feeds arbitrary packets: whatever parses must not
// panic, and an accepted lease must be consistent.
func FuzzLeaseFromACK(f *testing.F) {
	f.Add(ack4(f, mask24).ToBytes())
	f.Add(ack4(f, mask24, dhcpv4.WithGeneric(dhcpv4.OptionClasslessStaticRoute, []byte{16, 10, 10, 192, 0, 2, 254})).ToBytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		l, err := leaseFromACK("eth0", m, t0, nil, nil)
		if err != nil {
			return
		}
		if !l.Address.IsValid() || !l.Address.Addr().Is4() || !l.Server.IsValid() {
			t.Fatalf("accepted lease without address or server: %+v", l)
		}
		if l.RenewAt.After(l.RebindAt) || l.RebindAt.After(l.ExpiresAt) {
			t.Fatalf("times out of order: %+v", l)
		}
		if l.Router.IsValid() && m.Options.Has(dhcpv4.OptionClasslessStaticRoute) {
			t.Fatalf("Router set despite option 121: %+v", l)
		}
	})
}
