// Command dns benchmarks initagent/dns against dnsmasq with dnsperf, side by
// side in one run, inside a throwaway network namespace (needs root,
// unshare, dnsmasq and dnsperf: apt-get install dnsmasq-base dnsperf).
//
// Both servers get the same data: the cluster zone's records (answered
// locally) and N names under fwd.test forwarded to a third dnsmasq, the
// "datacenter" upstream, and cached. For each server and data set it prints
// the saturated QPS (dnsperf without a rate limit) and latency percentiles
// at a fixed, moderate rate, then each server's RSS with N cached names.
//
//	go run ./tools/bench/dns -duration 10s -names 10000
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ballast-os/ballast/initagent/dns"
)

const (
	netnsEnv = "BALLAST_BENCH_NETNS"
	upstream = "127.0.0.2"  // dnsmasq playing the datacenter's DNS
	ballast  = "127.0.0.53" // initagent/dns
	peer     = "127.0.0.54" // dnsmasq serving the same data
	zone     = "prod.example.com"
	nodes    = 50
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench/dns:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench/dns", flag.ContinueOnError)
	duration := fs.Duration("duration", 10*time.Second, "length of each saturated dnsperf run")
	names := fs.Int("names", 10000, "forwarded names to cache")
	latQPS := fs.Int("latency-qps", 5000, "query rate of the latency runs")
	clients := fs.Int("clients", 4, "dnsperf -c")
	rounds := fs.Int("rounds", 3, "saturated runs per server and data set, alternating servers; QPS is their median")
	serve := fs.Bool("serve", false, "internal: run the server (used in the namespace)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *serve {
		return serveBallast(ctx, *names)
	}
	if os.Getenv(netnsEnv) == "" {
		// Re-run inside a fresh network namespace: 127.0.0.x:53 is ours there.
		cmd := exec.CommandContext(ctx, "unshare", append([]string{"--net", os.Args[0]}, args...)...)
		cmd.Env = append(os.Environ(), netnsEnv+"=1")
		cmd.Stdout, cmd.Stderr = stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("unshare --net (needs root): %w", err)
		}
		return nil
	}
	for _, tool := range []string{"dnsmasq", "dnsperf", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: apt-get install dnsmasq-base dnsperf iproute2", tool)
		}
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set lo up: %v: %s", err, out)
	}
	dir, err := os.MkdirTemp("", "bench-dns")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	localFile, fwdFile := filepath.Join(dir, "local.txt"), filepath.Join(dir, "fwd.txt")
	if err := writeQueries(localFile, fwdFile, *names); err != nil {
		return err
	}

	procs := []*exec.Cmd{}
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
		}
	}()
	start := func(name string, args ...string) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		procs = append(procs, cmd)
		return cmd, nil
	}
	dnsmasqArgs := func(addr string) []string {
		return []string{"--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts", "--listen-address=" + addr,
			"--bind-interfaces", "--port=53", "--pid-file=", "--user=root", "--group=root"}
	}
	if _, err := start("dnsmasq", append(dnsmasqArgs(upstream), "--no-resolv",
		"--address=/fwd.test/192.0.2.7", "--local-ttl=3600")...); err != nil {
		return err
	}
	peerArgs := append(dnsmasqArgs(peer), "--no-resolv", "--server="+upstream,
		fmt.Sprintf("--cache-size=%d", *names*2), "--local-ttl=30", "--dns-forward-max=1000",
		"--host-record=api."+zone+",api-int."+zone+",10.0.0.10",
		"--address=/apps."+zone+"/10.0.0.20")
	for i := range nodes {
		peerArgs = append(peerArgs, fmt.Sprintf("--host-record=node-%d,node-%d.%s,10.0.1.%d", i, i, zone, i+1))
	}
	peerCmd, err := start("dnsmasq", peerArgs...)
	if err != nil {
		return err
	}
	ballastCmd, err := start(os.Args[0], "-serve", "-names", strconv.Itoa(*names))
	if err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)

	targets := []struct {
		name, addr string
		pid        int
	}{{"ballast", ballast, ballastCmd.Process.Pid}, {"dnsmasq", peer, peerCmd.Process.Pid}}

	// Warm the caches with every forwarded name.
	for _, t := range targets {
		if _, err := dnsperf(ctx, "-s", t.addr, "-d", fwdFile, "-n", "1", "-q", "50", "-t", "2"); err != nil {
			return fmt.Errorf("warm %s: %w", t.name, err)
		}
	}
	rss := map[string]string{}
	for _, t := range targets {
		rss[t.name] = readRSS(t.pid)
	}

	fmt.Fprintf(stdout, "dnsperf %s, %d clients, %d×%s per server in saturated runs (alternating servers, median QPS); latency at %d qps; %d cached names; GOMAXPROCS=%s nproc=%d\n\n",
		dnsperfVersion(), *clients, *rounds, *duration, *latQPS, *names, os.Getenv("GOMAXPROCS"), numCPU())
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "data\tserver\tQPS\tQPS range\tlost\tp50 µs\tp99 µs\tp99.9 µs\tmax µs\t")
	for _, data := range []struct{ name, file string }{{"local", localFile}, {"cached-fwd", fwdFile}} {
		// The machine may be shared: alternate the servers round by round
		// so a burst of background load does not favour one of them.
		qps := make([][]float64, len(targets))
		lost := make([]string, len(targets))
		for r := range max(1, *rounds) {
			for i := range targets {
				if r%2 == 1 {
					i = len(targets) - 1 - i
				}
				sat, err := dnsperf(ctx, "-s", targets[i].addr, "-d", data.file, "-l", strconv.Itoa(int(duration.Seconds())),
					"-c", strconv.Itoa(*clients), "-q", "200")
				if err != nil {
					return err
				}
				qps[i] = append(qps[i], sat.qps)
				lost[i] = sat.lost
			}
		}
		for i, t := range targets {
			lat, err := dnsperf(ctx, "-s", t.addr, "-d", data.file, "-l", "5", "-Q", strconv.Itoa(*latQPS), "-v")
			if err != nil {
				return err
			}
			p := percentiles(lat.latencies, 0.5, 0.99, 0.999, 1)
			q := qps[i]
			slices.Sort(q)
			median := (q[(len(q)-1)/2] + q[len(q)/2]) / 2
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f–%.0f\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t\n", data.name, t.name, median, q[0], q[len(q)-1], lost[i], p[0], p[1], p[2], p[3])
		}
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	for _, t := range targets {
		fmt.Fprintf(stdout, "RSS %-8s after caching %d names: %s; after the runs: %s\n", t.name, *names, rss[t.name], readRSS(t.pid))
	}
	return nil
}

