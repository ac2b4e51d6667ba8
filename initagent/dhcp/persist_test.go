package dhcp

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testLease(now time.Time) Lease {
	return Lease{
		Interface: "eth0", Family: 4,
		Address:   netip.MustParsePrefix("192.0.2.50/24"),
		Server:    netip.MustParseAddr("192.0.2.1"),
		Router:    netip.MustParseAddr("192.0.2.1"),
		Routes:    []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("192.0.2.1")}},
		DNS:       []netip.Addr{netip.MustParseAddr("192.0.2.53")},
		Acquired:  now,
		LeaseTime: time.Hour,
		RenewAt:   now.Add(30 * time.Minute),
		RebindAt:  now.Add(52 * time.Minute),
		ExpiresAt: now.Add(time.Hour),
	}
}

func TestStoreRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing", "dir")
	s := store{dir: dir, iface: "eth0", family: 4, log: testLogger(t)}
	if _, ok := s.load(t0); ok {
		t.Fatal("load() found a lease in an empty directory")
	}
	l := testLease(t0)
	if err := s.save(l); err != nil {
		t.Fatal(err)
	}
	if got := leaseFile(dir, "eth0", 4); got != filepath.Join(dir, "eth0.dhcp4.json") {
		t.Errorf("leaseFile = %s", got)
	}
	got, ok := s.load(t0.Add(time.Minute))
	if !ok {
		t.Fatal("load() after save found nothing")
	}
	if g, w := mustJSON(t, got), mustJSON(t, l); g != w {
		t.Errorf("load() = %s, want %s", g, w)
	}
	if err := s.remove(); err != nil {
		t.Fatal(err)
	}
	if err := s.remove(); err != nil {
		t.Errorf("second remove() = %v, want nil", err)
	}
	if _, ok := s.load(t0); ok {
		t.Error("load() after remove found a lease")
	}
}

func TestStoreDisabled(t *testing.T) {
	s := store{iface: "eth0", family: 4}
	if err := s.save(testLease(t0)); err != nil {
		t.Errorf("save() = %v", err)
	}
	if _, ok := s.load(t0); ok {
		t.Error("load() without a directory found a lease")
	}
	if err := s.remove(); err != nil {
		t.Errorf("remove() = %v", err)
	}
}

func TestDecodeLeaseRejects(t *testing.T) {
	valid := mustJSON(t, testLease(t0))
	for _, tt := range []struct {
		name, file string
		iface      string
		family     int
		now        time.Time
		want       string
	}{
		{"corrupt", `{"interface": "eth0", "fam`, "eth0", 4, t0, "corrupt lease file"},
		{"empty", ``, "eth0", 4, t0, "corrupt lease file"},
		{"expired", valid, "eth0", 4, t0.Add(time.Hour), "lease expired"},
		{"other interface", valid, "eth1", 4, t0, `interface "eth0", not "eth1"`},
		{"other family", valid, "eth0", 6, t0, "family 4, not 6"},
		{"no address", `{"interface":"eth0","family":4,"expiresAt":"2030-01-01T00:00:00Z"}`, "eth0", 4, t0, "no address"},
		{"v6 address in v4 lease", strings.Replace(valid, "192.0.2.50/24", "2001:db8::1/128", 1), "eth0", 4, t0, "is not IPv4"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeLease([]byte(tt.file), tt.iface, tt.family, tt.now)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("decodeLease() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := decodeLease([]byte(valid), "eth0", 4, t0.Add(2*time.Hour)); !errors.Is(err, errLeaseExpired) {
		t.Errorf("decodeLease(expired) = %v, want errors.Is errLeaseExpired", err)
	}
	// A field from a newer agent does not make the lease unusable.
	newer := strings.Replace(valid, "{", `{"fromTheFuture":1,`, 1)
	if _, err := decodeLease([]byte(newer), "eth0", 4, t0); err != nil {
		t.Errorf("decodeLease(unknown field) = %v, want nil", err)
	}
}

// TestStoreIgnoresCorruptFile checks that load logs and ignores a corrupt
// file instead of failing, so the client starts from scratch.
func TestStoreIgnoresCorruptFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(leaseFile(dir, "eth0", 4), []byte("\x00garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := store{dir: dir, iface: "eth0", family: 4, log: testLogger(t)}
	if l, ok := s.load(t0); ok {
		t.Errorf("load() = %+v from a corrupt file", l)
	}
}

func FuzzDecodeLease(f *testing.F) {
	f.Add([]byte(mustJSON(f, testLease(t0))))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeLease(b, "eth0", 4, t0)
		if err == nil && (!l.Address.Addr().Is4() || !t0.Before(l.ExpiresAt)) {
			t.Fatalf("accepted %+v", l)
		}
	})
}
