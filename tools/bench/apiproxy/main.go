// Command apiproxy benchmarks initagent/apiproxy against HAProxy (mode tcp),
// side by side in one run, inside a throwaway network namespace (needs
// root, unshare and haproxy: apt-get install haproxy).
//
// Every party is its own process: three backends (this binary re-executed
// as an "apiserver": HTTPS GET /readyz on the same port as a raw data
// service), ballast's proxy (this binary re-executed, ballast's defaults:
// checks every 1s, fall 2, rise 1), and HAProxy, all with `option httpchk
// GET /readyz`, `check-ssl verify none`, `option redispatch`:
//   - "equiv": with the equivalents of what ballast does by default:
//     `option splice-auto` (ballast splices bulk data and copies small
//     messages), `observe layer4 error-limit 1 on-error mark-down` (a failed
//     connect marks the server down at once), `retries 2` (every other
//     server is tried), `timeout connect 2s`; checks as ballast's (inter 1s
//     fall 2 rise 1) and as on-prem production often has them (inter 5s
//     fall 3 rise 1);
//   - "plain" (-plain): the earlier configuration without splicing or
//     passive checks, `retries 1`, inter 1s fall 2 rise 1.
//
// It measures, alternating the proxies for -rounds rounds:
//   - throughput: MB/s received over -streams concurrent download streams;
//   - connection rate: new connections per second, each one a full
//     connect, 1-byte request, 1-byte answer, close, from -workers loops;
//
// and, for each proxy on its own, the time to drop a dead backend while a
// client opens a connection every 2ms:
//   - kill: the backend is SIGKILLed, connects to it are refused. A raw
//     socket sees every SYN to its port. Health checks send one SYN per
//     check interval (1s or more), the client's connections several per
//     100ms while the proxy still picks the dead backend, so the drop time
//     is the last SYN with two others within ±100ms, or within 50ms of the
//     first SYN after the kill (the connections in flight when it died).
//   - hang: the backend is SIGSTOPped, connects succeed but nothing
//     answers, as a hung apiserver. The raw socket tells the proxies'
//     client data ('C') from check data (TLS, 0x16); the drop time is the
//     last client data packet to the hung backend.
//
// Client connections that fail (or get no answer within 3s) after the
// kill are counted too.
//
// The CPU columns are the proxy process's CPU time over the run; CPU µs per
// connection is that over the connections made. -cpuprofile writes CPU
// profiles of ballast's proxy during the connection-rate runs.
//
//	go run ./tools/bench/apiproxy -duration 3s -rounds 5 -failover 10s
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ballast-os/ballast/initagent/apiproxy"
	"github.com/ballast-os/ballast/tools/bench/internal/stats"
)

const (
	roleEnv    = "BALLAST_BENCH_APIPROXY_ROLE"
	netnsEnv   = "BALLAST_BENCH_NETNS"
	profileEnv = "BALLAST_BENCH_CPUPROFILE"
)

var backendAddrs = []string{"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Getenv(roleEnv) {
	case "backend":
		err = runBackend(ctx, os.Args[1:])
	case "proxy":
		err = runProxy(ctx, os.Args[1:])
	default:
		err = run(ctx, os.Args[1:], os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/apiproxy:", err)
		os.Exit(1)
	}
}

