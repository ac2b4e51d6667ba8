package vip

// Test harness for the tests that cross a wire: a "switch" namespace with a
// bridge, and node namespaces joined to it by veth pairs (eth0 in the node,
// p<i> on the bridge). Node i has 192.0.2.<i+1>/24, the link-local address
// fe80::<i+1> and the MAC 02:00:00:00:00:<i+1>. Speakers are separate
// processes, the test binary re-executed in the node's namespace with
// `ip netns exec` (see speakerEnv), so SIGKILL kills a node's speaker
// exactly as in production. All namespaces are deleted in t.Cleanup.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// waitLong is the generous deadline for events that normally take a
// fraction of a second; it only matters when a test fails.
const waitLong = 30 * time.Second

var (
	vip4 = netip.MustParsePrefix("192.0.2.100/24")
	vip6 = netip.MustParsePrefix("2001:db8::100/64")
)

type lan struct {
	t     *testing.T
	sw    string
	dir   string
	nodes []*node
}

type node struct {
	l    *lan
	i    int
	ns   string
	addr netip.Addr
	ll   netip.Addr
	mac  net.HardwareAddr
	nl   *netlink.Handle
	link netlink.Link
	sock string
	http *http.Client

	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status, valid after done is closed
	// down: the node's link is down (a dead node); it is not counted as
	// holding the VIP.
	down atomic.Bool
}

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func requireNetTest(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian package: iproute2/%s; CI installs it with tools/deps.sh): %v", tool, tool, err)
		}
	}
}

// newLAN creates the switch and n node namespaces.
func newLAN(t *testing.T, n int) *lan {
	t.Helper()
	requireNetTest(t)
	b := make([]byte, 3)
	rand.Read(b)
	base := "bvip-" + hex.EncodeToString(b)
	l := &lan{t: t, sw: base + "-sw", dir: t.TempDir()}
	addNS := func(ns string) {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
	}
	addNS(l.sw)
	// No multicast snooping: the bridge floods VRRP's groups like a
	// simple switch.
	run(t, "ip", "-n", l.sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	run(t, "ip", "-n", l.sw, "link", "set", "br0", "up")
	for i := range n {
		nd := &node{l: l, i: i, ns: fmt.Sprintf("%s-%d", base, i),
			addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}),
			ll:   netip.MustParseAddr(fmt.Sprintf("fe80::%d", i+1)),
			mac:  net.HardwareAddr{2, 0, 0, 0, 0, byte(i + 1)},
			sock: filepath.Join(l.dir, fmt.Sprintf("node%d.sock", i)),
		}
		addNS(nd.ns)
		port := fmt.Sprintf("p%d", i)
		run(t, "ip", "-n", l.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", nd.ns)
		run(t, "ip", "-n", l.sw, "link", "set", port, "master", "br0", "up")
		run(t, "ip", "netns", "exec", nd.ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		run(t, "ip", "-n", nd.ns, "link", "set", "eth0", "address", nd.mac.String(), "addrgenmode", "none")
		run(t, "ip", "-n", nd.ns, "addr", "add", nd.addr.String()+"/24", "dev", "eth0")
		run(t, "ip", "-n", nd.ns, "addr", "add", nd.ll.String()+"/64", "dev", "eth0", "nodad")
		run(t, "ip", "-n", nd.ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", nd.ns, "link", "set", "eth0", "up")
		h, err := netns.GetFromName(nd.ns)
		if err != nil {
			t.Fatal(err)
		}
		nd.nl, err = netlink.NewHandleAt(h)
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nd.nl.Close)
		if nd.link, err = nd.nl.LinkByName("eth0"); err != nil {
			t.Fatal(err)
		}
		sock := nd.sock
		nd.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			},
		}}
		l.nodes = append(l.nodes, nd)
	}
	return l
}

// peers returns every node's address but i's, of the first n nodes.
func (l *lan) peers(i, n int) []netip.Addr {
	var p []netip.Addr
	for _, nd := range l.nodes[:n] {
		if nd.i != i {
			p = append(p, nd.addr)
		}
	}
	return p
}

// start starts a speaker on the node; its log goes to the test log when
// the test fails.
func (nd *node) start(t *testing.T, spec speakerSpec) {
	t.Helper()
	spec.Sock = nd.sock
	os.Remove(nd.sock)
	js, _ := json.Marshal(spec)
	cmd := exec.Command("ip", "netns", "exec", nd.ns, os.Args[0])
	cmd.Env = append(os.Environ(), speakerEnv+"="+string(js))
	logf, err := os.Create(filepath.Join(nd.l.dir, fmt.Sprintf("node%d.%d.log", nd.i, time.Now().UnixNano())))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	nd.cmd, nd.done = cmd, make(chan struct{})
	done := nd.done
	go func() {
		nd.err = cmd.Wait()
		logf.Close()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("node%d speaker log:\n%s", nd.i, b)
		}
	})
}

