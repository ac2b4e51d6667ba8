package dhcp

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// dnsmasq4 are the DHCPv4 flags every test uses: a range of 11 addresses
// with the shortest lease dnsmasq allows (2 minutes).
var dnsmasq4 = []string{
	"--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m",
	"--dhcp-option=option:router,192.0.2.1",
	"--dhcp-option=option:dns-server,192.0.2.53",
	"--dhcp-option=option:domain-name,example.test",
	"--dhcp-option=26,1400",
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testConfig4 is a client with short timeouts, so that a failing test
// fails fast; the deadlines the tests wait with are much longer.
func testConfig4(t *testing.T, ev *events) Config4 {
	return Config4{
		Interface:  clientIf,
		Hostname:   "node-a",
		Log:        testLogger(t),
		OnLease:    ev.onLease,
		OnExpire:   ev.onExpire,
		Timeout:    time.Second,
		Retries:    3,
		MinBackoff: 200 * time.Millisecond,
		MaxBackoff: 2 * time.Second,
	}
}

func startClient4(t *testing.T, tn *testNet, cfg Config4) (stop func() error) {
	t.Helper()
	c, err := NewClient4(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tn.inClientNS(t, c.Run)
}

func clientMAC(t *testing.T, tn *testNet) string {
	t.Helper()
	nh, err := netlink.NewHandleAt(tn.client)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	link, err := nh.LinkByName(clientIf)
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().HardwareAddr.String()
}

func inRange4(a netip.Addr) bool {
	return a.Compare(netip.MustParseAddr("192.0.2.50")) >= 0 && a.Compare(netip.MustParseAddr("192.0.2.60")) <= 0
}

// TestClient4Lease gets a lease with every option the client parses, then
// stops and checks the lease was released and forgotten.
func TestClient4Lease(t *testing.T) {
	t.Parallel()
	tn := newTestNet(t)
	mac := clientMAC(t, tn)
	d := tn.startDnsmasq(t, append(slices.Clone(dnsmasq4),
		"--dhcp-option=121,10.10.0.0/16,192.0.2.254",
		"--dhcp-option=option:domain-search,example.test,corp.example",
		"--dhcp-option=option:T1,30",
		"--dhcp-option=option:T2,90",
		"--dhcp-host="+mac+",node-b",
	)...)
	ev := newEvents()
	cfg := testConfig4(t, ev)
	cfg.LeaseDir = t.TempDir()
	stop := startClient4(t, tn, cfg)

	l := waitFor(t, ev.leases, "lease")
	if !inRange4(l.Address.Addr()) || l.Address.Bits() != 24 {
		t.Errorf("Address = %s, want 192.0.2.50-60/24", l.Address)
	}
	want := Lease{
		Interface: clientIf, Family: 4,
		Address: l.Address,
		Server:  netip.MustParseAddr("192.0.2.1"),
		// Router stays invalid: option 121 is present (RFC 3442).
		Routes:    []Route{{Dst: netip.MustParsePrefix("10.10.0.0/16"), Gateway: netip.MustParseAddr("192.0.2.254")}},
		DNS:       []netip.Addr{netip.MustParseAddr("192.0.2.53")},
		Domain:    "example.test",
		Search:    []string{"example.test", "corp.example"},
		Hostname:  "node-b",
		MTU:       1400,
		LeaseTime: 2 * time.Minute,
	}
	got := l
	got.Acquired, got.RenewAt, got.RebindAt, got.ExpiresAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
		t.Errorf("lease:\n got %s\nwant %s", g, w)
	}
	for _, x := range []struct {
		name      string
		at        time.Time
		wantAfter time.Duration
	}{{"RenewAt", l.RenewAt, 30 * time.Second}, {"RebindAt", l.RebindAt, 90 * time.Second}, {"ExpiresAt", l.ExpiresAt, 2 * time.Minute}} {
		if got := x.at.Sub(l.Acquired); got != x.wantAfter {
			t.Errorf("%s - Acquired = %s, want %s", x.name, got, x.wantAfter)
		}
	}
	d.waitLog(t, "DHCPACK(", l.Address.Addr().String(), "node-b")
	if _, err := os.Stat(leaseFile(cfg.LeaseDir, clientIf, 4)); err != nil {
		t.Errorf("lease not persisted: %v", err)
	}
	if !strings.Contains(d.leases(), l.Address.Addr().String()) {
		t.Errorf("dnsmasq lease file lacks %s:\n%s", l.Address.Addr(), d.leases())
	}

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if e := waitFor(t, ev.expired, "OnExpire after release"); e.Address != l.Address {
		t.Errorf("OnExpire(%s), want %s", e.Address, l.Address)
	}
	d.waitLog(t, "DHCPRELEASE(", l.Address.Addr().String())
	d.waitLeaseGone(t, l.Address.Addr().String())
	if _, err := os.Stat(leaseFile(cfg.LeaseDir, clientIf, 4)); !os.IsNotExist(err) {
		t.Errorf("persisted lease not removed after release: %v", err)
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestClient4Renew waits for a renewal at T1, once with the leased address
// applied to the interface (unicast renewal through a UDP socket, the normal
// case once netconf has applied the lease) and once without it (the
// broadcast fallback).
// TestClient4WaitsForCarrier: a client started while its link has no
// carrier (the peer is down, as an e1000e still negotiating) sends its
// DISCOVER once the carrier comes, not into the void (the e1000e drops it)
// or into an error (a veth refuses it): with a retransmission timeout and a
// retry backoff longer than the test waits, only that first DISCOVER can
// bring the lease.
func TestClient4WaitsForCarrier(t *testing.T) {
	t.Parallel()
	tn := newTestNet(t)
	d := tn.startDnsmasq(t, dnsmasq4...)
	run(t, "ip", "-n", tn.serverNS, "link", "set", serverIf, "down")
	tn.waitCarrier(t, false) // the kernel tells carrier changes a moment later
	ev := newEvents()
	cfg := testConfig4(t, ev)
	cfg.Timeout = 2 * waitLong
	cfg.MinBackoff, cfg.MaxBackoff = 2*waitLong, 2*waitLong
	startClient4(t, tn, cfg)
	time.Sleep(time.Second) // the client is up and waiting
	run(t, "ip", "-n", tn.serverNS, "link", "set", serverIf, "up")
	l := waitFor(t, ev.leases, "lease after the carrier came up")
	if !inRange4(l.Address.Addr()) {
		t.Errorf("Address = %s, want 192.0.2.50-60", l.Address)
	}
	if n := d.transactions("DHCPDISCOVER"); n != 1 {
		t.Errorf("dnsmasq saw %d DISCOVER transactions, want 1", n)
	}
}

func TestClient4Renew(t *testing.T) {
	t.Parallel()
	for _, applyAddr := range []bool{true, false} {
		name := map[bool]string{true: "unicast", false: "broadcast"}[applyAddr]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tn := newTestNet(t)
			d := tn.startDnsmasq(t, append(slices.Clone(dnsmasq4), "--dhcp-option=option:T1,3")...)
			ev := newEvents()
			cfg := testConfig4(t, ev)
			if applyAddr {
				cfg.OnLease = func(l Lease) {
					if err := tn.addClientAddr(l.Address); err != nil {
						t.Errorf("apply %s: %v", l.Address, err)
					}
					ev.onLease(l)
				}
			}
			startClient4(t, tn, cfg)

			first := waitFor(t, ev.leases, "lease")
			// Without option 121, option 3 gives the router and the default route.
			if want := netip.MustParseAddr("192.0.2.1"); first.Router != want {
				t.Errorf("Router = %s, want %s", first.Router, want)
			}
			if want := []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("192.0.2.1")}}; !slices.Equal(first.Routes, want) {
				t.Errorf("Routes = %v, want %v", first.Routes, want)
			}
			if got := first.RenewAt.Sub(first.Acquired); got != 3*time.Second {
				t.Errorf("T1 = %s, want 3s", got)
			}
			// T2 was not sent: RFC 2131's default is 0.875 of the lease.
			if got, want := first.RebindAt.Sub(first.Acquired), 2*time.Minute*7/8; got != want {
				t.Errorf("T2 = %s, want %s", got, want)
			}

			second := waitFor(t, ev.leases, "renewed lease")
			if second.Address != first.Address {
				t.Errorf("renewal gave %s, want %s", second.Address, first.Address)
			}
			if !second.Acquired.After(first.Acquired) {
				t.Errorf("renewed lease acquired at %s, not after %s", second.Acquired, first.Acquired)
			}
			addr := first.Address.Addr().String()
			if n := d.transactions("DHCPACK(", addr); n < 2 {
				t.Errorf("dnsmasq logged %d DHCPACKs for %s, want 2 (bound + renewed)", n, addr)
			}
			if n := d.transactions("DHCPDISCOVER("); n != 1 {
				t.Errorf("dnsmasq logged %d DHCPDISCOVERs, want 1 (a renewal does not discover)", n)
			}
			select {
			case e := <-ev.expired:
				t.Errorf("OnExpire(%s) while renewing", e.Address)
			default:
			}
		})
	}
}