type options struct {
	duration time.Duration
	streams  int
	workers  int
	rounds   int
	failover time.Duration
	plain    bool

	cpuprofile string
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench/apiproxy", flag.ContinueOnError)
	var o options
	// Many short rounds: the machine's speed drifts over minutes, and
	// alternating often exposes every proxy to the same drift.
	fs.DurationVar(&o.duration, "duration", time.Second, "length of each throughput and connection-rate run")
	fs.IntVar(&o.streams, "streams", 64, "concurrent download streams for throughput")
	fs.IntVar(&o.workers, "workers", 32, "concurrent connect loops for the connection rate")
	fs.IntVar(&o.rounds, "rounds", 20, "runs per proxy and measurement, alternating proxies; the table shows the median")
	fs.DurationVar(&o.failover, "failover", 20*time.Second, "how long to watch traffic after a backend dies; 0 skips the failover runs")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write CPU profiles of ballast's proxy during the connection-rate runs to `file`.1, .2, …")
	fs.BoolVar(&o.plain, "plain", true, "also run HAProxy without splice-auto and observe layer4 (the earlier, not equivalent configuration)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Getenv(netnsEnv) == "" {
		cmd := exec.CommandContext(ctx, "unshare", append([]string{"--net", os.Args[0]}, args...)...)
		cmd.Env = append(os.Environ(), netnsEnv+"=1")
		cmd.Stdout, cmd.Stderr = stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("unshare --net (needs root): %w", err)
		}
		return nil
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr != nil {
			return errors.New("haproxy not found: apt-get install haproxy")
		}
		haproxy = "/usr/sbin/haproxy"
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set lo up: %v: %s", err, out)
	}
	// Our own namespace: let the connection-rate loops reuse ports. The
	// backends' ports (9001–9003) stay outside the local port range, as an
	// apiserver's 6443 is outside a node's (32768–60999).
	for k, v := range map[string]string{
		"net/ipv4/tcp_tw_reuse":        "1",
		"net/ipv4/ip_local_port_range": "10000 65000",
		"net/core/somaxconn":           "4096",
	} {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s: %w", k, err)
		}
	}
	dir, err := os.MkdirTemp("", "bench-apiproxy")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	pin, err := writeCert(dir)
	if err != nil {
		return err
	}
	b := &bench{o: o, dir: dir, pin: pin, haproxy: haproxy, backends: map[string]*exec.Cmd{}}
	defer b.stopAll()
	for _, a := range backendAddrs {
		if err := b.startBackend(ctx, a); err != nil {
			return err
		}
	}
	proxies := []*proxy{
		{name: "ballast (defaults: 1s, fall 2)", addr: "127.0.0.1:7001"},
		{name: "haproxy equiv inter 1s fall 2", addr: "127.0.0.1:7002", inter: "1s", fall: 2, equiv: true},
		{name: "haproxy equiv inter 5s fall 3", addr: "127.0.0.1:7003", inter: "5s", fall: 3, equiv: true},
	}
	if o.plain {
		proxies = append(proxies, &proxy{name: "haproxy plain inter 1s fall 2", addr: "127.0.0.1:7004", inter: "1s", fall: 2})
	}
	for _, p := range proxies {
		if err := b.start(ctx, p); err != nil {
			return err
		}
	}
	if err := b.waitUsable(ctx, proxies); err != nil {
		return err
	}
	direct := &proxy{name: "direct to one backend (reference)", addr: backendAddrs[0]}
	all := append([]*proxy{direct}, proxies...)

	fmt.Fprintf(os.Stderr, "throughput and connection rate: %d rounds of %v each\n", o.rounds, o.duration)
	for round := range o.rounds {
		for _, p := range all {
			if err := ctx.Err(); err != nil {
				return err
			}
			r, err := b.throughput(ctx, p)
			if err != nil {
				return fmt.Errorf("%s: throughput: %w", p.name, err)
			}
			p.mbps = append(p.mbps, r.value)
			p.mbCPU = append(p.mbCPU, r.cpu)
			r, err = b.connRate(ctx, p)
			if err != nil {
				return fmt.Errorf("%s: connection rate: %w", p.name, err)
			}
			p.cps = append(p.cps, r.value)
			p.cpsCPU = append(p.cpsCPU, r.cpu)
			if r.value > 0 && r.cpu > 0 {
				p.usPerConn = append(p.usPerConn, 1e6*r.cpu/r.value)
			}
			p.connErrs += r.errors
			fmt.Fprintf(os.Stderr, "round %d %-36s %8.0f MB/s %8.0f conn/s %6.0f µs CPU/conn\n", round+1, p.name, p.mbps[round], p.cps[round], 1e6*r.cpu/max(r.value, 1))
		}
	}
	for _, p := range proxies {
		b.stop(p)
	}
	modes := []string{"kill", "hang"}
	if o.failover <= 0 {
		modes = nil
	}
	for _, mode := range modes {
		for _, p := range proxies {
			if err := ctx.Err(); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "failover (%s): %s\n", mode, p.name)
			f, err := b.failover(ctx, p, mode)
			if err != nil {
				return fmt.Errorf("%s: failover: %w", p.name, err)
			}
			p.failovers = append(p.failovers, f)
		}
	}

	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(stdout, "%d rounds of %v; %d download streams; %d connect loops; medians [min–max]; CPU = proxy process CPU%% (200%% = both cores)\n",
		o.rounds, o.duration, o.streams, o.workers)
	fmt.Fprintln(tw, "proxy\tthroughput MB/s\tCPU\tnew conn/s\tCPU\tCPU µs/conn\tconn errors\t")
	for _, p := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n", p.name, spread(p.mbps), cpuPct(p.mbCPU), spread(p.cps), cpuPct(p.cpsCPU), spread(p.usPerConn), p.connErrs)
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	ballast := proxies[0]
	for _, base := range proxies[1:] {
		fmt.Fprintf(stdout, "ballast / %s: throughput %.2f×, connection rate %.2f×, CPU per connection %.2f×\n", base.name,
			stats.Median(ballast.mbps)/stats.Median(base.mbps), stats.Median(ballast.cps)/stats.Median(base.cps), stats.Median(ballast.usPerConn)/stats.Median(base.usPerConn))
		// The machine's speed drifts between rounds; a round's runs are
		// back to back, so their ratio is less noisy than the medians'.
		ratios, faster := pairedRatios(ballast.cps, base.cps)
		fmt.Fprintf(stdout, "  connection rate round by round: median %.2f×, ballast ahead in %d of %d rounds\n", stats.Median(ratios), faster, len(ratios))
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "dead backend, client connecting every 2ms, watched for %v after the failure:\n", o.failover)
	fmt.Fprintln(tw, "proxy\tmode\tdropped after\tSYNs/requests to it\tfailed client conns\t")
	for _, mode := range []string{"kill", "hang"} {
		for _, p := range proxies {
			for _, f := range p.failovers {
				if f.mode == mode {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d / %d\t\n", p.name, f.mode, f.dropped.Round(time.Millisecond), f.sent, f.failed, f.total)
				}
			}
		}
	}
	return tw.Flush()
}

