package nodeip

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ballast-os/ballast/initagent/config"
)

func TestStore(t *testing.T) {
	s := Store{Path: filepath.Join(t.TempDir(), "nodeip.json")}
	prev, err := s.Load()
	if err != nil || prev != nil {
		t.Fatalf("Load() on a fresh node = %v, %v, want nil, nil", prev, err)
	}
	d := Decide(Input{Kernel: base([]Address{ad(2, "10.0.0.5/24"), ad(2, "2001:db8::5/64")}, dflt(2, "10.0.0.1", 100), dflt(2, "fe80::1", 100))})
	if err := s.Save(d); err != nil {
		t.Fatal(err)
	}
	prev, err = s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Previous{IPv4: netip.MustParseAddr("10.0.0.5"), IPv6: netip.MustParseAddr("2001:db8::5")}); *prev != want {
		t.Errorf("Load() = %+v, want %+v", *prev, want)
	}
	// After a "reboot" with a new, better uplink, the decision stays.
	k := base([]Address{ad(2, "10.0.0.5/24"), ad(2, "2001:db8::5/64"), ad(3, "10.1.0.5/24")}, dflt(2, "10.0.0.1", 100), dflt(2, "fe80::1", 100), dflt(3, "10.1.0.1", 10))
	d2 := Decide(Input{Kernel: k, Previous: prev})
	if d2.Changed || d2.KubeletArg() != "10.0.0.5,2001:db8::5" {
		t.Errorf("after reboot: Changed = %v (%q), KubeletArg() = %q, want unchanged 10.0.0.5,2001:db8::5", d2.Changed, d2.Reason, d2.KubeletArg())
	}

	// Only one family.
	if err := s.Save(Decision{IPv6: netip.MustParseAddr("2001:db8::5")}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(s.Path)
	if strings.Contains(string(b), "ipv4") {
		t.Errorf("file %s has an ipv4 key for an IPv6-only decision", b)
	}
	prev, err = s.Load()
	if err != nil || prev.IPv4.IsValid() || prev.IPv6 != netip.MustParseAddr("2001:db8::5") {
		t.Errorf("Load() = %+v, %v", prev, err)
	}

	if err := os.WriteFile(s.Path, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Errorf("Load() of a corrupt file = %v, want an error that says what to do", err)
	}
}

func TestHintsFromConfig(t *testing.T) {
	var cfg config.MachineConfig
	cfg.Kubelet.NodeIP = config.NodeIP{Addresses: []string{"::ffff:10.0.0.5", "2001:db8::5"}, Subnets: []string{"10.0.0.0/24", "::ffff:192.168.0.0/112"}, Family: "ipv6"}
	cfg.Cluster.APIVIPs = []string{"10.0.0.100"}
	cfg.Cluster.IngressVIPs = []string{"10.0.0.101"}
	h, err := HintsFromConfig(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if h.Family != IPv6 || h.Addresses[0] != netip.MustParseAddr("10.0.0.5") || !h.Addresses[0].Is4() {
		t.Errorf("HintsFromConfig = %+v: want IPv6 first and 10.0.0.5 as IPv4", h)
	}
	if got := h.Subnets[1].String(); got != "192.168.0.0/16" {
		t.Errorf("mapped subnet = %s, want 192.168.0.0/16", got)
	}

	errs := []struct {
		name string
		edit func(*config.MachineConfig)
		want string
		is   error
	}{
		{"IPv4-compatible address", func(c *config.MachineConfig) { c.Kubelet.NodeIP.Addresses = []string{"::10.0.0.5"} }, "write 10.0.0.5", ErrIPv4Compatible},
		{"IPv4-compatible VIP", func(c *config.MachineConfig) { c.Cluster.APIVIPs = []string{"::10.0.0.100"} }, "cluster.apiVIPs[0]", ErrIPv4Compatible},
		{"two IPv4 addresses", func(c *config.MachineConfig) { c.Kubelet.NodeIP.Addresses = []string{"10.0.0.5", "::ffff:10.0.0.6"} }, "at most one per family", nil},
		{"bad family", func(c *config.MachineConfig) { c.Kubelet.NodeIP.Family = "v6" }, "use ipv4 or ipv6", nil},
		{"bad subnet", func(c *config.MachineConfig) { c.Kubelet.NodeIP.Subnets = []string{"10.0.0.0"} }, "kubelet.nodeIP.subnets[0]", nil},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			var c config.MachineConfig
			tt.edit(&c)
			_, err := HintsFromConfig(&c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("HintsFromConfig() = %v, want an error containing %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
		})
	}
}

func FuzzDecide(f *testing.F) {
	f.Add("10.0.0.5/24", "::ffff:10.0.0.6/120", "10.0.0.0/8", uint32(0x40))
	f.Fuzz(func(t *testing.T, a1, a2, subnet string, flags uint32) {
		var addrs []Address
		for _, s := range []string{a1, a2} {
			if p, err := netip.ParsePrefix(s); err == nil {
				addrs = append(addrs, Address{LinkIndex: 2, Prefix: p, Flags: AddrFlags(flags), PreferredLifetime: Forever})
			}
		}
		var h Hints
		if p, err := netip.ParsePrefix(subnet); err == nil {
			h.Subnets = []netip.Prefix{p}
		}
		d := Decide(Input{Kernel: base(addrs, dflt(2, "10.0.0.1", 1)), Hints: h})
		for _, a := range d.Addrs() {
			if ipv4Compatible(a) || a.Is4In6() || a.IsLinkLocalUnicast() || a.IsLoopback() {
				t.Errorf("chose %s", a)
			}
		}
		if d.IPv4.IsValid() && !d.IPv4.Is4() || d.IPv6.IsValid() && !d.IPv6.Is6() {
			t.Errorf("family mix-up: %v", d.Addrs())
		}
		_ = d.String()
	})
}