// TestClient4Rebind makes the server unreachable by unicast from the
// client, as when the server that granted the lease is gone: a permanent
// neighbour entry sends frames for 192.0.2.1 to a MAC nobody has. The
// renewal at T1 fails and the lease is extended by the broadcast at T2.
func TestClient4Rebind(t *testing.T) {
	t.Parallel()
	tn := newTestNet(t)
	run(t, "ip", "-n", tn.clientNS, "neigh", "add", "192.0.2.1", "lladdr", "02:00:00:00:00:99", "dev", clientIf, "nud", "permanent")
	d := tn.startDnsmasq(t, append(slices.Clone(dnsmasq4), "--dhcp-option=option:T1,2", "--dhcp-option=option:T2,4")...)
	ev := newEvents()
	cfg := testConfig4(t, ev)
	cfg.OnLease = func(l Lease) {
		if err := tn.addClientAddr(l.Address); err != nil {
			t.Errorf("apply %s: %v", l.Address, err)
		}
		ev.onLease(l)
	}
	c, err := NewClient4(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tn.inClientNS(t, c.Run)

	first := waitFor(t, ev.leases, "lease")
	if got := first.RebindAt.Sub(first.Acquired); got != 4*time.Second {
		t.Fatalf("T2 = %s, want 4s", got)
	}
	second := waitFor(t, ev.leases, "rebound lease")
	if second.Address != first.Address {
		t.Errorf("rebinding gave %s, want %s", second.Address, first.Address)
	}
	if second.Acquired.Before(first.RebindAt) {
		t.Errorf("lease extended at %s, before T2 %s: the unicast renewal got through", second.Acquired, first.RebindAt)
	}
	if n := d.transactions("DHCPACK(", first.Address.Addr().String()); n < 2 {
		t.Errorf("dnsmasq logged %d DHCPACKs, want 2 (bound + rebound)", n)
	}
	if n := d.transactions("DHCPDISCOVER("); n != 1 {
		t.Errorf("dnsmasq logged %d DHCPDISCOVERs, want 1", n)
	}
}

// TestClient4Reboot restarts a client that kept its lease: the second
// client gets the address back with INIT-REBOOT, without DHCPDISCOVER.
func TestClient4Reboot(t *testing.T) {
	t.Parallel()
	tn := newTestNet(t)
	d := tn.startDnsmasq(t, dnsmasq4...)
	dir := t.TempDir()

	ev1 := newEvents()
	cfg := testConfig4(t, ev1)
	cfg.LeaseDir = dir
	cfg.KeepLease = true
	stop1 := startClient4(t, tn, cfg)
	first := waitFor(t, ev1.leases, "lease")
	if err := stop1(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ev1.expired:
		t.Errorf("OnExpire(%s) on stop with KeepLease", e.Address)
	default:
	}
	if _, err := os.Stat(leaseFile(dir, clientIf, 4)); err != nil {
		t.Fatalf("KeepLease: lease file: %v", err)
	}

	ev2 := newEvents()
	cfg = testConfig4(t, ev2)
	cfg.LeaseDir = dir
	startClient4(t, tn, cfg)
	second := waitFor(t, ev2.leases, "lease after restart")
	if second.Address != first.Address {
		t.Errorf("after restart got %s, want %s", second.Address, first.Address)
	}
	addr := first.Address.Addr().String()
	if n := d.transactions("DHCPDISCOVER("); n != 1 {
		t.Errorf("dnsmasq logged %d DHCPDISCOVERs, want 1 (INIT-REBOOT does not discover)", n)
	}
	if n := d.transactions("DHCPREQUEST(", addr); n != 2 {
		t.Errorf("dnsmasq logged %d DHCPREQUESTs for %s, want 2", n, addr)
	}
	if n := d.transactions("DHCPRELEASE("); n != 0 {
		t.Errorf("dnsmasq logged %d DHCPRELEASEs, want none with KeepLease", n)
	}
}

// TestClient4RebootRefused starts with a persisted lease for an address of
// another network. An authoritative server refuses it with DHCPNAK; a
// non-authoritative one (dnsmasq's default) stays silent. Either way the
// client then discovers and persists its new lease.
func TestClient4RebootRefused(t *testing.T) {
	t.Parallel()
	for _, authoritative := range []bool{true, false} {
		name := map[bool]string{true: "nak", false: "silent"}[authoritative]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tn := newTestNet(t)
			args := slices.Clone(dnsmasq4)
			if authoritative {
				args = append(args, "--dhcp-authoritative")
			}
			d := tn.startDnsmasq(t, args...)
			dir := t.TempDir()
			now := time.Now()
			stale := Lease{
				Interface: clientIf, Family: 4,
				Address:   netip.MustParsePrefix("198.51.100.7/24"),
				Server:    netip.MustParseAddr("198.51.100.1"),
				Acquired:  now,
				LeaseTime: time.Hour,
				RenewAt:   now.Add(30 * time.Minute),
				RebindAt:  now.Add(50 * time.Minute),
				ExpiresAt: now.Add(time.Hour),
			}
			s := store{dir: dir, iface: clientIf, family: 4}
			if err := s.save(stale); err != nil {
				t.Fatal(err)
			}
			ev := newEvents()
			cfg := testConfig4(t, ev)
			cfg.LeaseDir = dir
			startClient4(t, tn, cfg)
			l := waitFor(t, ev.leases, "lease")
			if !inRange4(l.Address.Addr()) {
				t.Errorf("Address = %s, want 192.0.2.50-60", l.Address)
			}
			// A non-authoritative dnsmasq ignores the request without logging it.
			if n := d.transactions("DHCPREQUEST(", "198.51.100.7"); authoritative && n != 1 {
				t.Errorf("dnsmasq saw %d INIT-REBOOT requests for 198.51.100.7, want 1", n)
			}
			if got, want := d.transactions("DHCPNAK("), map[bool]int{true: 1, false: 0}[authoritative]; got != want {
				t.Errorf("dnsmasq sent %d DHCPNAKs, want %d", got, want)
			}
			if n := d.transactions("DHCPDISCOVER("); n != 1 {
				t.Errorf("dnsmasq logged %d DHCPDISCOVERs, want 1", n)
			}
			got, ok := s.load(time.Now())
			if !ok || got.Address != l.Address {
				t.Errorf("persisted lease = %v (ok %v), want %s", got.Address, ok, l.Address)
			}
		})
	}
}