type proxy struct {
	name  string
	addr  string
	inter string // HAProxy's; empty for ballast
	fall  int
	equiv bool // HAProxy with ballast's equivalents: splice, mark down on a failed connect
	cmd   *exec.Cmd

	mbps, cps, mbCPU, cpsCPU, usPerConn []float64
	connErrs                            int
	failovers                           []failoverResult
}

type bench struct {
	o        options
	dir      string
	pin      string
	haproxy  string
	backends map[string]*exec.Cmd
	proxies  []*proxy
}

func self(ctx context.Context, role string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), roleEnv+"="+role)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func (b *bench) startBackend(ctx context.Context, addr string) error {
	cmd := self(ctx, "backend", "-listen", addr, "-cert", filepath.Join(b.dir, "cert.pem"), "-key", filepath.Join(b.dir, "key.pem"))
	if err := cmd.Start(); err != nil {
		return err
	}
	b.backends[addr] = cmd
	return waitListening(ctx, addr)
}

func (b *bench) killBackend(addr string, sig syscall.Signal) {
	cmd := b.backends[addr]
	_ = cmd.Process.Signal(sig)
}

func (b *bench) reapBackend(addr string) {
	cmd := b.backends[addr]
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	delete(b.backends, addr)
}

func (b *bench) start(ctx context.Context, p *proxy) error {
	if p.inter == "" {
		p.cmd = self(ctx, "proxy", "-front", p.addr, "-backends", strings.Join(backendAddrs, ","), "-pin", b.pin)
		if b.o.cpuprofile != "" {
			prof, err := filepath.Abs(b.o.cpuprofile)
			if err != nil {
				return err
			}
			p.cmd.Env = append(p.cmd.Env, profileEnv+"="+prof)
		}
	} else {
		cfg := filepath.Join(b.dir, strings.ReplaceAll(p.addr, ":", "_")+".cfg")
		if err := os.WriteFile(cfg, []byte(haproxyConfig(p)), 0o644); err != nil {
			return err
		}
		p.cmd = exec.CommandContext(ctx, b.haproxy, "-db", "-f", cfg)
		p.cmd.Stdout, p.cmd.Stderr = os.Stderr, os.Stderr
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	b.proxies = append(b.proxies, p)
	return waitListening(ctx, p.addr)
}

func (b *bench) stop(p *proxy) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	p.cmd = nil
}

func (b *bench) stopAll() {
	for _, p := range b.proxies {
		b.stop(p)
	}
	for a := range b.backends {
		b.reapBackend(a)
	}
}

