package dhcp

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// dnsmasq6 are the DHCPv6 flags of the tests: a range in 2001:db8:1::/64
// (the server's interface has 2001:db8:1::1/64), DNS and search list.
var dnsmasq6 = []string{
	"--dhcp-range=2001:db8:1::100,2001:db8:1::1ff,64,2m",
	"--dhcp-option=option6:dns-server,[2001:db8:1::53],[2001:db8:1::54]",
	"--dhcp-option=option6:domain-search,example.test,corp.example",
}

func testConfig6(t *testing.T, ev *events) Config6 {
	return Config6{
		Interface:  clientIf,
		Log:        testLogger(t),
		OnLease:    ev.onLease,
		OnExpire:   ev.onExpire,
		Timeout:    500 * time.Millisecond,
		Retries:    4,
		MinBackoff: 200 * time.Millisecond,
		MaxBackoff: 2 * time.Second,
	}
}

func startClient6(t *testing.T, tn *testNet, cfg Config6) (stop func() error) {
	t.Helper()
	c, err := NewClient6(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tn.inClientNS(t, c.Run)
}

var wantDNS6 = []netip.Addr{netip.MustParseAddr("2001:db8:1::53"), netip.MustParseAddr("2001:db8:1::54")}

// TestClient6Stateful gets an IA_NA address from dnsmasq, restarts with the
// persisted address, and releases it on stop.
func TestClient6Stateful(t *testing.T) {
	t.Parallel()
	tn := newTestNet(t)
	d := tn.startDnsmasq(t, dnsmasq6...)
	ev := newEvents()
	cfg := testConfig6(t, ev)
	cfg.LeaseDir = t.TempDir()
	stop := startClient6(t, tn, cfg)

	l := waitFor(t, ev.leases, "lease")
	lo, hi := netip.MustParseAddr("2001:db8:1::100"), netip.MustParseAddr("2001:db8:1::1ff")
	if a := l.Address.Addr(); l.Address.Bits() != 128 || a.Compare(lo) < 0 || a.Compare(hi) > 0 {
		t.Errorf("Address = %s, want 2001:db8:1::100-1ff/128", l.Address)
	}
	if l.Family != 6 || l.Interface != clientIf {
		t.Errorf("Family, Interface = %d, %q; want 6, %q", l.Family, l.Interface, clientIf)
	}
	if !slices.Equal(l.DNS, wantDNS6) {
		t.Errorf("DNS = %v, want %v", l.DNS, wantDNS6)
	}
	if want := []string{"example.test", "corp.example"}; !slices.Equal(l.Search, want) {
		t.Errorf("Search = %v, want %v", l.Search, want)
	}
	if !l.Server.IsLinkLocalUnicast() || len(l.ServerID) == 0 {
		t.Errorf("Server, ServerID = %s, %x; want the server's link-local address and DUID", l.Server, l.ServerID)
	}
	if l.LeaseTime != 2*time.Minute || !l.ExpiresAt.Equal(l.Acquired.Add(2*time.Minute)) {
		t.Errorf("LeaseTime, ExpiresAt-Acquired = %s, %s; want 2m", l.LeaseTime, l.ExpiresAt.Sub(l.Acquired))
	}
	if !(l.Acquired.Before(l.RenewAt) && !l.RenewAt.After(l.RebindAt) && !l.RebindAt.After(l.ExpiresAt)) {
		t.Errorf("times out of order: acquired %s renew %s rebind %s expires %s", l.Acquired, l.RenewAt, l.RebindAt, l.ExpiresAt)
	}
	addr := l.Address.Addr().String()
	d.waitLog(t, "DHCPREPLY(", addr)
	if !strings.Contains(d.leases(), addr) {
		t.Errorf("dnsmasq lease file lacks %s:\n%s", addr, d.leases())
	}

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if e := waitFor(t, ev.expired, "OnExpire after release"); e.Address != l.Address {
		t.Errorf("OnExpire(%s), want %s", e.Address, l.Address)
	}
	d.waitLog(t, "DHCPRELEASE(")
	d.waitLeaseGone(t, addr)
	if _, err := os.Stat(leaseFile(cfg.LeaseDir, clientIf, 6)); !os.IsNotExist(err) {
		t.Errorf("persisted lease not removed after release: %v", err)
	}
}

// TestClient6Restart stops a client that keeps its lease and starts a new
// one, which asks for the persisted address and gets it.
func TestClient6Restart(t *testing.T) {
	t.Parallel()
	tn := newTestNet(t)
	d := tn.startDnsmasq(t, dnsmasq6...)
	dir := t.TempDir()

	ev1 := newEvents()
	cfg := testConfig6(t, ev1)
	cfg.LeaseDir = dir
	cfg.KeepLease = true
	stop := startClient6(t, tn, cfg)
	first := waitFor(t, ev1.leases, "lease")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leaseFile(dir, clientIf, 6)); err != nil {
		t.Fatalf("KeepLease: lease file: %v", err)
	}

	ev2 := newEvents()
	cfg = testConfig6(t, ev2)
	cfg.LeaseDir = dir
	startClient6(t, tn, cfg)
	second := waitFor(t, ev2.leases, "lease after restart")
	if second.Address != first.Address {
		t.Errorf("after restart got %s, want %s", second.Address, first.Address)
	}
	if n := d.transactions("DHCPRELEASE("); n != 0 {
		t.Errorf("dnsmasq logged %d Releases, want none with KeepLease", n)
	}
}

// TestClient6Stateless asks for DNS servers and the search list with
// Information-request.
func TestClient6Stateless(t *testing.T) {
	t.Parallel()
	tn := newTestNet(t)
	d := tn.startDnsmasq(t, dnsmasq6...)
	ev := newEvents()
	cfg := testConfig6(t, ev)
	cfg.Stateless = true
	cfg.LeaseDir = t.TempDir()
	stop := startClient6(t, tn, cfg)

	l := waitFor(t, ev.leases, "information reply")
	if l.Address.IsValid() {
		t.Errorf("Address = %s, want none in stateless mode", l.Address)
	}
	if !slices.Equal(l.DNS, wantDNS6) {
		t.Errorf("DNS = %v, want %v", l.DNS, wantDNS6)
	}
	if want := []string{"example.test", "corp.example"}; !slices.Equal(l.Search, want) {
		t.Errorf("Search = %v, want %v", l.Search, want)
	}
	// Whatever the server says, the refresh stays within RFC 8415's bounds.
	if got := l.RenewAt.Sub(l.Acquired); got < irtMinimum || got > irtDefault {
		t.Errorf("refresh after %s, want %s to %s", got, irtMinimum, irtDefault)
	}
	d.waitLog(t, "DHCPINFORMATION-REQUEST(")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ev.expired:
		t.Errorf("OnExpire(%v) in stateless mode", e)
	default:
	}
	if entries, _ := os.ReadDir(cfg.LeaseDir); len(entries) != 0 {
		t.Errorf("stateless mode persisted %d files", len(entries))
	}
}