// serveBallast runs initagent/dns with the benchmark's records until ctx ends.
func serveBallast(ctx context.Context, names int) error {
	r := dns.Records{
		Cluster: "prod", Domain: "example.com",
		APIVIPs:     []netip.Addr{netip.MustParseAddr("10.0.0.10")},
		IngressVIPs: []netip.Addr{netip.MustParseAddr("10.0.0.20")},
		Nodes:       map[string][]netip.Addr{},
	}
	for i := range nodes {
		r.Nodes[fmt.Sprintf("node-%d", i)] = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)})}
	}
	s, err := dns.New(dns.Config{
		Listen:          []string{ballast + ":53"},
		Records:         r,
		Upstreams:       []netip.AddrPort{netip.MustParseAddrPort(upstream + ":53")},
		MaxCacheEntries: names * 2,
		RateLimit:       dns.RateLimit{QPS: -1}, // one benchmark client would hit any sane per-client limit
	})
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

func writeQueries(localFile, fwdFile string, names int) error {
	var local strings.Builder
	for i := range 1000 {
		switch i % 4 {
		case 0:
			fmt.Fprintf(&local, "api.%s A\n", zone)
		case 1:
			fmt.Fprintf(&local, "api-int.%s A\n", zone)
		case 2:
			fmt.Fprintf(&local, "app-%d.apps.%s A\n", i, zone)
		case 3:
			fmt.Fprintf(&local, "node-%d.%s A\n", i%nodes, zone)
		}
	}
	var fwd strings.Builder
	for i := range names {
		fmt.Fprintf(&fwd, "n%d.fwd.test A\n", i)
	}
	if err := os.WriteFile(localFile, []byte(local.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(fwdFile, []byte(fwd.String()), 0o644)
}

type perfResult struct {
	qps       float64
	lost      string
	latencies []float64 // µs, with -v only
}

var (
	qpsRe  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	lostRe = regexp.MustCompile(`Queries lost:\s+(\S+ \S+)`)
)

func dnsperf(ctx context.Context, args ...string) (perfResult, error) {
	cmd := exec.CommandContext(ctx, "dnsperf", args...)
	out, err := cmd.Output()
	if err != nil {
		return perfResult{}, fmt.Errorf("dnsperf %s: %w", strings.Join(args, " "), err)
	}
	var r perfResult
	m := qpsRe.FindSubmatch(out)
	if m == nil {
		return r, errors.New("dnsperf printed no QPS")
	}
	r.qps, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := lostRe.FindSubmatch(out); m != nil {
		r.lost = string(m[1])
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		// "> NOERROR name A 0.000123"
		f := strings.Fields(sc.Text())
		if len(f) == 5 && f[0] == ">" {
			if s, err := strconv.ParseFloat(f[4], 64); err == nil {
				r.latencies = append(r.latencies, s*1e6)
			}
		}
	}
	return r, nil
}

func percentiles(xs []float64, ps ...float64) []float64 {
	out := make([]float64, len(ps))
	if len(xs) == 0 {
		return out
	}
	slices.Sort(xs)
	for i, p := range ps {
		j := int(p*float64(len(xs))) - 1
		out[i] = xs[max(0, min(j, len(xs)-1))]
	}
	return out
}

func readRSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.Join(strings.Fields(strings.TrimPrefix(l, "VmRSS:")), " ")
		}
	}
	return "?"
}

func dnsperfVersion() string {
	out, _ := exec.Command("dnsperf", "-h").CombinedOutput()
	if m := regexp.MustCompile(`Version (\S+)`).FindSubmatch(out); m != nil {
		return string(m[1])
	}
	return "?"
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}