// haproxyConfig is HAProxy in mode tcp with the health checks ballast
// runs. With equiv it also gets ballast's other defaults: splice(2) both
// ways (option splice-auto), a failed connect marks the server down at once
// (observe layer4, on-error mark-down) and the client is retried on another
// server (option redispatch, retries as many as the other servers), connect
// timeout 2s. Both have option redispatch.
func haproxyConfig(p *proxy) string {
	var s strings.Builder
	connect, retries, globalOpts, backendOpts, serverOpts := "5s", 1, "", "", ""
	if p.equiv {
		connect, retries = "2s", len(backendAddrs)-1
		// HAProxy takes pipes from a pool only while data waits in one;
		// its default, maxconn/4, needs more descriptors than the
		// machine's limit (20000) allows besides maxconn.
		globalOpts = "    maxpipes 512\n"
		backendOpts = "    option splice-auto\n"
		serverOpts = " observe layer4 error-limit 1 on-error mark-down"
	}
	fmt.Fprintf(&s, `global
    maxconn 9000
%sdefaults
    mode tcp
    timeout connect %s
    timeout client 1h
    timeout server 1h
    option redispatch
    retries %d
frontend api
    bind %s
    default_backend apiservers
backend apiservers
    balance roundrobin
%s    option httpchk GET /readyz
    http-check expect status 200
    default-server check check-ssl verify none inter %s fall %d rise 1%s
`, globalOpts, connect, retries, p.addr, backendOpts, p.inter, p.fall, serverOpts)
	for i, a := range backendAddrs {
		fmt.Fprintf(&s, "    server b%d %s\n", i+1, a)
	}
	return s.String()
}

