package probe

// The kernel tests need two network namespaces joined by a veth pair, with
// real peers (the peer's kernel, dnsmasq, Go servers) answering in one and
// the probes running in the other:
//
//	this process's netns            peer netns
//	pr0 10.9.0.2/24                 pr1 10.9.0.1/24 (+ .3, .4: miekg servers, nothing)
//	    fd00:9::2/64, fe80::2/64        fd00:9::1/64, fe80::1/64
//	                                    10.9.0.99, fd00:9::99: nobody
//
// A probe creates its sockets on whatever thread its goroutine runs on, and
// RunAll and net/http start goroutines of their own, so locking one thread
// into a namespace (nstest.Do) is not enough: TestMain re-runs the whole test
// binary in a fresh network namespace instead. The peer namespace is entered
// by one locked thread at a time, only to create listening sockets and start
// dnsmasq; sockets stay in the namespace they were created in.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsEnv is set to "1" in the test binary re-run in its own netns.
const netnsEnv = "BALLAST_PROBE_TEST_IN_NETNS"

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	switch {
	case os.Getenv(netnsEnv) == "1":
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bring up lo in the test netns: %v\n", err)
			return 1
		}
	case os.Geteuid() == 0:
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), netnsEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		// Pdeathsig fires when the forking thread exits, so keep it.
		runtime.LockOSThread()
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		err := cmd.Run()
		if exit, ok := err.(*exec.ExitError); ok {
			return exit.ExitCode()
		}
		if err == nil {
			return 0
		}
		// No new netns (e.g. a restricted container): run the tests that
		// need none; the kernel tests skip.
		fmt.Fprintf(os.Stderr, "cannot re-run tests in a new network namespace (%v); kernel tests will skip\n", err)
		os.Setenv(netnsEnv, "unavailable")
	}
	return m.Run()
}

type lab struct {
	self, peer netns.NsHandle
	ph         *netlink.Handle // netlink in the peer netns
	ifname     string          // probe side of the veth
}

// newLab builds the two-namespace lab described at the top of this file.
// Everything is removed when the test ends.
func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Getenv(netnsEnv) != "1" {
		t.Skip("needs root: the test binary re-runs itself in a private network namespace")
	}
	self, err := netns.Get()
	if err != nil {
		t.Fatalf("get own netns: %v", err)
	}
	t.Cleanup(func() { self.Close() })
	peer := newNetns(t, self)
	t.Cleanup(func() { peer.Close() })
	ph, err := netlink.NewHandleAt(peer)
	if err != nil {
		t.Fatalf("netlink handle in peer netns: %v", err)
	}
	t.Cleanup(ph.Close)
	l := &lab{self: self, peer: peer, ph: ph, ifname: "pr0"}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = "pr0"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "pr1"}); err != nil {
		t.Fatalf("create veth pr0/pr1: %v", err)
	}
	t.Cleanup(func() {
		if pr0, err := netlink.LinkByName("pr0"); err == nil {
			_ = netlink.LinkDel(pr0)
		}
	})
	pr1, err := netlink.LinkByName("pr1")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(pr1, int(peer)); err != nil {
		t.Fatalf("move pr1 into peer netns: %v", err)
	}
	sh, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	configure(t, sh, "pr0", "10.9.0.2/24", "fd00:9::2/64", "fe80::2/64")
	configure(t, ph, "pr1", "10.9.0.1/24", "10.9.0.3/24", "10.9.0.4/24", "fd00:9::1/64", "fe80::1/64")
	if lo, err := ph.LinkByName("lo"); err == nil {
		_ = ph.LinkSetUp(lo)
	}
	waitOperUp(t, "pr0")
	return l
}

// configure adds nodad addresses to the link name and sets it up.
func configure(t *testing.T, h *netlink.Handle, name string, addrs ...string) {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		// No duplicate address detection: addresses are usable at once.
		addr.Flags = unix.IFA_F_NODAD
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("add %s to %s: %v", a, name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("set %s up: %v", name, err)
	}
}

func waitOperUp(t *testing.T, name string) {
	t.Helper()
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		if l, err := netlink.LinkByName(name); err == nil && l.Attrs().OperState == netlink.OperUp {
			return
		}
	}
	t.Fatalf("%s did not come up within 5s", name)
}

// newNetns creates a network namespace and returns a handle to it, leaving
// the calling thread in self.
func newNetns(t *testing.T, self netns.NsHandle) netns.NsHandle {
	t.Helper()
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.New()
		if err == nil && netns.Set(self) == nil {
			runtime.UnlockOSThread()
		} // else: the thread stays locked and is discarded with this goroutine
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create peer netns: %v", r.err)
	}
	return r.ns
}

// inPeer runs fn on a thread in the peer netns: sockets fn creates and
// processes it starts live there.
func (l *lab) inPeer(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(l.peer); err != nil {
			errc <- fmt.Errorf("enter peer netns: %w", err)
			return // thread stays locked and is discarded
		}
		err := fn()
		if netns.Set(l.self) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// listen opens a TCP listener on addr in the peer netns, closed when the test ends.
func (l *lab) listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	l.inPeer(t, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// listenPacket opens a UDP socket on addr in the peer netns, closed when the test ends.
func (l *lab) listenPacket(t *testing.T, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	l.inPeer(t, func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	t.Cleanup(func() { pc.Close() })
	return pc
}
