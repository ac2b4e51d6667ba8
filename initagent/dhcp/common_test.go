package dhcp

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := backoff{min: time.Second, max: 8 * time.Second}
	for i, cur := range []time.Duration{1, 2, 4, 8, 8, 8} {
		cur *= time.Second
		for range 20 {
			// Each draw uses the current step; redo the step to sample it.
			bb := b
			d := bb.next()
			if d < cur/2 || d > cur {
				t.Fatalf("step %d: next() = %s, want within [%s, %s]", i, d, cur/2, cur)
			}
		}
		b.next()
	}
	b.reset()
	if d := b.next(); d > time.Second {
		t.Errorf("after reset: next() = %s, want at most 1s", d)
	}
}

func TestExtendRetryDelay(t *testing.T) {
	for _, tt := range []struct{ remaining, want time.Duration }{
		{-time.Second, 0},
		{0, 0},
		{30 * time.Second, 30 * time.Second},   // less than the 60 s floor left: wait until the end
		{100 * time.Second, 60 * time.Second},  // half is below 60 s
		{600 * time.Second, 300 * time.Second}, // half the remaining time
	} {
		if got := extendRetryDelay(tt.remaining); got != tt.want {
			t.Errorf("extendRetryDelay(%s) = %s, want %s", tt.remaining, got, tt.want)
		}
	}
}

func TestNewClientRejects(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config4
		want string
	}{
		{"no interface", Config4{}, "dhcp4: Interface is required"},
		{"slash", Config4{Interface: "a/b"}, "invalid interface name"},
		{"dotdot", Config4{Interface: ".."}, "invalid interface name"},
		{"long", Config4{Interface: "abcdefghijklmnop"}, "longer than 15"},
		{"negative timeout", Config4{Interface: "eth0", Timeout: -1}, "dhcp4 eth0: Timeout"},
		{"backoff order", Config4{Interface: "eth0", MinBackoff: time.Minute, MaxBackoff: time.Second}, "shorter than MinBackoff"},
		{"client id", Config4{Interface: "eth0", ClientID: []byte{1}}, "ClientID"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClient4(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewClient4() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := NewClient6(Config6{Interface: "eth0", DUID: []byte{0}}); err == nil || !strings.Contains(err.Error(), "dhcp6 eth0: invalid DUID") {
		t.Errorf("NewClient6(bad DUID) = %v", err)
	}
	c, err := NewClient6(Config6{Interface: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := NewClient6(Config6{Interface: "eth0"})
	if c.iaid != c2.iaid {
		t.Errorf("IAID not stable: %x vs %x", c.iaid, c2.iaid)
	}
	if s := c.Status(); s.State != StateStopped || s.Family != 6 || s.Interface != "eth0" {
		t.Errorf("Status() = %+v", s)
	}
}

// TestKeepExpired hands keep a lease that has already expired: it must
// report it to OnExpire, forget the persisted copy and return to start over,
// without touching the network.
func TestKeepExpired(t *testing.T) {
	now := time.Now()
	l := testLease(now.Add(-2 * time.Hour))
	dir := t.TempDir()
	var expired []Lease
	onExpire := func(l Lease) { expired = append(expired, l) }

	c4, err := NewClient4(Config4{Interface: "eth0", LeaseDir: dir, OnExpire: onExpire, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	l6 := l
	l6.Family, l6.Address = 6, netip.MustParsePrefix("2001:db8::100/128")
	c6, err := NewClient6(Config6{Interface: "eth0", LeaseDir: dir, OnExpire: onExpire, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		store store
		lease Lease
		keep  func(context.Context, Lease) (Lease, error)
	}{{"dhcp4", c4.store, l, c4.keep}, {"dhcp6", c6.store, l6, c6.keep}} {
		expired = nil
		// Persisted with a far expiry so that load would find it.
		p := tc.lease
		p.ExpiresAt = now.Add(time.Hour)
		if err := tc.store.save(p); err != nil {
			t.Fatal(err)
		}
		got, err := tc.keep(t.Context(), tc.lease)
		if err != nil || got.Address.IsValid() {
			t.Errorf("%s: keep() = %v, %v; want an empty lease and nil (lost)", tc.name, got.Address, err)
		}
		if len(expired) != 1 || expired[0].Address != tc.lease.Address {
			t.Errorf("%s: OnExpire calls = %v, want one with %s", tc.name, expired, tc.lease.Address)
		}
		if _, ok := tc.store.load(now); ok {
			t.Errorf("%s: persisted lease not removed", tc.name)
		}
	}
}
