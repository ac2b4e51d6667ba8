package dhcp

// Test harness for the tests that cross a wire: a pair of throwaway network
// namespaces joined by a veth pair, a real dnsmasq in the server namespace,
// and the client under test in the client namespace.
//
// How the client enters its namespace: the test starts a goroutine, locks it
// to its OS thread (runtime.LockOSThread) and moves that thread into the
// client namespace (setns via vishvananda/netns) before calling Run. Run
// opens all its sockets on that goroutine (see the package comment), so
// they all live in the client namespace; the goroutines nclient4 starts only
// read from sockets already opened. The goroutine never unlocks the thread,
// so when it returns the Go runtime ends the thread instead of reusing it in
// the wrong namespace. Nothing is ever created in the host's namespace: the
// veth pair is created inside the server namespace with its peer moved
// straight into the client namespace, and deleting the namespaces (in
// t.Cleanup) destroys it.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	serverIf = "bdhs0"
	clientIf = "bdhc0"
	// waitLong is the generous deadline for events that normally take a
	// fraction of a second; it only matters when a test fails.
	waitLong = 30 * time.Second
)

// testNet is a server and a client namespace joined by a veth pair.
type testNet struct {
	serverNS, clientNS string
	client             netns.NsHandle
}

func requireNetTest(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "dnsmasq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newTestNet creates the namespaces bdh-<random>-s and bdh-<random>-c with
// 192.0.2.1/24 and 2001:db8:1::1/64 on the server end of the veth pair.
func newTestNet(t *testing.T) *testNet {
	t.Helper()
	requireNetTest(t)
	b := make([]byte, 4)
	rand.Read(b)
	base := "bdh-" + hex.EncodeToString(b)
	tn := &testNet{serverNS: base + "-s", clientNS: base + "-c"}
	for _, ns := range []string{tn.serverNS, tn.clientNS} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
	}
	s, c := tn.serverNS, tn.clientNS
	run(t, "ip", "-n", s, "link", "add", serverIf, "type", "veth", "peer", "name", clientIf, "netns", c)
	// No duplicate address detection: addresses are usable at once, and
	// the DHCPv6 client's link-local address is not left tentative.
	run(t, "ip", "netns", "exec", s, "sysctl", "-qw", "net.ipv6.conf."+serverIf+".accept_dad=0")
	run(t, "ip", "netns", "exec", c, "sysctl", "-qw", "net.ipv6.conf."+clientIf+".accept_dad=0")
	run(t, "ip", "-n", s, "addr", "add", "192.0.2.1/24", "dev", serverIf)
	run(t, "ip", "-n", s, "addr", "add", "2001:db8:1::1/64", "dev", serverIf, "nodad")
	for _, x := range [][2]string{{s, "lo"}, {s, serverIf}, {c, "lo"}, {c, clientIf}} {
		run(t, "ip", "-n", x[0], "link", "set", x[1], "up")
	}
	h, err := netns.GetFromName(c)
	if err != nil {
		t.Fatalf("open netns %s: %v", c, err)
	}
	t.Cleanup(func() { h.Close() })
	tn.client = h
	tn.waitLinkLocal(t)
	return tn
}

// waitLinkLocal waits until the client interface has a link-local IPv6
// address (veth carrier comes up asynchronously).
func (tn *testNet) waitLinkLocal(t *testing.T) {
	t.Helper()
	tn.waitClientLink(t, "a link-local address", func(nh *netlink.Handle, link netlink.Link) bool {
		addrs, err := nh.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() && a.Flags&(syscall.IFA_F_TENTATIVE) == 0 {
				return true
			}
		}
		return false
	})
}

// waitCarrier waits until the client interface's carrier is as wanted.
func (tn *testNet) waitCarrier(t *testing.T, want bool) {
	t.Helper()
	tn.waitClientLink(t, fmt.Sprintf("carrier %v", want), func(_ *netlink.Handle, link netlink.Link) bool {
		return (link.Attrs().RawFlags&unix.IFF_RUNNING != 0) == want
	})
}

// waitClientLink polls the client interface until cond holds.
func (tn *testNet) waitClientLink(t *testing.T, what string, cond func(*netlink.Handle, netlink.Link) bool) {
	t.Helper()
	nh, err := netlink.NewHandleAt(tn.client)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	deadline := time.Now().Add(waitLong)
	for {
		link, err := nh.LinkByName(clientIf)
		if err != nil {
			t.Fatal(err)
		}
		if cond(nh, link) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s on %s after %s", what, clientIf, waitLong)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// addClientAddr plays netconf: it puts a leased address on the client
// interface, as the reconciler does with what OnLease publishes.
func (tn *testNet) addClientAddr(p netip.Prefix) error {
	nh, err := netlink.NewHandleAt(tn.client)
	if err != nil {
		return err
	}
	defer nh.Close()
	link, err := nh.LinkByName(clientIf)
	if err != nil {
		return err
	}
	return nh.AddrReplace(link, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}})
}

