// Package nstest runs test code inside a fresh, throwaway network namespace,
// so kernel tests never touch the host's interfaces.
package nstest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread switched into a new network namespace, with a
// netlink handle bound to it. The namespace disappears when fn returns.
// It skips the test when not running as root.
func Do(t testing.TB, fn func(h *netlink.Handle)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	errc := make(chan any, 1)
	go func() {
		// The thread is never unlocked: after its netns changed the runtime must discard it.
		runtime.LockOSThread()
		defer func() { errc <- recover() }()
		orig, err := netns.Get()
		if err != nil {
			panic(err)
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			panic(err)
		}
		defer ns.Close()
		h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
		if err != nil {
			panic(err)
		}
		defer h.Close()
		if lo, err := h.LinkByName("lo"); err == nil {
			_ = h.LinkSetUp(lo)
		}
		fn(h)
	}()
	if p := <-errc; p != nil {
		if _, ok := p.(testFailed); ok {
			t.FailNow()
		}
		if s, ok := p.(testSkipped); ok {
			t.Skip(string(s))
		}
		t.Fatalf("in netns: %v", p)
	}
}

type testFailed struct{}

type testSkipped string

// Skipf skips the test from inside Do's function.
func Skipf(format string, args ...any) {
	panic(testSkipped(fmt.Sprintf(format, args...)))
}

// Fatalf fails the test from inside Do's function (t.Fatal must not be
// called from another goroutine).
func Fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Errorf(format, args...)
	panic(testFailed{})
}

// Veth creates a veth pair in h's namespace and returns the first end.
func Veth(t testing.TB, h *netlink.Handle, name, peer string) netlink.Link {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peer}); err != nil {
		Fatalf(t, "create veth %s: %v", name, err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		Fatalf(t, "veth %s: %v", name, err)
	}
	if p, err := h.LinkByName(peer); err == nil {
		_ = h.LinkSetUp(p)
	}
	return l
}

// RequireLinkKinds skips the test unless the running kernel can create links
// of these kinds (bond, vlan, dummy, bridge). Some CI kernels lack the
// bonding and 8021q drivers; qemu-tests runs the same tests on the image's
// kernel, which has them.
func RequireLinkKinds(t testing.TB, h *netlink.Handle, kinds ...string) {
	t.Helper()
	for _, kind := range kinds {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "probe-" + kind
		var l netlink.Link
		switch kind {
		case "bond":
			l = netlink.NewLinkBond(attrs)
		case "dummy":
			l = &netlink.Dummy{LinkAttrs: attrs}
		case "bridge":
			l = &netlink.Bridge{LinkAttrs: attrs}
		case "vlan":
			parent := netlink.NewLinkAttrs()
			parent.Name = "probe-vlanp"
			if err := h.LinkAdd(&netlink.Veth{LinkAttrs: parent, PeerName: "probe-vlanq"}); err != nil {
				Skipf("kernel cannot create veth: %v", err)
			}
			p, _ := h.LinkByName("probe-vlanp")
			attrs.ParentIndex = p.Attrs().Index
			l = &netlink.Vlan{LinkAttrs: attrs, VlanId: 1}
			defer h.LinkDel(p)
		default:
			panic("RequireLinkKinds: unknown kind " + kind)
		}
		if err := h.LinkAdd(l); err != nil {
			Skipf("this kernel cannot create %s links (%v); qemu-tests runs this test on the image kernel", kind, err)
		}
		_ = h.LinkDel(l)
	}
}

const isolatedEnv = "BALLAST_NSTEST_ISOLATED"

// Main runs a package's tests inside a fresh network namespace: called from
// TestMain, it re-executes the test binary under `unshare --net`, so every
// thread, including goroutines the code under test starts, is in the
// namespace. Without root or unshare it runs the tests in place, where
// Handle skips them.
func Main(m *testing.M) int {
	if os.Getenv(isolatedEnv) != "" {
		if h, err := netlink.NewHandle(unix.NETLINK_ROUTE); err == nil {
			if lo, err := h.LinkByName("lo"); err == nil {
				_ = h.LinkSetUp(lo)
			}
			h.Close()
		}
		return m.Run()
	}
	if _, err := exec.LookPath("unshare"); err != nil || os.Geteuid() != 0 {
		return m.Run()
	}
	return Unshare(os.Args[1:], nil, os.Stdout, os.Stderr)
}

// Unshare runs the test binary with args in a fresh network namespace and
// returns its exit code; env is added to the environment.
func Unshare(args, env []string, stdout, stderr io.Writer) int {
	cmd := exec.Command("unshare", append([]string{"--net", os.Args[0]}, args...)...)
	cmd.Env = append(append(os.Environ(), isolatedEnv+"=1"), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(stderr, "unshare:", err)
		return 2
	}
	return 0
}

// Handle returns a netlink handle for the namespace the tests run in, or
// skips the test when Main could not isolate them.
func Handle(t testing.TB) *netlink.Handle {
	t.Helper()
	if os.Getenv(isolatedEnv) == "" {
		t.Skip("needs root and unshare to run in its own network namespace")
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}
