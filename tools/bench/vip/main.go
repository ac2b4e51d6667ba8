// Command vip measures VIP failover: ballast's VRRP speaker against
// keepalived, side by side in one run.
//
// Topology: a "switch" namespace with a bridge; nodes A (priority 150) and
// B (priority 100, both preempt) and a client, each in its own namespace.
// A trial: A is master and has been for a steady window; then A dies (its
// link goes down and its speaker gets SIGKILL) and the failover time is
// measured from that moment until the VIP answers ARP from B's MAC, seen
// by a prober in the client that sends an ARP request for the VIP every
// 10 ms. Then A is restarted (a rebooted node: no VIP left on it) and takes
// the VIP back. Every 10 ms the VIP's holders are sampled: a split brain is
// a sample where both live nodes hold it, a flap is B taking the VIP while
// A is alive and master (in the steady window).
//
// Each configuration runs with idle CPUs and with every core busy
// (busy-loop processes).
//
//	go run ./tools/bench/vip [-trials 20] [-only ballast]
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ballast-os/ballast/initagent/vip"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	speakerEnv = "BALLAST_VIP_BENCH_SPEAKER"
	busyEnv    = "BALLAST_VIP_BENCH_BUSY"
	keepalived = "/usr/sbin/keepalived"
	vrid       = 77
)

var (
	vipPrefix = netip.MustParsePrefix("192.0.2.100/24")
	clientIP  = netip.MustParseAddr("192.0.2.3")
)

func main() {
	if spec := os.Getenv(speakerEnv); spec != "" {
		if err := runSpeaker(spec); err != nil {
			fmt.Fprintln(os.Stderr, "speaker:", err)
			os.Exit(1)
		}
		return
	}
	if os.Getenv(busyEnv) != "" {
		runtime.GOMAXPROCS(1)
		for {
		}
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vip bench:", err)
		os.Exit(1)
	}
}

// runSpeaker is a ballast speaker process (re-executed in a node namespace).
func runSpeaker(spec string) error {
	var rc vip.RouterConfig
	if err := json.Unmarshal([]byte(spec), &rc); err != nil {
		return err
	}
	s, err := vip.New(vip.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)), Routers: []vip.RouterConfig{rc}})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return s.Run(ctx)
}

type config struct {
	name  string
	start func(n *node, prio uint8, peer netip.Addr) (*exec.Cmd, error)
}