// inClientNS runs f on a goroutine locked to an OS thread in the client
// namespace (see the comment at the top of this file) and returns a
// function that cancels f's context and waits for f's result. The test's
// cleanup stops f too if the test did not.
func (tn *testNet) inClientNS(t *testing.T, f func(ctx context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with the goroutine.
		if err := netns.Set(tn.client); err != nil {
			errc <- fmt.Errorf("setns %s: %w", tn.clientNS, err)
			return
		}
		errc <- f(ctx)
	}()
	var (
		once   sync.Once
		result error
	)
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-errc:
			case <-time.After(waitLong):
				result = errors.New("client did not stop")
			}
		})
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("client: %v", err)
		}
	})
	return stop
}

// dnsmasq is a dnsmasq process in the server namespace.
type dnsmasq struct {
	logPath, leasePath string
}

// startDnsmasq runs dnsmasq in the server namespace with the common flags
// plus extra, and waits until it logs that it serves DHCP.
func (tn *testNet) startDnsmasq(t *testing.T, extra ...string) *dnsmasq {
	t.Helper()
	dir := t.TempDir()
	d := &dnsmasq{logPath: filepath.Join(dir, "dnsmasq.log"), leasePath: filepath.Join(dir, "leases")}
	args := append([]string{"netns", "exec", tn.serverNS, "dnsmasq",
		"--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface=" + serverIf, "--bind-interfaces",
		"--user=root", "--group=root", // files live in the test's private temp dir
		"--log-dhcp", "--log-facility=" + d.logPath,
		"--dhcp-leasefile=" + d.leasePath,
		"--pid-file=" + filepath.Join(dir, "dnsmasq.pid"),
	}, extra...)
	cmd := exec.Command("ip", args...) // ip netns exec execs dnsmasq: same PID
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(d.logPath)
			t.Logf("dnsmasq log:\n%s", b)
		}
	})
	deadline := time.After(waitLong)
	for !d.logHas("DHCP, ") {
		select {
		case <-exited:
			t.Fatalf("dnsmasq exited: %s", stderr.String())
		case <-deadline:
			t.Fatalf("dnsmasq did not start: %s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return d
}

// logLines returns dnsmasq's log lines that contain all of subs.
func (d *dnsmasq) logLines(subs ...string) []string {
	f, err := os.Open(d.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(sc.Text(), s)
		}
		if ok {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

// transactions returns how many DHCP transactions (distinct xids; a
// retransmission is logged again with the same xid) have a log line with
// all of subs.
func (d *dnsmasq) transactions(subs ...string) int {
	xids := map[string]bool{}
	for _, line := range d.logLines(subs...) {
		// "Nov 25 14:32:15 dnsmasq-dhcp[21247]: 200960845 DHCPDISCOVER(bdhs0) ..."
		_, rest, ok := strings.Cut(line, "]: ")
		if xid, _, ok2 := strings.Cut(rest, " "); ok && ok2 {
			xids[xid] = true
		}
	}
	return len(xids)
}

func (d *dnsmasq) logHas(subs ...string) bool { return len(d.logLines(subs...)) > 0 }

// waitLog waits until dnsmasq logs a line with all of subs.
func (d *dnsmasq) waitLog(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !d.logHas(subs...) {
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq never logged a line with %q", subs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLeaseGone waits until dnsmasq's lease file no longer holds addr
// (dnsmasq rewrites the file after it logged the release).
func (d *dnsmasq) waitLeaseGone(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for strings.Contains(d.leases(), addr) {
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq still has the lease for %s after release:\n%s", addr, d.leases())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leases returns dnsmasq's lease file.
func (d *dnsmasq) leases() string {
	b, _ := os.ReadFile(d.leasePath)
	return string(b)
}

// events collects what a client publishes.
type events struct {
	leases  chan Lease
	expired chan Lease
}

func newEvents() *events {
	return &events{leases: make(chan Lease, 32), expired: make(chan Lease, 32)}
}

func (e *events) onLease(l Lease)  { e.leases <- l }
func (e *events) onExpire(l Lease) { e.expired <- l }

func waitFor(t *testing.T, ch <-chan Lease, what string) Lease {
	t.Helper()
	select {
	case l := <-ch:
		return l
	case <-time.After(waitLong):
		t.Fatalf("no %s within %s", what, waitLong)
		return Lease{}
	}
}
