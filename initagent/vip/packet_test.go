package vip

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// Adverts captured from keepalived 2.2.7 (vrrp_version 3, priority 150,
// advert_int 1): IPv4 by unicast from 192.0.2.1 to 192.0.2.2 for VRID 51
// and 192.0.2.10, IPv6 from fe80::1 to ff02::12 for VRID 52 and
// 2001:db8::10.
var keepalivedAdverts = []struct {
	name     string
	src, dst string
	hex      string
	want     advert
}{
	{"ipv4", "192.0.2.1", "192.0.2.2", "313396010064f1dbc000020a",
		advert{VRID: 51, Priority: 150, Centis: 100, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}},
	{"ipv6", "fe80::1", "ff02::12", "3134960100640c7e20010db8000000000000000000000010",
		advert{VRID: 52, Priority: 150, Centis: 100, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::10")}}},
}

func TestAdvertKeepalivedBytes(t *testing.T) {
	for _, tc := range keepalivedAdverts {
		t.Run(tc.name, func(t *testing.T) {
			raw, _ := hex.DecodeString(tc.hex)
			src, dst := netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst)
			got, err := decodeAdvert(raw, src, dst)
			if err != nil {
				t.Fatalf("decodeAdvert(keepalived's packet) = %v", err)
			}
			if got.VRID != tc.want.VRID || got.Priority != tc.want.Priority || got.Centis != tc.want.Centis || len(got.Addrs) != 1 || got.Addrs[0] != tc.want.Addrs[0] {
				t.Errorf("decodeAdvert = %+v, want %+v", got, tc.want)
			}
			if enc := tc.want.marshal(src, dst); !bytes.Equal(enc, raw) {
				t.Errorf("marshal = %x, want keepalived's %x", enc, raw)
			}
		})
	}
}

func TestAdvertRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src, dst string
		a        advert
	}{
		{"v4 multicast two addrs", "10.0.0.1", "224.0.0.18", advert{VRID: 1, Priority: 254, Centis: 10,
			Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.100"), netip.MustParseAddr("10.0.0.101")}}},
		{"v6 unicast", "2001:db8::1", "2001:db8::2", advert{VRID: 255, Priority: 0, Centis: 4095,
			Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::100")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst)
			b := tc.a.marshal(src, dst)
			got, err := decodeAdvert(b, src, dst)
			if err != nil {
				t.Fatal(err)
			}
			if got.VRID != tc.a.VRID || got.Priority != tc.a.Priority || got.Centis != tc.a.Centis || len(got.Addrs) != len(tc.a.Addrs) {
				t.Fatalf("round trip = %+v, want %+v", got, tc.a)
			}
			for i := range got.Addrs {
				if got.Addrs[i] != tc.a.Addrs[i] {
					t.Errorf("Addrs[%d] = %s, want %s", i, got.Addrs[i], tc.a.Addrs[i])
				}
			}
			// The pseudo-header is covered: another destination fails.
			other := netip.MustParseAddr("10.9.9.9")
			if src.Is6() {
				other = netip.MustParseAddr("ff02::12")
			}
			if _, err := decodeAdvert(b, src, other); !errors.Is(err, errChecksum) {
				t.Errorf("decode with another destination = %v, want %v", err, errChecksum)
			}
		})
	}
}

func TestDecodeAdvertErrors(t *testing.T) {
	src, dst := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("224.0.0.18")
	good := (&advert{VRID: 7, Priority: 100, Centis: 100, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}).marshal(src, dst)
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"short", good[:7], errMalformed},
		{"vrrpv2", mod(func(b []byte) []byte { b[0] = 0x21; return b }), errVersion},
		{"type 2", mod(func(b []byte) []byte { b[0] = 0x32; return b }), errVersion},
		{"count too large", mod(func(b []byte) []byte { b[3] = 2; return b }), errMalformed},
		{"flipped bit", mod(func(b []byte) []byte { b[2] ^= 1; return b }), errChecksum},
		{"zero interval", (&advert{VRID: 7, Priority: 100, Centis: 0}).marshal(src, dst), errMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeAdvert(tc.b, src, dst); !errors.Is(err, tc.want) {
				t.Errorf("decodeAdvert = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := decodeAdvert(append(bytes.Clone(good), 0, 0), src, dst); err != nil {
		t.Errorf("decodeAdvert with trailing padding = %v, want nil", err)
	}
}

func FuzzDecodeAdvert(f *testing.F) {
	for _, tc := range keepalivedAdverts {
		raw, _ := hex.DecodeString(tc.hex)
		f.Add(raw, tc.src == "fe80::1")
	}
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		src, dst := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("224.0.0.18")
		if v6 {
			src, dst = netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::12")
		}
		a, err := decodeAdvert(b, src, dst)
		if err != nil {
			return
		}
		// The reserved bits are ignored on receipt and zero when sent, so
		// compare what the re-encoded packet decodes to.
		re := a.marshal(src, dst)
		b2, err := decodeAdvert(re, src, dst)
		if err != nil {
			t.Fatalf("re-encoding of %x (%x) does not decode: %v", b, re, err)
		}
		if b2.VRID != a.VRID || b2.Priority != a.Priority || b2.Centis != a.Centis || !slices.Equal(b2.Addrs, a.Addrs) {
			t.Errorf("%x decodes to %+v, its re-encoding to %+v", b, a, b2)
		}
	})
}
