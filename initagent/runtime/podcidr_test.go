package runtime

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TestNextPodCIDRs: the subnet the bootstrapping node claims is the one
// kube-controller-manager's range allocator would pick: the lowest /24 (or
// /64) that no node holds and no service CIDR overlaps, one per family.
func TestNextPodCIDRs(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	for _, c := range []struct {
		name              string
		clusters, service []netip.Prefix
		taken             []string
		want              string
		err               string
	}{
		{name: "first", clusters: pfx("10.244.0.0/16"), service: pfx("10.96.0.0/12"), want: "10.244.0.0/24"},
		{name: "taken skipped", clusters: pfx("10.244.0.0/16"), taken: []string{"10.244.0.0/24", "10.244.2.0/24", "garbage"}, want: "10.244.1.0/24"},
		{name: "service overlap skipped", clusters: pfx("10.0.0.0/16"), service: pfx("10.0.0.0/23"), want: "10.0.2.0/24"},
		{name: "unmasked cluster", clusters: pfx("10.244.3.7/16"), want: "10.244.0.0/24"},
		{name: "dual stack", clusters: pfx("10.244.0.0/16", "fd00:10:244::/56"), taken: []string{"10.244.0.0/24", "fd00:10:244::/64"},
			want: "10.244.1.0/24,fd00:10:244:1::/64"},
		{name: "ipv6 first", clusters: pfx("fd00:10:244::/48", "10.244.0.0/16"), want: "fd00:10:244::/64,10.244.0.0/24"},
		{name: "families apart", clusters: pfx("10.244.0.0/16"), taken: []string{"::/0"}, want: "10.244.0.0/24"},
		{name: "full", clusters: pfx("10.244.0.0/23"), taken: []string{"10.244.0.0/24", "10.244.1.0/24"}, err: "no free /24"},
		{name: "too small", clusters: pfx("10.244.0.0/25"), err: "smaller than a node's /24"},
		{name: "too many subnets", clusters: pfx("fd00::/32"), err: "more than 65536"},
		{name: "none", err: "no cluster pod CIDR"},
	} {
		got, err := nextPodCIDRs(c.clusters, c.service, c.taken)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: got %v, %v; want error with %q", c.name, got, err, c.err)
			}
			continue
		}
		var s []string
		for _, p := range got {
			s = append(s, p.String())
		}
		if err != nil || !slices.Equal(s, strings.Split(c.want, ",")) {
			t.Errorf("%s: got %v, %v; want %s", c.name, s, err, c.want)
		}
	}
}