func waitListening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not listen: %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitUsable waits until every proxy sends connections to every backend.
func (b *bench) waitUsable(ctx context.Context, ps []*proxy) error {
	for _, p := range ps {
		seen := map[string]bool{}
		deadline := time.Now().Add(30 * time.Second)
		for len(seen) < len(backendAddrs) {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: only backends %v answer after 30s", p.name, seen)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if name, err := request(p.addr, 3*time.Second); err == nil {
				seen[name] = true
			} else {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	return nil
}

// request makes one 'C' request: connect, send 'C', read the backend's
// name until EOF.
func request(addr string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{'C'}); err != nil {
		return "", err
	}
	name, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if len(name) == 0 {
		return "", errors.New("empty answer")
	}
	return string(name), nil
}

type result struct {
	value  float64
	cpu    float64 // proxy CPU seconds per wall second
	errors int
}

// cpuSeconds returns a process's user+system CPU time.
func cpuSeconds(p *proxy) float64 {
	if p.cmd == nil {
		return 0
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

func (b *bench) throughput(ctx context.Context, p *proxy) (result, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	conns := make([]net.Conn, 0, b.o.streams)
	for range b.o.streams {
		c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return result{}, err
		}
		conns = append(conns, c)
	}
	cpu0 := cpuSeconds(p)
	start := time.Now()
	stop := start.Add(b.o.duration)
	for _, c := range conns {
		wg.Go(func() {
			defer c.Close()
			if _, err := c.Write([]byte{'R'}); err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			_ = c.SetReadDeadline(stop)
			buf := make([]byte, 256<<10)
			for {
				n, err := c.Read(buf)
				total.Add(int64(n))
				if err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						firstErr.CompareAndSwap(nil, err)
					}
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu := (cpuSeconds(p) - cpu0) / elapsed
	if err, ok := firstErr.Load().(error); ok {
		return result{}, err
	}
	return result{value: float64(total.Load()) / 1e6 / elapsed, cpu: cpu}, ctx.Err()
}

func (b *bench) connRate(ctx context.Context, p *proxy) (result, error) {
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	if b.o.cpuprofile != "" && p.inter == "" && p.cmd != nil {
		_ = p.cmd.Process.Signal(syscall.SIGUSR1)
		defer p.cmd.Process.Signal(syscall.SIGUSR2)
	}
	cpu0 := cpuSeconds(p)
	start := time.Now()
	stop := start.Add(b.o.duration)
	for range b.o.workers {
		wg.Go(func() {
			for time.Now().Before(stop) && ctx.Err() == nil {
				if _, err := request(p.addr, 5*time.Second); err != nil {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	return result{value: float64(ok.Load()) / elapsed, cpu: (cpuSeconds(p) - cpu0) / elapsed, errors: int(failed.Load())}, ctx.Err()
}

// pairedRatios divides a's figures by b's of the same round and counts
// the rounds where a's was higher.
func pairedRatios(a, b []float64) (ratios []float64, higher int) {
	for i := range min(len(a), len(b)) {
		if b[i] <= 0 {
			continue
		}
		ratios = append(ratios, a[i]/b[i])
		if a[i] > b[i] {
			higher++
		}
	}
	return ratios, higher
}

type failoverResult struct {
	mode          string
	dropped       time.Duration
	sent          int // SYNs (kill) or client requests (hang) to the dead backend after it died
	failed, total int
}

// failover starts p alone, kills or freezes a backend under steady
// traffic and measures when the proxy stops sending connections to it.
func (b *bench) failover(ctx context.Context, p *proxy, mode string) (failoverResult, error) {
	res := failoverResult{mode: mode}
	if err := b.start(ctx, p); err != nil {
		return res, err
	}
	defer b.stop(p)
	if err := b.waitUsable(ctx, []*proxy{p}); err != nil {
		return res, err
	}
	victim := backendAddrs[0]
	port, _ := strconv.Atoi(victim[strings.LastIndexByte(victim, ':')+1:])
	sn, err := newSniffer(uint16(port))
	if err != nil {
		return res, err
	}

	var failed, total atomic.Int64
	var wg sync.WaitGroup
	clientCtx, stopClients := context.WithCancel(ctx)
	tick := time.NewTicker(2 * time.Millisecond)
	var killed atomic.Bool
	wg.Go(func() {
		defer tick.Stop()
		for {
			select {
			case <-clientCtx.Done():
				return
			case <-tick.C:
			}
			after := killed.Load()
			wg.Go(func() {
				_, err := request(p.addr, 3*time.Second)
				if after {
					total.Add(1)
					if err != nil {
						failed.Add(1)
					}
				}
			})
		}
	})
	time.Sleep(time.Second)
	sig := syscall.SIGKILL
	if mode == "hang" {
		sig = syscall.SIGSTOP
	}
	t0 := time.Now()
	killed.Store(true)
	b.killBackend(victim, sig)
	select {
	case <-ctx.Done():
	case <-time.After(b.o.failover):
	}
	stopClients()
	wg.Wait()
	pkts := sn.stop()
	res.failed, res.total = int(failed.Load()), int(total.Load())

	var syns, data []time.Time
	for _, pk := range pkts {
		if pk.at.Before(t0) {
			continue
		}
		switch {
		case pk.syn:
			syns = append(syns, pk.at)
		case pk.first == 'C':
			data = append(data, pk.at)
		}
	}
	if os.Getenv("BALLAST_BENCH_DEBUG") != "" {
		for _, pk := range pkts {
			if pk.syn && !pk.at.Before(t0) {
				fmt.Fprintf(os.Stderr, "  SYN +%v from port %d\n", pk.at.Sub(t0), pk.src)
			}
		}
	}
	if mode == "kill" {
		res.sent = len(syns)
		var last time.Time
		for _, t := range syns {
			if t.Sub(syns[0]) < 50*time.Millisecond || countNear(syns, t, 100*time.Millisecond) >= 3 {
				last = t
			}
		}
		if !last.IsZero() {
			res.dropped = last.Sub(t0)
		}
	} else {
		res.sent = len(data)
		if len(data) > 0 {
			res.dropped = data[len(data)-1].Sub(t0)
		}
	}
	// Bring the victim back for the next proxy.
	b.reapBackend(victim)
	if err := b.startBackend(ctx, victim); err != nil {
		return res, err
	}
	return res, nil
}

// countNear counts the times within d of t.
func countNear(ts []time.Time, t time.Time, d time.Duration) int {
	n := 0
	for _, u := range ts {
		if u.Sub(t) < d && t.Sub(u) < d {
			n++
		}
	}
	return n
}

type packet struct {
	at    time.Time
	src   uint16
	syn   bool
	first byte // first payload byte, 0 if none
}

// sniffer records the TCP packets to one local port with a raw socket,
// which gets a copy of every TCP packet the namespace receives.
type sniffer struct {
	fd       int
	stopping atomic.Bool
	mu       sync.Mutex
	pkts     []packet
	done     chan struct{}
}

func newSniffer(port uint16) (*sniffer, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_TCP)
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	// Wake up now and then to notice stop.
	tv := syscall.Timeval{Usec: 100000}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	s := &sniffer{fd: fd, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 65536)
		for !s.stopping.Load() {
			n, _, err := syscall.Recvfrom(fd, buf, 0)
			at := time.Now()
			if err == syscall.EAGAIN || err == syscall.EINTR {
				continue
			}
			if err != nil {
				return
			}
			if pk, ok := parse(buf[:n], port); ok {
				pk.at = at
				s.mu.Lock()
				s.pkts = append(s.pkts, pk)
				s.mu.Unlock()
			}
		}
	}()
	return s, nil
}

func (s *sniffer) stop() []packet {
	s.stopping.Store(true)
	<-s.done
	syscall.Close(s.fd)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pkts
}

func parse(b []byte, port uint16) (packet, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return packet{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if len(b) < ihl+20 || total > len(b) {
		return packet{}, false
	}
	tcp := b[ihl:total]
	if binary.BigEndian.Uint16(tcp[2:4]) != port {
		return packet{}, false
	}
	flags := tcp[13]
	off := int(tcp[12]>>4) * 4
	pk := packet{syn: flags&0x02 != 0 && flags&0x10 == 0, src: binary.BigEndian.Uint16(tcp[0:2])}
	if off < len(tcp) {
		pk.first = tcp[off]
	}
	return pk, pk.syn || pk.first != 0
}

func spread(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f [%.0f–%.0f]", stats.Median(v), slices.Min(v), slices.Max(v))
}

func cpuPct(v []float64) string {
	if len(v) == 0 || stats.Median(v) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*stats.Median(v))
}

// writeCert writes a self-signed apiserver certificate and returns the hex
// SHA-256 of its public key, ballast's pin.
func writeCert(dir string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", err
	}
	cert, _ := x509.ParseCertificate(der)
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:]), nil
}

// runProxy is ballast's proxy as its own process, with ballast's defaults.
func runProxy(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	front := fs.String("front", "", "frontend ip:port")
	backends := fs.String("backends", "", "comma-separated backends")
	pin := fs.String("pin", "", "hex SHA-256 of the backends' SubjectPublicKeyInfo")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := apiproxy.New(apiproxy.Config{
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Frontends:  []string{*front},
		Backends:   strings.Split(*backends, ","),
		PinnedSPKI: []string{*pin},
	})
	if err != nil {
		return err
	}
	if f := os.Getenv(profileEnv); f != "" {
		// SIGUSR1 starts a CPU profile into f.N, SIGUSR2 stops it: the
		// bench profiles the connection-rate runs only.
		sig := make(chan os.Signal, 2)
		signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
		go func() {
			var out *os.File
			n := 0
			for s := range sig {
				switch {
				case s == syscall.SIGUSR1 && out == nil:
					n++
					o, err := os.Create(fmt.Sprintf("%s.%d", f, n))
					if err == nil && pprof.StartCPUProfile(o) == nil {
						out = o
					}
				case s == syscall.SIGUSR2 && out != nil:
					pprof.StopCPUProfile()
					out.Close()
					out = nil
				}
			}
		}()
	}
	return p.Run(ctx)
}

// runBackend plays an apiserver: TLS connections get HTTPS (GET /readyz
// answers 200), plain ones the data service, by their first byte:
//
//	'R': send data until the client goes away (throughput)
//	'C': send this backend's address and close (connection rate, failover)
func runBackend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	listen := fs.String("listen", "", "ip:port")
	certFile := fs.String("cert", "", "PEM certificate")
	keyFile := fs.String("key", "", "PEM key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	tlsConns := make(chan net.Conn)
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
	go func() {
		_ = srv.Serve(tls.NewListener(&chanListener{ch: tlsConns, addr: ln.Addr(), done: ctx.Done()}, &tls.Config{Certificates: []tls.Certificate{cert}}))
	}()
	go func() {
		<-ctx.Done()
		ln.Close()
		srv.Close()
	}()
	data := make([]byte, 1<<20)
	name := []byte(*listen)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			br := bufio.NewReader(c)
			first, err := br.Peek(1)
			if err != nil {
				c.Close()
				return
			}
			switch first[0] {
			case 0x16: // TLS handshake
				select {
				case tlsConns <- &peekedConn{Conn: c, r: br}:
				case <-ctx.Done():
					c.Close()
				}
			case 'R':
				defer c.Close()
				for {
					if _, err := c.Write(data); err != nil {
						return
					}
				}
			default:
				c.Write(name)
				c.Close()
			}
		}()
	}
}

type chanListener struct {
	ch   chan net.Conn
	addr net.Addr
	done <-chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
