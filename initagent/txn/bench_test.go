package txn

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// BenchmarkTransactions measures, with default settings, how long a good
// change takes to be committed and how long a bad change (a gateway nobody
// answers for) takes until the previous config is back. Each iteration does
// one of each; medians are reported.
func BenchmarkTransactions(b *testing.B) {
	h := nstest.Handle(b)
	stop, err := setupLab(h)
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	store, err := slot.NewDir(filepath.Join(b.TempDir(), "slots"))
	if err != nil {
		b.Fatal(err)
	}
	m := &Manager{Store: store, Network: kernelNetwork{&netconf.Applier{}}}
	ctx := context.Background()
	if _, err := m.Apply(ctx, nodeConfig("10.0.0.5/24", "10.0.0.1", "10.0.0.1"), Options{}); err != nil {
		b.Fatal(err)
	}
	addrs := []string{"10.0.0.6/24", "10.0.0.5/24"}
	var good, bad []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		if _, err := m.Apply(ctx, nodeConfig(addrs[i%2], "10.0.0.1", "10.0.0.1"), Options{}); err != nil {
			b.Fatalf("good change: %v", err)
		}
		good = append(good, time.Since(start))
		start = time.Now()
		rec, err := m.Apply(ctx, nodeConfig(addrs[i%2], "10.0.0.2", "10.0.0.1"), Options{})
		if err == nil || rec.State != Degraded {
			b.Fatalf("bad change was not reverted: %+v", rec)
		}
		bad = append(bad, time.Since(start))
		if gw := defaultGateway(h); gw != "10.0.0.1" {
			b.Fatalf("connectivity not restored: default gateway %q", gw)
		}
	}
	b.ReportMetric(float64(median(good).Milliseconds()), "good-commit-ms")
	b.ReportMetric(float64(median(bad).Milliseconds()), "bad-revert-ms")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