func run() error {
	trials := flag.Int("trials", 20, "failovers per configuration and load")
	only := flag.String("only", "", "run only configurations whose name contains this")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("needs root for network namespaces")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "vipbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ballast := func(interval time.Duration) config {
		return config{fmt.Sprintf("ballast advert %s (default)", interval), func(n *node, prio uint8, peer netip.Addr) (*exec.Cmd, error) {
			js, _ := json.Marshal(vip.RouterConfig{Name: "api", Interface: "eth0", VRID: vrid, Priority: prio, Preempt: true,
				AdvertInterval: interval, VIPs: []netip.Prefix{vipPrefix}, Peers: []netip.Addr{peer}})
			cmd := exec.Command("ip", "netns", "exec", n.ns, self)
			cmd.Env = append(os.Environ(), speakerEnv+"="+string(js))
			return n.startCmd(cmd, dir)
		}}
	}
	keep := func(interval time.Duration, note string) config {
		return config{fmt.Sprintf("keepalived advert_int %g%s", interval.Seconds(), note), func(n *node, prio uint8, peer netip.Addr) (*exec.Cmd, error) {
			d := filepath.Join(dir, fmt.Sprintf("%s-%d", n.name, time.Now().UnixNano()))
			os.MkdirAll(d, 0o755)
			conf := fmt.Sprintf(`global_defs {
	router_id %s
	vrrp_version 3
}
vrrp_instance api {
	state BACKUP
	interface eth0
	virtual_router_id %d
	priority %d
	advert_int %g
	unicast_src_ip %s
	unicast_peer {
		%s
	}
	virtual_ipaddress {
		%s dev eth0
	}
}
`, n.name, vrid, prio, interval.Seconds(), n.addr, peer, vipPrefix)
			if err := os.WriteFile(filepath.Join(d, "conf"), []byte(conf), 0o644); err != nil {
				return nil, err
			}
			cmd := exec.Command("ip", "netns", "exec", n.ns, keepalived, "-n", "-l", "-P", "-f", filepath.Join(d, "conf"),
				"-p", filepath.Join(d, "pid"), "-r", filepath.Join(d, "vrrp.pid"), "-c", filepath.Join(d, "check.pid"))
			return n.startCmd(cmd, dir)
		}}
	}
	configs := []config{ballast(vip.DefaultAdvertInterval)}
	if _, err := os.Stat(keepalived); err == nil {
		configs = append(configs, keep(vip.DefaultAdvertInterval, " (same interval)"), keep(time.Second, " (keepalived default)"))
	} else {
		fmt.Fprintf(os.Stderr, "no %s (apt-get install keepalived): measuring ballast only\n", keepalived)
	}

	t, err := newTopology()
	if err != nil {
		return err
	}
	defer t.close()
	p, err := t.startProber()
	if err != nil {
		return err
	}
	defer p.close()

	type row struct {
		name, load      string
		times           []time.Duration
		split           map[string]int
		flaps           int
		samples, failed int
		skipped         int
	}
	var rows []row
	for _, load := range []string{"idle", "busy"} {
		var busy []*exec.Cmd
		if load == "busy" {
			for range runtime.NumCPU() {
				cmd := exec.Command(self)
				cmd.Env = append(os.Environ(), busyEnv+"=1")
				if err := cmd.Start(); err != nil {
					return err
				}
				busy = append(busy, cmd)
			}
		}
		for _, c := range configs {
			if *only != "" && !strings.Contains(c.name, *only) {
				continue
			}
			r := row{name: c.name, load: load}
			fmt.Fprintf(os.Stderr, "%s, %s CPUs: ", c.name, load)
			res, err := t.trials(c, p, *trials)
			if err != nil {
				fmt.Fprintln(os.Stderr, "error:", err)
			}
			r.times, r.split, r.flaps, r.samples, r.failed, r.skipped = res.times, res.split, res.flaps, res.samples, res.failed, res.skipped
			fmt.Fprintln(os.Stderr)
			rows = append(rows, r)
		}
		for _, b := range busy {
			b.Process.Kill()
			b.Wait()
		}
	}

	fmt.Printf("VIP failover: kill -9 of the master (and its link down) until the VIP answers ARP from the new master\n")
	fmt.Printf("%d CPUs, %d trials per row, ARP probe every 10 ms, holders sampled every 10 ms\n\n", runtime.NumCPU(), *trials)
	fmt.Printf("%-45s %-5s %6s %7s %7s %7s %7s %12s %12s %12s %6s\n", "configuration", "load", "trials", "min", "median", "p95", "max",
		"split:steady", "split:failov", "split:takebk", "flaps")
	for _, r := range rows {
		slices.Sort(r.times)
		q := func(f float64) string {
			if len(r.times) == 0 {
				return "-"
			}
			return fmt.Sprintf("%.3f", r.times[min(len(r.times)-1, int(f*float64(len(r.times)-1)+0.5))].Seconds())
		}
		trials := fmt.Sprint(len(r.times))
		if r.failed > 0 {
			trials += fmt.Sprintf("(+%d timed out)", r.failed)
		}
		if r.skipped > 0 {
			trials += fmt.Sprintf("(+%d flapped)", r.skipped)
		}
		fmt.Printf("%-45s %-5s %6s %7s %7s %7s %7s %12d %12d %12d %6d\n", r.name, r.load, trials, q(0), q(0.5), q(0.95), q(1),
			r.split["steady"], r.split["failover"], r.split["takeback"], r.flaps)
	}
	fmt.Printf("\ntimes in seconds. split:<phase>: 10 ms samples where both live nodes held the VIP, in the steady window (1.5-2.5 s per trial,\n" +
		"A master), during the failover (A dead: cannot happen) and while the restarted A takes the VIP back (preempt).\n" +
		"flaps: times B took the VIP in a steady window, while A was alive and master; a trial where B still held the VIP\n" +
		"when A was killed has no failover to time and is listed as (+n flapped) instead of in the times.\n")
	return nil
}

type result struct {
	times          []time.Duration
	split          map[string]int
	flaps, samples int
	failed         int
	skipped        int
}

