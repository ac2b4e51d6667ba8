package netconf

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// benchConfig is the 10-interface host: 4 NICs, a bond of two, 4
// VLANs on the bond, a bridge; 20 routes (5 per VLAN, half in per-VLAN
// tables) and a source rule per VLAN.
func benchConfig() string {
	var b strings.Builder
	b.WriteString("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  interfaces:\n")
	b.WriteString("    - {name: eth0, addresses: [10.0.0.5/24], routes: [{to: default, via: 10.0.0.1}]}\n")
	b.WriteString("    - {name: eth1}\n    - {name: eth2}\n    - {name: eth3, addresses: [10.3.0.5/24]}\n")
	b.WriteString("    - {name: bond0, type: bond, bond: {mode: 802.3ad, members: [eth1, eth2]}}\n")
	b.WriteString("    - {name: br0, type: bridge, addresses: [10.99.0.1/24]}\n")
	for v := 1; v <= 4; v++ {
		fmt.Fprintf(&b, "    - name: bond0.%d\n      type: vlan\n      vlan: {id: %d, link: bond0}\n      addresses: [192.168.%d.5/24]\n      routes:\n", 100+v, 100+v, v)
		for r := 0; r < 5; r++ {
			table := 0
			if r%2 == 1 {
				table = 100 + v
			}
			fmt.Fprintf(&b, "        - {to: 172.%d.%d.0/24, via: 192.168.%d.1, table: %d}\n", 16+v, r, v, table)
		}
	}
	b.WriteString("  rules:\n")
	for v := 1; v <= 4; v++ {
		fmt.Fprintf(&b, "    - {priority: %d, from: 192.168.%d.5, table: %d}\n", 100+v, v, 100+v)
	}
	return b.String()
}

func benchNICs(t testing.TB, h *netlink.Handle) {
	for i := 0; i < 4; i++ {
		nstest.Veth(t, h, fmt.Sprintf("eth%d", i), fmt.Sprintf("peer%d", i))
	}
}

// BenchmarkApplyCold: a fresh namespace per iteration, the whole host config applied.
func BenchmarkApplyCold(b *testing.B) {
	spec := mustSpec(b, benchConfig())
	for b.Loop() {
		b.StopTimer()
		nstest.Do(b, func(h *netlink.Handle) {
			nstest.RequireLinkKinds(b, h, "bond", "vlan", "bridge")
			benchNICs(b, h)
			a := &Applier{Handle: h}
			b.StartTimer()
			res, err := a.Apply(context.Background(), spec)
			b.StopTimer()
			if err != nil {
				b.Fatalf("Apply: %v", err)
			}
			b.ReportMetric(float64(len(res.Changes)), "changes/op")
		})
		b.StartTimer()
	}
}

// BenchmarkApplyNoop: the same config re-applied; nothing may change.
func BenchmarkApplyNoop(b *testing.B) {
	spec := mustSpec(b, benchConfig())
	nstest.Do(b, func(h *netlink.Handle) {
		nstest.RequireLinkKinds(b, h, "bond", "vlan", "bridge")
		benchNICs(b, h)
		a := &Applier{Handle: h}
		if _, err := a.Apply(context.Background(), spec); err != nil {
			b.Fatalf("Apply: %v", err)
		}
		b.ResetTimer()
		for b.Loop() {
			res, err := a.Apply(context.Background(), spec)
			if err != nil || len(res.Changes) != 0 {
				b.Fatalf("no-op apply: %v, changes %q", err, res.Changes)
			}
		}
	})
}