// TestClient4Stop checks that a client that never got a lease stops
// promptly without calling OnExpire, and that Run refuses to run twice.
func TestClient4Stop(t *testing.T) {
	t.Parallel()
	tn := newTestNet(t) // no DHCP server
	ev := newEvents()
	c, err := NewClient4(testConfig4(t, ev))
	if err != nil {
		t.Fatal(err)
	}
	stop := tn.inClientNS(t, c.Run)
	deadline := time.Now().Add(waitLong)
	for c.Status().LastError == "" { // the first DISCOVER went unanswered
		if time.Now().After(deadline) {
			t.Fatal("no failed exchange reported in Status")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := c.Status(); s.State != StateInit || s.Lease != nil || !strings.HasPrefix(s.LastError, "dhcp4 "+clientIf+": discover: ") {
		t.Errorf("Status() = %+v, want state init, no lease, a discover error", s)
	}
	if err := c.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Run() = %v, want an error", err)
	}
	done := make(chan error, 1)
	go func() { done <- stop() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLong):
		t.Fatal("Run did not return after cancel")
	}
	if s := c.Status(); s.State != StateStopped {
		t.Errorf("Status().State = %s after Run returned, want stopped", s.State)
	}
	select {
	case l := <-ev.leases:
		t.Errorf("OnLease(%s) without a server", l.Address)
	case l := <-ev.expired:
		t.Errorf("OnExpire(%s) without a lease", l.Address)
	default:
	}
}

