package probe

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// probeCase is one probe run against the lab, with what must come out.
type probeCase struct {
	name    string
	probe   Probe
	timeout time.Duration // 0: 2s
	want    error         // nil: pass; else the Kind
	wantMsg []string      // substrings of the error
}

func (c probeCase) run(t *testing.T) {
	t.Helper()
	timeout := c.timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	start := time.Now()
	err := c.probe.Run(ctx)
	took := time.Since(start)
	t.Logf("%s: %v (took %v)", c.probe.Name(), err, took.Round(time.Millisecond))
	if took > timeout+2*time.Second {
		t.Errorf("%s took %v, want it bounded by the %v timeout", c.probe.Name(), took, timeout)
	}
	if c.want == nil {
		if err != nil {
			t.Errorf("%s.Run() = %v, want nil", c.probe.Name(), err)
		}
		return
	}
	if !errors.Is(err, c.want) {
		t.Fatalf("%s.Run() = %v, want an error of kind %q", c.probe.Name(), err, c.want)
	}
	var perr *Error
	if !errors.As(err, &perr) || perr.Probe != c.probe.Name() {
		t.Errorf("%s.Run() = %#v, want *Error naming the probe", c.probe.Name(), err)
	}
	for _, s := range c.wantMsg {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s.Run() = %q, want it to mention %q", c.probe.Name(), err, s)
		}
	}
}

func TestGatewayARP(t *testing.T) {
	l := newLab(t)
	for _, c := range []probeCase{
		{name: "answers", probe: Gateway("pr0", netip.MustParseAddr("10.9.0.1"))},
		{name: "nobody", probe: Gateway("pr0", netip.MustParseAddr("10.9.0.99")), timeout: 700 * time.Millisecond,
			want: ErrTimeout, wantMsg: []string{"gateway 10.9.0.99 on pr0", "no ARP reply", "from 10.9.0.2", "check"}},
		{name: "no such interface", probe: Gateway("nosuch0", netip.MustParseAddr("10.9.0.1")),
			want: ErrUnreachable, wantMsg: []string{"no interface nosuch0"}},
	} {
		t.Run(c.name, c.run)
	}

	// The request came from 10.9.0.2, the address in the gateway's
	// subnet: the peer learned that neighbour from it.
	pr1, err := l.ph.LinkByName("pr1")
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := l.ph.NeighList(pr1.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	pr0, _ := net.InterfaceByName("pr0")
	found := false
	for _, n := range neighs {
		if n.IP.Equal(net.ParseIP("10.9.0.2")) && bytes.Equal(n.HardwareAddr, pr0.HardwareAddr) {
			found = true
		}
	}
	if !found {
		t.Errorf("peer has no neighbour entry 10.9.0.2 → %s after the ARP probe; neighbours: %v", pr0.HardwareAddr, neighs)
	}
}

func TestGatewayNDP(t *testing.T) {
	newLab(t)
	for _, c := range []probeCase{
		{name: "answers", probe: Gateway("pr0", netip.MustParseAddr("fd00:9::1"))},
		{name: "link-local answers", probe: Gateway("pr0", netip.MustParseAddr("fe80::1"))},
		{name: "nobody", probe: Gateway("pr0", netip.MustParseAddr("fd00:9::99")), timeout: 700 * time.Millisecond,
			want: ErrTimeout, wantMsg: []string{"gateway fd00:9::99 on pr0", "no neighbour advertisement", "from fd00:9::2"}},
	} {
		t.Run(c.name, c.run)
	}
}

func TestGatewayLinkDown(t *testing.T) {
	newLab(t)
	pr0, err := netlink.LinkByName("pr0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(pr0); err != nil {
		t.Fatal(err)
	}
	probeCase{probe: Gateway("pr0", netip.MustParseAddr("10.9.0.1")), want: ErrUnreachable, wantMsg: []string{"pr0 is down"}}.run(t)
}

func TestARPPacket(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	req := arpRequest(mac, netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("10.9.0.1"))
	if _, _, ok := parseARPReply(req); ok {
		t.Errorf("parseARPReply(request) ok, want requests ignored")
	}
	// Turn the request into the reply the gateway would send.
	reply := bytes.Clone(req)
	reply[7] = arpOpReply
	copy(reply[8:14], net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02})
	copy(reply[14:18], []byte{10, 9, 0, 1})
	copy(reply[18:24], mac)
	copy(reply[24:28], []byte{10, 9, 0, 2})
	gotMAC, gotIP, ok := parseARPReply(reply)
	if !ok || gotIP != netip.MustParseAddr("10.9.0.1") || gotMAC.String() != "02:00:00:00:00:02" {
		t.Errorf("parseARPReply(reply) = %v, %v, %v, want 02:00:00:00:00:02, 10.9.0.1, true", gotMAC, gotIP, ok)
	}
	if _, _, ok := parseARPReply(reply[:27]); ok {
		t.Errorf("parseARPReply(short) ok, want false")
	}
}

func TestNDPPacket(t *testing.T) {
	target := netip.MustParseAddr("2001:db8::1:2345")
	if got, want := solicitedNode(target), netip.MustParseAddr("ff02::1:ff01:2345"); got != want {
		t.Errorf("solicitedNode(%v) = %v, want %v", target, got, want)
	}
	ns := neighborSolicitation(net.HardwareAddr{2, 0, 0, 0, 0, 1}, target)
	if _, ok := parseNeighborAdvertisement(ns); ok {
		t.Errorf("parseNeighborAdvertisement(solicitation) ok, want false")
	}
	na := bytes.Clone(ns[:ndpMinLen])
	na[0] = ndpTypeNA
	if got, ok := parseNeighborAdvertisement(na); !ok || got != target {
		t.Errorf("parseNeighborAdvertisement(advertisement) = %v, %v, want %v, true", got, ok, target)
	}
}

func FuzzParseARPReply(f *testing.F) {
	f.Add(arpRequest(net.HardwareAddr{2, 0, 0, 0, 0, 1}, netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.1")))
	f.Fuzz(func(t *testing.T, b []byte) {
		if mac, ip, ok := parseARPReply(b); ok && (len(mac) != 6 || !ip.Is4()) {
			t.Errorf("parseARPReply(%x) = %v, %v, true", b, mac, ip)
		}
	})
}

func FuzzParseNeighborAdvertisement(f *testing.F) {
	f.Add(neighborSolicitation(net.HardwareAddr{2, 0, 0, 0, 0, 1}, netip.MustParseAddr("fe80::1")))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ip, ok := parseNeighborAdvertisement(b); ok && !ip.Is6() {
			t.Errorf("parseNeighborAdvertisement(%x) = %v, true", b, ip)
		}
	})
}
