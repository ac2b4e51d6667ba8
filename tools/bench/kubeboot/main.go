// Command kubeboot measures a single control plane's boot under QEMU: QEMU
// start → containerd ready, → kubelet started, → node Ready, → the test's
// first pod run to completion (scheduled, started, exited, its log read),
// and the boot
// timeline the node records, medians over n boots. Each boot is one run of
// qemu-tests' TestKubernetesControlPlane (the control-plane disk image,
// direct kernel + slot A, 2 vCPUs, 4 GiB, first boot of a fresh disk), so the
// bench measures exactly what that test checks.
//
//	go run ./tools/bench/kubeboot [-n 3]
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/tools/bench/internal/stats"
)

var (
	figuresLine  = regexp.MustCompile(`figures: QEMU start → containerd ready (\S+), → kubelet started (\S+), → node Ready (\S+), → first pod completed (\S+); images registered in (\S+);`)
	timelineLine = regexp.MustCompile(`figures: boot timeline \(seconds since the kernel started\) \[(.*)\]`)
	markPattern  = regexp.MustCompile(`\{([^{}]+?) ([0-9.]+)\}`)
)

func main() {
	n := flag.Int("n", 3, "boots")
	flag.Parse()
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "bench/kubeboot:", err)
		os.Exit(1)
	}
}

func run(n int) error {
	src, err := image.FindSourceDir(".")
	if err != nil {
		return err
	}
	var containerd, kubelet, ready, pod, register []time.Duration
	marks := map[string][]float64{}
	var order []string
	for i := 0; i < n; i++ {
		cmd := exec.Command("go", "test", "-count=1", "-v", "-timeout", "60m", "-run", "^TestKubernetesControlPlane$", "./qemu-tests/")
		cmd.Dir = src
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("boot %d: %v\n%s", i+1, err, tail(out, 40))
		}
		found := false
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if m := figuresLine.FindStringSubmatch(sc.Text()); m != nil {
				found = true
				for j, d := range []*[]time.Duration{&containerd, &kubelet, &ready, &pod, &register} {
					v, err := time.ParseDuration(m[j+1])
					if err != nil {
						return fmt.Errorf("boot %d: %q: %v", i+1, m[j+1], err)
					}
					*d = append(*d, v)
				}
			}
			if m := timelineLine.FindStringSubmatch(sc.Text()); m != nil {
				for _, mk := range markPattern.FindAllStringSubmatch(m[1], -1) {
					v, _ := strconv.ParseFloat(mk[2], 64)
					if _, seen := marks[mk[1]]; !seen {
						order = append(order, mk[1])
					}
					marks[mk[1]] = append(marks[mk[1]], v)
				}
			}
		}
		if !found {
			return fmt.Errorf("boot %d: no figures line in the test output\n%s", i+1, tail(out, 40))
		}
		fmt.Printf("boot %d: containerd ready %v, kubelet started %v, node Ready %v, first pod completed %v (images registered in %v)\n",
			i+1, containerd[i], kubelet[i], ready[i], pod[i], register[i])
	}
	fmt.Printf("single control plane under TCG, %d boots (QEMU start →):\n", n)
	for _, row := range []struct {
		name   string
		ds     []time.Duration
		target string
	}{
		{"containerd ready", containerd, ""},
		{"kubelet started", kubelet, "target ≤ 20 s"},
		{"node Ready", ready, "target ≤ 2 min, moonshot ≤ 60 s"},
		{"first pod completed", pod, ""},
		{"images registered (took)", register, ""},
	} {
		fmt.Printf("  %-26s median %8v  min %8v  max %8v  %s\n", row.name, stats.Median(row.ds).Round(100*time.Millisecond),
			slices.Min(row.ds).Round(100*time.Millisecond), slices.Max(row.ds).Round(100*time.Millisecond), row.target)
	}
	fmt.Println("boot timeline on the node (seconds since the kernel started), medians:")
	for _, name := range order {
		fmt.Printf("  %-24s %8.1f\n", name, stats.Median(marks[name]))
	}
	return nil
}

func tail(b []byte, lines int) string {
	all := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return string(bytes.Join(all[max(0, len(all)-lines):], []byte("\n")))
}