// TestNoGoroutineLeak runs a DHCPv4 client (through a renewal) and a
// DHCPv6 client on one link, stops them, and checks that no goroutine of
// the clients or of the DHCP library is left. It is not parallel, so no
// other test's clients run meanwhile.
func TestNoGoroutineLeak(t *testing.T) {
	tn := newTestNet(t)
	tn.startDnsmasq(t, append(slices.Clone(dnsmasq4), append([]string{"--no-ping", "--dhcp-option=option:T1,3"}, dnsmasq6...)...)...)
	ev4, ev6 := newEvents(), newEvents()
	cfg4 := testConfig4(t, ev4)
	cfg4.OnLease = func(l Lease) {
		if err := tn.addClientAddr(l.Address); err != nil {
			t.Errorf("apply %s: %v", l.Address, err)
		}
		ev4.onLease(l)
	}
	stop4 := startClient4(t, tn, cfg4)
	stop6 := startClient6(t, tn, testConfig6(t, ev6))
	waitFor(t, ev4.leases, "v4 lease")
	waitFor(t, ev4.leases, "v4 renewal")
	waitFor(t, ev6.leases, "v6 lease")
	if err := errors.Join(stop4(), stop6()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitLong)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var leaked []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "insomniacslk/dhcp") || strings.Contains(g, "initagent/dhcp.(*Client") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after stop:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
