// Command dns benchmarks initagent/dns against dnsmasq with dnsperf, side by
// side in one run, inside a throwaway network namespace (needs root,
// unshare, dnsmasq and dnsperf: apt-get install dnsmasq-base dnsperf).
//
// Both servers get the same data: the cluster zone's records (answered
// locally) and N names under fwd.test forwarded to a third dnsmasq, the
// "datacenter" upstream, and cached. initagent/dns runs with the settings it
// ships with (the agent's: default cache size and per-client rate limit,
// loopback, the node's addresses and the pod and service CIDRs allowed).
// For each server and data set it prints the saturated QPS (dnsperf without
// a rate limit) and latency percentiles at a fixed, moderate rate, both as
// the node's own processes see them (from loopback, which is never rate
// limited); then latency as a pod sees it (from a pod address, at a rate
// under the per-client limit), what a pod flooding the server gets, and
// each server's RSS with N cached names. Every kind of run alternates the
// servers round by round.
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

	mdns "github.com/miekg/dns"

	"github.com/ballast-os/ballast/initagent/dns"
)

const (
	netnsEnv = "BALLAST_BENCH_NETNS"
	upstream = "127.0.0.2"  // dnsmasq playing the datacenter's DNS
	ballast  = "127.0.0.53" // initagent/dns
	peer     = "127.0.0.54" // dnsmasq serving the same data
	zone     = "prod.example.com"
	nodes    = 50
	// podAddr plays a pod: on lo here, since everything shares one
	// namespace, but outside the node's addresses the server is given.
	podAddr = "10.244.0.5"
	podCIDR = "10.244.0.0/16"
	svcCIDR = "10.96.0.0/12"
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
	rounds := fs.Int("rounds", 3, "runs of each kind per server and data set, alternating servers; QPS is their median, latency percentiles pool them")
	latDuration := fs.Duration("latency-duration", 5*time.Second, "length of each latency run")
	podQPS := fs.Int("pod-qps", 500, "query rate of the pod latency runs (under the per-client limit, 1000 qps by default)")
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
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", podAddr + "/32", "dev", "lo"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
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
	for _, addr := range []string{upstream, peer, ballast} {
		if err := waitDNS(ctx, addr); err != nil {
			return err
		}
	}

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

	fmt.Fprintf(stdout, "dnsperf %s, %d clients, %d×%s per server in saturated runs, %d×%s latency runs at %d qps (node, from loopback) and %d qps (pod, from %s), servers alternating round by round; ballast with its production defaults (rate limit %s); %d cached names; GOMAXPROCS=%s nproc=%d\n\n",
		dnsperfVersion(), *clients, *rounds, *duration, *rounds, *latDuration, *latQPS, *podQPS, podAddr, limitString(), *names, os.Getenv("GOMAXPROCS"), numCPU())
	// The machine may be shared: every kind of run alternates the servers
	// round by round, so a burst of background load favours neither.
	alternate := func(run func(i int) error) error {
		for r := range max(1, *rounds) {
			for i := range targets {
				if r%2 == 1 {
					i = len(targets) - 1 - i
				}
				if err := run(i); err != nil {
					return err
				}
			}
		}
		return nil
	}
	secs := func(d time.Duration) string { return strconv.Itoa(max(1, int(d.Round(time.Second).Seconds()))) }
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "data\tserver\tQPS\tQPS range\tlost\tp50 µs\tp99 µs\tp99.9 µs\tmax µs\tpod p50 µs\tpod p99 µs\tpod p99.9 µs\tpod lost\t")
	for _, data := range []struct{ name, file string }{{"local", localFile}, {"cached-fwd", fwdFile}} {
		qps := make([][]float64, len(targets))
		lost := make([]string, len(targets))
		if err := alternate(func(i int) error {
			sat, err := dnsperf(ctx, "-s", targets[i].addr, "-d", data.file, "-l", secs(*duration),
				"-c", strconv.Itoa(*clients), "-q", "200")
			qps[i] = append(qps[i], sat.qps)
			lost[i] = sat.lost
			return err
		}); err != nil {
			return err
		}
		lat := make([]perfResult, len(targets))
		if err := alternate(func(i int) error {
			r, err := dnsperf(ctx, "-s", targets[i].addr, "-d", data.file, "-l", secs(*latDuration), "-Q", strconv.Itoa(*latQPS), "-v")
			lat[i].latencies = append(lat[i].latencies, r.latencies...)
			return err
		}); err != nil {
			return err
		}
		pod := make([]perfResult, len(targets))
		if err := alternate(func(i int) error {
			r, err := dnsperf(ctx, "-s", targets[i].addr, "-a", podAddr, "-d", data.file, "-l", secs(*latDuration), "-Q", strconv.Itoa(*podQPS), "-v")
			pod[i].latencies = append(pod[i].latencies, r.latencies...)
			pod[i].lost = r.lost
			pod[i].codes = r.codes
			return err
		}); err != nil {
			return err
		}
		for i, t := range targets {
			p := percentiles(lat[i].latencies, 0.5, 0.99, 0.999, 1)
			pp := percentiles(pod[i].latencies, 0.5, 0.99, 0.999)
			q := qps[i]
			slices.Sort(q)
			median := (q[(len(q)-1)/2] + q[len(q)/2]) / 2
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f–%.0f\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t\n", data.name, t.name, median, q[0], q[len(q)-1], lost[i],
				p[0], p[1], p[2], p[3], pp[0], pp[1], pp[2], pod[i].lost)
			if c := pod[i].codes; strings.Contains(c, ",") || !strings.HasPrefix(c, "NOERROR") {
				fmt.Fprintf(os.Stderr, "warning: %s answered the pod's %s queries with %s\n", t.name, data.name, c)
			}
		}
	}
	tw.Flush()
	fmt.Fprintln(stdout)

	// A pod flooding the servers: ballast answers it at its per-client
	// rate and refuses the rest; dnsmasq has no such limit.
	for _, t := range targets {
		r, err := dnsperf(ctx, "-s", t.addr, "-a", podAddr, "-d", localFile, "-l", secs(*duration), "-c", strconv.Itoa(*clients), "-q", "200")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pod flooding %-8s %.0f replies/s: %s\n", t.name, r.qps, r.codes)
	}
	fmt.Fprintln(stdout)
	for _, t := range targets {
		fmt.Fprintf(stdout, "RSS %-8s after caching %d names: %s; after the runs: %s\n", t.name, *names, rss[t.name], readRSS(t.pid))
	}
	return nil
}