// signal sends sig to the speaker; SIGKILL and SIGTERM also wait for it to exit.
func (nd *node) signal(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := nd.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-nd.done:
	case <-time.After(waitLong):
		t.Fatalf("node%d speaker did not exit after %v", nd.i, sig)
	}
	return nd.err
}

// setLink takes the node's link down (a dead node) or up.
func (nd *node) setLink(t *testing.T, up bool) {
	t.Helper()
	var err error
	if up {
		err = nd.nl.LinkSetUp(nd.link)
	} else {
		err = nd.nl.LinkSetDown(nd.link)
	}
	if err != nil {
		t.Fatal(err)
	}
	nd.down.Store(!up)
}

func (nd *node) status(t *testing.T) Status {
	t.Helper()
	var st Status
	deadline := time.Now().Add(waitLong)
	for {
		resp, err := nd.http.Get("http://speaker/status")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node%d status: %v", nd.i, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// router returns the status of the node's router name.
func (nd *node) router(t *testing.T, name string) RouterStatus {
	t.Helper()
	for _, r := range nd.status(t).Routers {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("node%d has no router %q", nd.i, name)
	return RouterStatus{}
}

func (nd *node) setTrack(t *testing.T, name string, healthy bool) {
	t.Helper()
	resp, err := nd.http.Post(fmt.Sprintf("http://speaker/track?name=%s&healthy=%v", name, healthy), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("node%d SetTrack(%s, %v): %s", nd.i, name, healthy, b)
	}
}

// holds reports whether the node has the VIP on eth0.
func (nd *node) holds(t testing.TB, vip netip.Prefix) bool {
	fam := netlink.FAMILY_V4
	if vip.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := nd.nl.AddrList(nd.link, fam)
	if err != nil {
		t.Errorf("node%d addresses: %v", nd.i, err)
		return false
	}
	for _, a := range addrs {
		if ip, _ := netip.AddrFromSlice(a.IP); ip.Unmap() == vip.Addr() {
			return true
		}
	}
	return false
}

// holders returns the live nodes that hold the VIP.
func (l *lan) holders(t testing.TB, vip netip.Prefix) []int {
	var h []int
	for _, nd := range l.nodes {
		if !nd.down.Load() && nd.holds(t, vip) {
			h = append(h, nd.i)
		}
	}
	return h
}

// sampler checks every 10 ms which live nodes hold the VIPs.
type sampler struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples int
	// split counts samples where two or more nodes held one VIP.
	split     int
	splitDesc []string
}

func (l *lan) sample(t *testing.T, vips ...netip.Prefix) *sampler {
	s := &sampler{stop: make(chan struct{})}
	s.wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			for _, v := range vips {
				h := l.holders(t, v)
				s.mu.Lock()
				s.samples++
				if len(h) > 1 {
					s.split++
					if len(s.splitDesc) < 5 {
						s.splitDesc = append(s.splitDesc, fmt.Sprintf("%s held by nodes %v at %s", v, h, time.Now().Format("15:04:05.000")))
					}
				}
				s.mu.Unlock()
			}
		}
	})
	t.Cleanup(s.done)
	return s
}

func (s *sampler) done() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.wg.Wait()
}

// waitFor polls cond until it holds or waitLong passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitLong, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitState waits until the node's router is in state want.
func (nd *node) waitState(t *testing.T, router string, want State) RouterStatus {
	t.Helper()
	var st RouterStatus
	waitFor(t, fmt.Sprintf("node%d router %s to be %s", nd.i, router, want), func() bool {
		st = nd.router(t, router)
		return st.State == want
	})
	return st
}

// inNS runs fn on an OS thread in the namespace ns; sockets fn opens stay
// in ns. The thread is never unlocked, so the runtime discards it.
func inNS(t *testing.T, ns string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err == nil {
			err = netns.Set(h)
			h.Close()
		}
		if err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("enter netns %s: %v", ns, err)
	}
}

// lastTransition returns the router's most recent transition to state.
func lastTransition(st RouterStatus, to State) (Transition, bool) {
	for _, tr := range slices.Backward(st.Transitions) {
		if tr.To == to {
			return tr, true
		}
	}
	return Transition{}, false
}
