package dhcp

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/insomniacslk/dhcp/rfc1035label"
)

var (
	testIAID   = [4]byte{1, 2, 3, 4}
	testServer = netip.MustParseAddr("fe80::1")
)

// reply6 builds a Reply with a server ID, DNS and search list, plus opts.
func reply6(t testing.TB, opts ...dhcpv6.Option) *dhcpv6.Message {
	t.Helper()
	m, err := dhcpv6.NewMessage()
	if err != nil {
		t.Fatal(err)
	}
	m.MessageType = dhcpv6.MessageTypeReply
	m.AddOption(dhcpv6.OptServerID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}}))
	m.AddOption(dhcpv6.OptDNS(net.ParseIP("2001:db8::53")))
	m.AddOption(dhcpv6.OptDomainSearchList(&rfc1035label.Labels{Labels: []string{"example.test"}}))
	for _, o := range opts {
		m.AddOption(o)
	}
	m, err = dhcpv6.MessageFromBytes(m.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ia6(t1, t2 time.Duration, opts ...dhcpv6.Option) *dhcpv6.OptIANA {
	ia := &dhcpv6.OptIANA{IaId: testIAID, T1: t1, T2: t2}
	for _, o := range opts {
		ia.Options.Add(o)
	}
	return ia
}

func addr6(s string, preferred, valid time.Duration) *dhcpv6.OptIAAddress {
	return &dhcpv6.OptIAAddress{IPv6Addr: net.ParseIP(s), PreferredLifetime: preferred, ValidLifetime: valid}
}

func TestLeaseFromReply6(t *testing.T) {
	for _, tt := range []struct {
		name      string
		opts      []dhcpv6.Option
		stateless bool
		check     func(t *testing.T, l Lease)
		wantErr   string
	}{{
		name: "address with server T1 and T2",
		opts: []dhcpv6.Option{ia6(100*time.Second, 160*time.Second, addr6("2001:db8::100", 200*time.Second, 300*time.Second))},
		check: func(t *testing.T, l Lease) {
			if want := netip.MustParsePrefix("2001:db8::100/128"); l.Address != want {
				t.Errorf("Address = %s, want %s", l.Address, want)
			}
			if l.Family != 6 || l.Server != testServer || len(l.ServerID) == 0 {
				t.Errorf("Family %d Server %s ServerID %x", l.Family, l.Server, l.ServerID)
			}
			if want := []netip.Addr{netip.MustParseAddr("2001:db8::53")}; !slices.Equal(l.DNS, want) {
				t.Errorf("DNS = %v, want %v", l.DNS, want)
			}
			if want := []string{"example.test"}; !slices.Equal(l.Search, want) {
				t.Errorf("Search = %v, want %v", l.Search, want)
			}
			for _, x := range []struct {
				name string
				at   time.Time
				want time.Duration
			}{{"RenewAt", l.RenewAt, 100 * time.Second}, {"RebindAt", l.RebindAt, 160 * time.Second},
				{"PreferredUntil", l.PreferredUntil, 200 * time.Second}, {"ExpiresAt", l.ExpiresAt, 300 * time.Second}} {
				if got := x.at.Sub(t0); got != x.want {
					t.Errorf("%s = +%s, want +%s", x.name, got, x.want)
				}
			}
			if l.LeaseTime != 300*time.Second {
				t.Errorf("LeaseTime = %s, want 5m", l.LeaseTime)
			}
		},
	}, {
		name: "T1 and T2 of zero: 0.5 and 0.8 of the preferred lifetime",
		opts: []dhcpv6.Option{ia6(0, 0, addr6("2001:db8::100", 200*time.Second, 300*time.Second))},
		check: func(t *testing.T, l Lease) {
			if got := l.RenewAt.Sub(t0); got != 100*time.Second {
				t.Errorf("T1 = %s, want 100s", got)
			}
			if got := l.RebindAt.Sub(t0); got != 160*time.Second {
				t.Errorf("T2 = %s, want 160s", got)
			}
		},
	}, {
		name: "address with zero valid lifetime is skipped",
		opts: []dhcpv6.Option{ia6(0, 0, addr6("2001:db8::99", 0, 0), addr6("2001:db8::100", 200*time.Second, 300*time.Second))},
		check: func(t *testing.T, l Lease) {
			if want := netip.MustParsePrefix("2001:db8::100/128"); l.Address != want {
				t.Errorf("Address = %s, want %s", l.Address, want)
			}
		},
	}, {
		name:      "information-request",
		stateless: true,
		check: func(t *testing.T, l Lease) {
			if l.Address.IsValid() {
				t.Errorf("Address = %s, want none", l.Address)
			}
			if got := l.RenewAt.Sub(t0); got != irtDefault {
				t.Errorf("refresh = %s, want %s", got, irtDefault)
			}
		},
	}, {
		name:    "no IA_NA",
		wantErr: "no IA_NA",
	}, {
		name:    "IA_NA status NoAddrsAvail",
		opts:    []dhcpv6.Option{ia6(0, 0, &dhcpv6.OptStatusCode{StatusCode: iana.StatusNoAddrsAvail, StatusMessage: "full"})},
		wantErr: "IA_NA status NoAddrsAvail: full",
	}, {
		name:    "reply status",
		opts:    []dhcpv6.Option{&dhcpv6.OptStatusCode{StatusCode: iana.StatusUnspecFail}},
		wantErr: "reply status UnspecFail",
	}, {
		name:    "T1 above T2",
		opts:    []dhcpv6.Option{ia6(200*time.Second, 100*time.Second, addr6("2001:db8::100", 200*time.Second, 300*time.Second))},
		wantErr: "above T2",
	}, {
		name:    "preferred above valid",
		opts:    []dhcpv6.Option{ia6(0, 0, addr6("2001:db8::100", 400*time.Second, 300*time.Second))},
		wantErr: "no usable address",
	}} {
		t.Run(tt.name, func(t *testing.T) {
			iaid := &testIAID
			if tt.stateless {
				iaid = nil
			}
			l, err := leaseFromReply6("eth0", reply6(t, tt.opts...), iaid, testServer, t0)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("leaseFromReply6() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("leaseFromReply6() error = %v", err)
			}
			tt.check(t, l)
		})
	}
}

func FuzzLeaseFromReply6(f *testing.F) {
	f.Add(reply6(f, ia6(0, 0, addr6("2001:db8::100", 200*time.Second, 300*time.Second))).ToBytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := dhcpv6.MessageFromBytes(b)
		if err != nil {
			return
		}
		l, err := leaseFromReply6("eth0", m, &testIAID, testServer, t0)
		if err != nil {
			return
		}
		if l.Address.Bits() != 128 || !l.Address.Addr().Is6() {
			t.Fatalf("accepted lease with address %s", l.Address)
		}
		if l.RenewAt.After(l.RebindAt) || l.RebindAt.After(l.ExpiresAt) || l.PreferredUntil.After(l.ExpiresAt) {
			t.Fatalf("times out of order: %+v", l)
		}
	})
}
