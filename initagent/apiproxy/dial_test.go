package apiproxy

import (
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// TestSelfConnectRefused: a backend port inside the namespace's local port
// range that nothing listens on reads as refused, not as a connection the
// kernel made from the socket to itself.
func TestSelfConnectRefused(t *testing.T) {
	nstest.Handle(t) // the test process runs in its own network namespace
	const rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"
	old, err := os.ReadFile(rangeFile)
	if err != nil {
		t.Fatal(err)
	}
	// One local port: a connect to it from 127.0.0.1 can only pick it.
	if err := os.WriteFile(rangeFile, []byte("40000 40000"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(rangeFile, old, 0o644) })

	r := readLocalPortRange()
	if r != (portRange{40000, 40000}) || !r.contains(40000) || r.contains(6443) {
		t.Fatalf("local port range %+v, want 40000–40000", r)
	}
	ap := netip.MustParseAddrPort("127.0.0.1:40000")
	if fd, err := connectIP(ap, r.contains(ap.Port())); err != unix.ECONNREFUSED {
		if err == nil {
			closeFD(fd)
		}
		t.Fatalf("connect to a local-range port nothing listens on: %v, want ECONNREFUSED", err)
	}
	// Without the check the socket ends up connected to itself.
	fd, err := connectOnce(ap, false)
	if err != nil {
		t.Fatalf("unchecked connect: %v", err)
	}
	defer func() {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}) // no TIME_WAIT on the one port
		closeFD(fd)
	}()
	if !connectedToItself(fd, ap) {
		t.Error("unchecked connect did not connect the socket to itself; the test no longer shows what the check is for")
	}
}
