package network

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/ballast-os/ballast/initagent/netconf"
)

// The netns tests run in a network namespace of their own (see nstest.Main).
func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }

// guard bounds a wait that only lasts this long when the code under test
// hangs; it is a failure, never the expected path.
const guard = 60 * time.Second

// dhcpNIC makes a veth `name` whose peer sits in a namespace of its own
// with 10.9.<n>.1/24 and a dnsmasq handing out leases from that subnet,
// and waits for its carrier. It returns the namespace.
func dhcpNIC(t *testing.T, h *netlink.Handle, name string, n int) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	ns := "bnet-" + hex.EncodeToString(b)
	peer := name + "p"
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "link", "add", name, "type", "veth", "peer", "name", peer, "netns", ns)
	run(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.9.%d.1/24", n), "dev", peer)
	run(t, "ip", "-n", ns, "link", "set", peer, "up")
	run(t, "ip", "link", "set", name, "up")
	StartDnsmasq(t, ns, peer, fmt.Sprintf("10.9.%d.10,10.9.%d.50,255.255.255.0,1h", n, n))
	waitCarrier(t, h, name, true)
	return ns
}

// deadNIC makes a veth `name` whose peer is down: no carrier, like an
// unplugged port.
func deadNIC(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	run(t, "ip", "link", "add", name, "type", "veth", "peer", "name", "x"+name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	run(t, "ip", "link", "set", name, "up")
	waitCarrier(t, h, name, false)
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// StartDnsmasq runs dnsmasq on iface in namespace ns and returns once it
// serves DHCP (it says so on stderr).
func StartDnsmasq(t *testing.T, ns, iface, dhcpRange string) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skipf("needs dnsmasq: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command("ip", "netns", "exec", ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface="+iface, "--bind-interfaces", "--user=root", "--group=root", "--no-ping",
		"--dhcp-range="+dhcpRange, "--log-dhcp", "--log-facility=-",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dnsmasq: %v", err)
	}
	var log strings.Builder
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !sent && strings.Contains(sc.Text(), "DHCP, IP range") {
				ready <- true
				sent = true
			}
		}
		if !sent {
			ready <- false
		}
		io.Copy(io.Discard, stderr)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("dnsmasq exited before serving DHCP")
		}
	case <-time.After(guard):
		t.Fatalf("dnsmasq did not start")
	}
}

// waitCarrier waits, on netlink events, until name's carrier is want.
func waitCarrier(t *testing.T, h *netlink.Handle, name string, want bool) {
	t.Helper()
	ch := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	defer func() {
		close(done)
		for range ch {
		}
	}()
	if err := netlink.LinkSubscribe(ch, done); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(guard)
	for {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if (l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0) == want {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("carrier of %s never became %v", name, want)
		}
	}
}

func startManager(t *testing.T, prefix string) *Manager {
	t.Helper()
	m := &Manager{Applier: &netconf.Applier{},
		NIC: func(l netlink.Link) bool { return strings.HasPrefix(l.Attrs().Name, prefix) && l.Type() == "veth" }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// TestDefaultNetworkSkipsNICsWithoutCarrier: DHCP on every NIC settles as
// soon as the NICs with carrier have a lease; an unplugged one is reported,
// not waited for (before, WaitSettled waited for it until ctx ended).
func TestDefaultNetworkSkipsNICsWithoutCarrier(t *testing.T) {
	h := nstest.Handle(t)
	dhcpNIC(t, h, "bnic0", 1)
	deadNIC(t, h, "bnic1")
	m := startManager(t, "bnic")
	m.CarrierGrace = -1

	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	err := m.Apply(ctx, nil, "")
	var se *SettleError
	if !errors.As(err, &se) || !se.Partial() || strings.Join(se.NoCarrier, " ") != "bnic1/4" {
		t.Fatalf("default network: %v (%#v), want a partial settle with bnic1/4 without carrier", err, se)
	}
	st := m.Status()
	if len(st.Leases) != 1 || st.Leases[0].Interface != "bnic0" || !strings.HasPrefix(st.Leases[0].Address.String(), "10.9.1.") {
		t.Errorf("leases %+v, want one on bnic0 from 10.9.1.0/24", st.Leases)
	}
}

// TestSettleWaitsForCarrierWithinGrace: an interface without carrier is
// waited for during the grace period; once its carrier comes, so does its lease.
func TestSettleWaitsForCarrierWithinGrace(t *testing.T) {
	h := nstest.Handle(t)
	srv := dhcpNIC(t, h, "bnic2", 2)
	// Pull the cable on the server's side: no carrier on bnic2.
	run(t, "ip", "-n", srv, "link", "set", "bnic2p", "down")
	waitCarrier(t, h, "bnic2", false)
	m := startManager(t, "bnic2")
	m.CarrierGrace = time.Hour // only the lease ends the wait

	m.SetDesired(mustDefault(t, m))
	res := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		res <- m.WaitSettled(ctx)
	}()
	run(t, "ip", "-n", srv, "link", "set", "bnic2p", "up") // plug it in
	if err := <-res; err != nil {
		t.Fatalf("settle after the carrier came: %v", err)
	}
	if st := m.Status(); len(st.Leases) != 1 || st.Leases[0].Interface != "bnic2" {
		t.Errorf("leases %+v", st.Leases)
	}
}

// TestSettleFailsFastWhenApplyFails: an apply error ends the wait at once.
func TestSettleFailsFastWhenApplyFails(t *testing.T) {
	nstest.Handle(t)
	m := startManager(t, "none")
	m.SetDesired(Desired{Spec: netconf.Spec{Links: []netconf.LinkSpec{{Name: "bmissing0", Kind: "ethernet"}}}})
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	err := m.WaitSettled(ctx)
	var se *SettleError
	if !errors.As(err, &se) || se.Failed == "" || se.Partial() || ctx.Err() != nil {
		t.Fatalf("settle of a failing apply: %v, want the apply error before the deadline", err)
	}
}

func mustDefault(t *testing.T, m *Manager) Desired {
	t.Helper()
	d, err := m.DefaultDesired()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