// trials runs n failovers of one configuration.
func (t *topology) trials(c config, p *prober, n int) (res result, err error) {
	a, b := t.nodes[0], t.nodes[1]
	var aCmd, bCmd *exec.Cmd
	defer func() {
		for _, cmd := range []*exec.Cmd{aCmd, bCmd} {
			if cmd != nil {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				cmd.Wait()
			}
		}
		a.delVIP()
		b.delVIP()
		a.setLink(true)
	}()
	if bCmd, err = c.start(b, 100, a.addr); err != nil {
		return res, err
	}
	s := t.sample()
	defer s.stop()
	for i := range n {
		// A up and master.
		a.delVIP()
		if err := a.setLink(true); err != nil {
			return res, err
		}
		s.setPhase("takeback")
		if aCmd, err = c.start(a, 150, b.addr); err != nil {
			return res, err
		}
		if err := waitUntil(30*time.Second, func() bool { return a.holds() && !b.holds() }); err != nil {
			return res, fmt.Errorf("trial %d: A never became the only master", i)
		}
		// Steady window: B must not take the VIP.
		s.setPhase("steady")
		// A random part puts the failure at a random point of the
		// master's advert cycle (the failover time depends on it).
		time.Sleep(1500*time.Millisecond + time.Duration(mrand.Int64N(int64(time.Second))))
		s.setPhase("failover")
		// A dies.
		p.drain()
		bMaster := b.holds()
		t0 := time.Now()
		a.setLink(false)
		syscall.Kill(-aCmd.Process.Pid, syscall.SIGKILL)
		aCmd.Wait()
		aCmd = nil
		if d, ok := p.firstFrom(b.mac, t0, 15*time.Second); bMaster {
			// B flapped to master in the steady window: no failover to time.
			res.skipped++
			fmt.Fprint(os.Stderr, "(B already master) ")
		} else if ok {
			res.times = append(res.times, d)
			fmt.Fprintf(os.Stderr, "%.0fms ", d.Seconds()*1000)
		} else {
			res.failed++
			fmt.Fprint(os.Stderr, "timeout ")
		}
	}
	res.split, res.flaps, res.samples = s.result()
	return res, nil
}

// topology is the switch, nodes A and B and the client.
type topology struct {
	sw    string
	nodes []*node
}

type node struct {
	name string
	ns   string
	addr netip.Addr
	mac  net.HardwareAddr
	nl   *netlink.Handle
	link netlink.Link
	mu   sync.Mutex
	down bool
}

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func newTopology() (*topology, error) {
	b := make([]byte, 3)
	rand.Read(b)
	base := "bvb-" + hex.EncodeToString(b)
	t := &topology{sw: base + "-sw"}
	if err := sh("ip", "netns", "add", t.sw); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", t.sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"},
		{"ip", "-n", t.sw, "link", "set", "br0", "up"},
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			t.close()
			return nil, err
		}
	}
	for i, name := range []string{"A", "B", "client"} {
		n := &node{name: name, ns: base + "-" + name, addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}),
			mac: net.HardwareAddr{2, 0, 0, 0, 0, byte(i + 1)}}
		if err := sh("ip", "netns", "add", n.ns); err != nil {
			t.close()
			return nil, err
		}
		t.nodes = append(t.nodes, n)
		port := fmt.Sprintf("p%d", i)
		for _, s := range [][]string{
			{"ip", "-n", t.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n.ns},
			{"ip", "-n", t.sw, "link", "set", port, "master", "br0", "up"},
			{"ip", "-n", n.ns, "link", "set", "eth0", "address", n.mac.String()},
			{"ip", "-n", n.ns, "addr", "add", n.addr.String() + "/24", "dev", "eth0"},
			{"ip", "-n", n.ns, "link", "set", "lo", "up"},
			{"ip", "-n", n.ns, "link", "set", "eth0", "up"},
		} {
			if err := sh(s...); err != nil {
				t.close()
				return nil, err
			}
		}
		h, err := netns.GetFromName(n.ns)
		if err != nil {
			t.close()
			return nil, err
		}
		n.nl, err = netlink.NewHandleAt(h)
		h.Close()
		if err == nil {
			n.link, err = n.nl.LinkByName("eth0")
		}
		if err != nil {
			t.close()
			return nil, err
		}
	}
	return t, nil
}

func (t *topology) close() {
	for _, n := range t.nodes {
		if n.nl != nil {
			n.nl.Close()
		}
		sh("ip", "netns", "del", n.ns)
	}
	sh("ip", "netns", "del", t.sw)
}