// limitString describes the per-client rate limit initagent/dns ships with.
func limitString() string {
	return "1000 qps per client, burst 2000, the node itself exempt"
}

// serveBallast runs initagent/dns with the benchmark's records until ctx
// ends, configured as the agent configures it on a node (agent/dns.go):
// defaults for the cache and the rate limit, recursion for loopback, the
// node's addresses and the pod and service CIDRs.
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
	addrs, err := dns.HostAddrs()
	if err != nil {
		return err
	}
	pods := netip.MustParsePrefix(podCIDR)
	// The pod's address is on lo only because this bench has one namespace.
	addrs = slices.DeleteFunc(addrs, pods.Contains)
	if names > 10000 {
		// The default cache (10000 entries) would not hold them all.
		fmt.Fprintf(os.Stderr, "warning: %d names exceed the default cache of 10000 entries\n", names)
	}
	s, err := dns.New(dns.Config{
		Listen:    []string{ballast + ":53"},
		Records:   r,
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort(upstream + ":53")},
		AllowedNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"),
			pods, netip.MustParsePrefix(svcCIDR)},
		NodeAddrs: addrs,
		// MaxCacheEntries, RateLimit: the defaults, as on a node.
	})
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// waitDNS waits until the server on addr answers a query, whatever its rcode.
func waitDNS(ctx context.Context, addr string) error {
	c := &mdns.Client{Timeout: 200 * time.Millisecond}
	m := new(mdns.Msg)
	m.SetQuestion("api."+zone+".", mdns.TypeA)
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if _, _, err = c.ExchangeContext(ctx, m, addr+":53"); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("no DNS server answers on %s:53 after 10s: %v", addr, err)
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
	codes     string    // "NOERROR 1000 (50.00%), REFUSED 1000 (50.00%)"
	latencies []float64 // µs, with -v only
}

var (
	qpsRe   = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	lostRe  = regexp.MustCompile(`Queries lost:\s+(\S+ \S+)`)
	codesRe = regexp.MustCompile(`Response codes:\s+(.*)`)
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
	if m := codesRe.FindSubmatch(out); m != nil {
		r.codes = strings.TrimSpace(string(m[1]))
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
