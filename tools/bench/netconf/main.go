// Command netconf measures how long initagent/netconf takes to apply the
// 10-interface host config (bond, 4 VLANs, bridge, 20 routes, 4 rules) from
// cold and to re-apply it as a no-op. It runs the package's Go benchmarks on
// the image's own kernel in QEMU (the CI host kernel has no bonding or VLAN
// driver), so under TCG the figures include the emulation's slowdown.
//
//	go run ./tools/bench/netconf [-accel tcg] [-count 20]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/ballast-os/ballast/image"
	qemutests "github.com/ballast-os/ballast/qemu-tests"
)

func main() {
	accel := flag.String("accel", "tcg", "QEMU accelerator")
	count := flag.Int("count", 20, "iterations per benchmark")
	flag.Parse()
	src, err := image.FindSourceDir(".")
	if err != nil {
		fail(err)
	}
	work, err := os.MkdirTemp("", "ballast-bench-netconf-")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(work)
	g := &qemutests.GoTestVM{SourceDir: src, Accel: *accel, Workdir: work}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, code, err := g.Run(ctx, "./initagent/netconf", "-test.run=^$", "-test.bench=Apply", fmt.Sprintf("-test.benchtime=%dx", *count))
	if err != nil || code != 0 {
		fail(fmt.Errorf("benchmark in VM: exit %d, %v\n%s", code, err, out))
	}
	re := regexp.MustCompile(`(?m)^(BenchmarkApply\S+)\s+\d+\s+(\d+) ns/op.*$`)
	ms := re.FindAllStringSubmatch(out, -1)
	if len(ms) != 2 {
		fail(fmt.Errorf("benchmark output not understood:\n%s", out))
	}
	fmt.Printf("netconf apply, 10 interfaces (bond + 4 VLANs + bridge), 20 routes, 4 rules; kernel %s under %s, %d iterations\n", g.KernelRelease(), *accel, *count)
	for _, m := range ms {
		var ns float64
		fmt.Sscan(m[2], &ns)
		target := "cold target <= 200 ms"
		if strings.Contains(m[1], "Noop") {
			target = "no-op target <= 20 ms"
		}
		fmt.Printf("  %-22s %8.2f ms/op  (%s)\n", strings.TrimSuffix(strings.TrimPrefix(m[1], "Benchmark"), "-2"), ns/1e6, target)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench/netconf:", err)
	os.Exit(1)
}