func (n *node) startCmd(cmd *exec.Cmd, dir string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(filepath.Join(dir, n.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: kill -9 reaches keepalived's VRRP child too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, cmd.Start()
}

func (n *node) setLink(up bool) error {
	n.mu.Lock()
	n.down = !up
	n.mu.Unlock()
	if up {
		return n.nl.LinkSetUp(n.link)
	}
	return n.nl.LinkSetDown(n.link)
}

func (n *node) alive() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.down
}

func (n *node) holds() bool {
	addrs, err := n.nl.AddrList(n.link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ip, _ := netip.AddrFromSlice(a.IP); ip.Unmap() == vipPrefix.Addr() {
			return true
		}
	}
	return false
}

func (n *node) delVIP() {
	ip := vipPrefix.Addr().AsSlice()
	n.nl.AddrDel(n.link, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(vipPrefix.Bits(), 32)}})
}

func waitUntil(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timeout")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// sampler watches the VIP's holders every 10 ms.
type sampler struct {
	t              *topology
	done           chan struct{}
	wg             sync.WaitGroup
	mu             sync.Mutex
	phase          string
	bHeld          bool
	split          map[string]int // by phase
	flaps, samples int
}

func (t *topology) sample() *sampler {
	s := &sampler{t: t, done: make(chan struct{}), split: map[string]int{}}
	s.wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		a, b := t.nodes[0], t.nodes[1]
		for {
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
			aHolds := a.alive() && a.holds()
			bHolds := b.holds()
			s.mu.Lock()
			s.samples++
			if aHolds && bHolds {
				s.split[s.phase]++
			}
			if s.phase == "steady" && bHolds && !s.bHeld {
				s.flaps++
			}
			s.bHeld = bHolds
			s.mu.Unlock()
		}
	})
	return s
}

func (s *sampler) setPhase(p string) {
	s.mu.Lock()
	s.phase = p
	s.mu.Unlock()
}

func (s *sampler) stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.wg.Wait()
}

func (s *sampler) result() (split map[string]int, flaps, samples int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.split), s.flaps, s.samples
}

// prober sends an ARP request for the VIP from the client every 10 ms and
// reports the replies.
type prober struct {
	c       *packet.Conn
	replies chan reply
	done    chan struct{}
	wg      sync.WaitGroup
}

type reply struct {
	mac net.HardwareAddr
	at  time.Time
}

func (t *topology) startProber() (*prober, error) {
	client := t.nodes[2]
	p := &prober{replies: make(chan reply, 4096), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		// The thread stays in the client namespace and is never
		// unlocked, so the runtime discards it when this goroutine ends.
		runtime.LockOSThread()
		h, err := netns.GetFromName(client.ns)
		if err == nil {
			err = netns.Set(h)
			h.Close()
		}
		if err == nil {
			var ifi *net.Interface
			if ifi, err = net.InterfaceByName("eth0"); err == nil {
				p.c, err = packet.Listen(ifi, packet.Raw, 0x0806, nil)
			}
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("prober: %w", err)
	}
	req := make([]byte, 42)
	copy(req[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(req[6:12], client.mac)
	binary.BigEndian.PutUint16(req[12:], 0x0806)
	arp := req[14:]
	binary.BigEndian.PutUint16(arp[0:], 1)
	binary.BigEndian.PutUint16(arp[2:], 0x0800)
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:], 1)
	copy(arp[8:14], client.mac)
	cip, vip := clientIP.As4(), vipPrefix.Addr().As4()
	copy(arp[14:18], cip[:])
	copy(arp[24:28], vip[:])
	p.wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			p.c.WriteTo(req, &packet.Addr{HardwareAddr: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}})
			select {
			case <-p.done:
				return
			case <-tick.C:
			}
		}
	})
	p.wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := p.c.ReadFrom(buf)
			if err != nil {
				return
			}
			at := time.Now()
			b := buf[:n]
			if n < 42 || binary.BigEndian.Uint16(b[20:]) != 2 || netip.AddrFrom4([4]byte(b[28:32])) != vipPrefix.Addr() {
				continue
			}
			select {
			case p.replies <- reply{mac: slices.Clone(net.HardwareAddr(b[22:28])), at: at}:
			default:
			}
		}
	})
	return p, nil
}

func (p *prober) drain() {
	for {
		select {
		case <-p.replies:
		default:
			return
		}
	}
}

// firstFrom waits for the first reply from mac after t0.
func (p *prober) firstFrom(mac net.HardwareAddr, t0 time.Time, limit time.Duration) (time.Duration, bool) {
	timeout := time.After(limit)
	for {
		select {
		case r := <-p.replies:
			if r.at.After(t0) && string(r.mac) == string(mac) {
				return r.at.Sub(t0), true
			}
		case <-timeout:
			return 0, false
		}
	}
}

func (p *prober) close() {
	close(p.done)
	p.c.Close()
	p.wg.Wait()
}
