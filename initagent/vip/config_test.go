package vip

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDeriveVRID(t *testing.T) {
	if a, b := DeriveVRID("prod", "api"), DeriveVRID("prod", "api"); a != b {
		t.Fatalf("DeriveVRID not stable: %d, %d", a, b)
	}
	if DeriveVRID("prod", "api") == DeriveVRID("prod", "ingress") {
		t.Errorf("api and ingress of cluster prod share VRID %d", DeriveVRID("prod", "api"))
	}
	if DeriveVRID("ab", "c") == DeriveVRID("a", "bc") {
		t.Errorf("cluster/role boundary is not part of the hash")
	}
	// Spread: 5100 clusters over 255 VRIDs average 20 each; no VRID may
	// be 0, and none should be far off the average.
	var hist [256]int
	for i := range 5100 {
		hist[DeriveVRID("cluster-"+string(rune('a'+i%26))+strings.Repeat("x", i/26), "api")]++
	}
	if hist[0] != 0 {
		t.Fatalf("DeriveVRID returned 0 %d times", hist[0])
	}
	for v := 1; v < 256; v++ {
		if hist[v] < 4 || hist[v] > 45 {
			t.Errorf("VRID %d got %d of 5100 clusters, want about 20", v, hist[v])
		}
	}
}

func TestDeriveVRIDPinned(t *testing.T) {
	// Pinned values: a change would make upgraded nodes disagree with
	// old ones about the VRID.
	for _, tc := range []struct {
		cluster, role string
		want          uint8
	}{
		{"prod", "api", 160},
		{"prod", "ingress", 10},
		{"", "", 142},
	} {
		if got := DeriveVRID(tc.cluster, tc.role); got != tc.want {
			t.Errorf("DeriveVRID(%q, %q) = %d, want %d", tc.cluster, tc.role, got, tc.want)
		}
	}
}

func validRouter() RouterConfig {
	return RouterConfig{
		Name: "api", Interface: "eth0", VRID: 10,
		VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24")},
	}
}

func TestNewValidation(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name string
		mod  func(c *Config)
		want string // substring of the error; empty: valid
	}{
		{"valid", func(c *Config) {}, ""},
		{"no routers", func(c *Config) { c.Routers = nil }, "Routers is empty"},
		{"no name", func(c *Config) { c.Routers[0].Name = "" }, "Name is empty"},
		{"no interface", func(c *Config) { c.Routers[0].Interface = "" }, "Interface"},
		{"no vrid no cluster", func(c *Config) { c.Routers[0].VRID = 0 }, "VRID is 0 and Config.Cluster is empty"},
		{"derived vrid", func(c *Config) { c.Routers[0].VRID = 0; c.Cluster = "prod" }, ""},
		{"priority 255", func(c *Config) { c.Routers[0].Priority = 255 }, "Priority 255"},
		{"interval not centis", func(c *Config) { c.Routers[0].AdvertInterval = 15 * time.Millisecond }, "AdvertInterval"},
		{"interval too long", func(c *Config) { c.Routers[0].AdvertInterval = 41 * time.Second }, "AdvertInterval"},
		{"no vips", func(c *Config) { c.Routers[0].VIPs = nil }, "VIPs is empty"},
		{"mixed families", func(c *Config) { c.Routers[0].VIPs = append(c.Routers[0].VIPs, p("2001:db8::10/64")) }, "one router carries one family"},
		{"multicast vip", func(c *Config) { c.Routers[0].VIPs = []netip.Prefix{p("224.0.0.5/32")} }, "VIPs[0]"},
		{"duplicate vip", func(c *Config) { c.Routers[0].VIPs = append(c.Routers[0].VIPs, p("192.0.2.10/32")) }, "listed twice"},
		{"peer family", func(c *Config) { c.Routers[0].Peers = []netip.Addr{a("2001:db8::2")} }, "Peers[0]"},
		{"peer is vip", func(c *Config) { c.Routers[0].Peers = []netip.Addr{a("192.0.2.10")} }, "Peers[0]"},
		{"source family", func(c *Config) { c.Routers[0].Source = a("fe80::1") }, "Source"},
		{"negative preempt delay", func(c *Config) { c.Routers[0].PreemptDelay = -1 }, "PreemptDelay"},
		{"track without effect", func(c *Config) { c.Routers[0].Tracks = []TrackConfig{{Name: "x"}} }, "Weight is 0"},
		{"track two checks", func(c *Config) {
			c.Routers[0].Tracks = []TrackConfig{{Name: "x", Weight: 10, HTTP: "http://127.0.0.1/", TCP: "127.0.0.1:1"}}
		}, "both HTTP and TCP"},
		{"track bad url", func(c *Config) { c.Routers[0].Tracks = []TrackConfig{{Name: "x", Weight: 10, HTTP: "localhost:80"}} }, "HTTP"},
		{"track bad tcp", func(c *Config) { c.Routers[0].Tracks = []TrackConfig{{Name: "x", Weight: 10, TCP: "localhost"}} }, "TCP"},
		{"duplicate router name", func(c *Config) {
			r := validRouter()
			r.VRID = 11
			c.Routers = append(c.Routers, r)
		}, "used twice"},
		{"duplicate vrid", func(c *Config) {
			r := validRouter()
			r.Name = "ingress"
			c.Routers = append(c.Routers, r)
		}, "VRID 10 is already used"},
		{"same vrid other family", func(c *Config) {
			r := validRouter()
			r.Name = "api6"
			r.VIPs = []netip.Prefix{p("2001:db8::10/64")}
			c.Routers = append(c.Routers, r)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Routers: []RouterConfig{validRouter()}}
			tc.mod(&cfg)
			_, err := New(cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("New = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	s, err := New(Config{Cluster: "prod", Routers: []RouterConfig{{Name: "api", Interface: "eth0",
		VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24")}}}})
	if err != nil {
		t.Fatal(err)
	}
	st := s.Status().Routers[0]
	if st.VRID != DeriveVRID("prod", "api") || st.Priority != DefaultPriority || st.AdvertIntervalMs != DefaultAdvertInterval.Milliseconds() || st.State != StateInit {
		t.Errorf("defaults: %+v", st)
	}
	if err := s.SetTrack("nope", true); err == nil {
		t.Errorf("SetTrack of an unknown track = nil, want an error")
	}
}
