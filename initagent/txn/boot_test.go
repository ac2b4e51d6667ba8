package txn

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// guard bounds waits that only last this long when the code under test
// hangs: reaching it is the failure, never the expected path.
const guard = 60 * time.Second

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// dhcpNIC makes a veth `name` whose peer, in a namespace of its own, has
// 10.9.<n>.1/24 and a dnsmasq serving leases; it returns a function that
// stops dnsmasq (the server goes away, the carrier stays).
func dhcpNIC(t *testing.T, h *netlink.Handle, name string, n int) (stopServer func()) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skipf("needs dnsmasq: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns, peer := "btxd-"+hex.EncodeToString(b), "x"+name
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh(t, "ip", "link", "add", name, "type", "veth", "peer", "name", peer, "netns", ns)
	sh(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.9.%d.1/24", n), "dev", peer)
	sh(t, "ip", "-n", ns, "link", "set", peer, "up")
	sh(t, "ip", "link", "set", name, "up")

	dir := t.TempDir()
	cmd := exec.Command("ip", "netns", "exec", ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface="+peer, "--bind-interfaces", "--user=root", "--group=root", "--no-ping",
		fmt.Sprintf("--dhcp-range=10.9.%d.10,10.9.%d.50,255.255.255.0,1h", n, n), "--log-facility=-",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dnsmasq: %v", err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			if !sent && strings.Contains(sc.Text(), "DHCP, IP range") {
				ready <- true
				sent = true
			}
		}
		if !sent {
			ready <- false
		}
	}()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stopServer = func() { cmd.Process.Kill(); <-exited }
	t.Cleanup(stopServer)
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("dnsmasq exited before serving DHCP")
		}
	case <-time.After(guard):
		t.Fatal("dnsmasq did not start")
	}
	waitCarrier(t, h, name, true)
	return stopServer
}

// vethNIC makes a veth `name` whose peer (in this namespace) is up (carrier,
// but nothing answers DHCP) or down (no carrier, like an unplugged port).
func vethNIC(t *testing.T, h *netlink.Handle, name string, peerUp bool) {
	t.Helper()
	sh(t, "ip", "link", "add", name, "type", "veth", "peer", "name", "x"+name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	sh(t, "ip", "link", "set", name, "up")
	if peerUp {
		sh(t, "ip", "link", "set", "x"+name, "up")
	}
	waitCarrier(t, h, name, peerUp)
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

// realNetwork runs the agent's network manager (netconf and DHCP clients)
// with the default network on the NICs named in nics.
func realNetwork(t *testing.T, nics ...string) *network.Manager {
	t.Helper()
	m := &network.Manager{Applier: &netconf.Applier{}, CarrierGrace: -1,
		NIC: func(l netlink.Link) bool {
			for _, n := range nics {
				if l.Attrs().Name == n {
					return true
				}
			}
			return false
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

const cfgHead = "apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  interfaces:\n"

// commit writes data into the slots as a committed config.
func commit(t *testing.T, store slot.Store, data string) string {
	t.Helper()
	name, err := slot.Begin(store, slot.Header{}, []byte(data))
	if err == nil {
		err = slot.Commit(store, name)
	}
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// TestBootFallsBackWithinDeadlines: the committed config never settles
// (DHCP on a port where nobody answers), the other committed slot names a
// NIC that is not there, so the node falls back to DHCP on every NIC;
// that does not wait for the NIC without carrier. Boot returns and the
// record says what applied and why. Before, Boot waited forever on the
// first slot.
func TestBootFallsBackWithinDeadlines(t *testing.T) {
	h := nstest.Handle(t)
	dhcpNIC(t, h, "bnic0", 1)     // carrier and a DHCP server
	vethNIC(t, h, "bnic1", false) // no carrier
	vethNIC(t, h, "bsrv0", true)  // carrier, no DHCP server
	store, err := slot.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other := commit(t, store, cfgHead+"    - {name: bmissing0, addresses: [10.77.0.5/24]}\n")
	chosen := commit(t, store, cfgHead+"    - {name: bsrv0, dhcp4: true}\n")

	netm := realNetwork(t, "bnic0", "bnic1")
	m := &Manager{Store: store, Network: netm, Deadline: 3 * time.Second}
	type result struct {
		err error
		ok  bool
	}
	res := make(chan result, 1)
	go func() {
		cfg, err := m.Boot(context.Background())
		res <- result{err, cfg != nil}
	}()
	var r result
	select {
	case r = <-res:
	case <-time.After(guard):
		t.Fatalf("Boot did not return within %s", guard)
	}
	if !errors.Is(r.err, ErrDefaultNetwork) || r.ok {
		t.Errorf("Boot: config %v, err %v; want ErrDefaultNetwork", r.ok, r.err)
	}
	hist := m.History()
	if len(hist) != 1 {
		t.Fatalf("history %+v, want one boot record", hist)
	}
	rec := hist[0]
	t.Logf("boot record: %s", rec.Message)
	if rec.Origin != "boot" || rec.Slot != chosen || rec.State != Degraded || rec.Reason != ReasonFailedToConfigure || rec.RolledBackTo != "default" {
		t.Errorf("boot record %+v", rec)
	}
	for _, want := range []string{
		"slot " + chosen + " generation 2 did not apply", "bsrv0/4", // timed out waiting for a lease
		"slot " + other + " generation 1 did not apply", "bmissing0", // failed at once
		"no carrier on bnic1/4 (not waited for)", // the fallback settled without it
	} {
		if !strings.Contains(rec.Message, want) {
			t.Errorf("boot record message %q lacks %q", rec.Message, want)
		}
	}
	if strings.Contains(rec.Message, "bnic0") {
		t.Errorf("bnic0 has carrier and a server, yet the record says it lacks a lease: %s", rec.Message)
	}
	if st := netm.Status(); len(st.Leases) != 1 || st.Leases[0].Interface != "bnic0" {
		t.Errorf("leases after the fallback: %+v, want bnic0's", st.Leases)
	}
	// Neither slot is marked failed: the next boot tries them again.
	if s, _, err := slot.Active(store); err != nil || s.Name != chosen || !s.Selector.Successful {
		t.Errorf("active slot after the fallback: %+v %v, want %s still committed", s, err, chosen)
	}
}

// TestBootFallsBackToOtherGoodSlot: a committed config that does not
// settle gives way to the other committed slot, and Boot returns that one.
func TestBootFallsBackToOtherGoodSlot(t *testing.T) {
	h := nstest.Handle(t)
	vethNIC(t, h, "bsrv1", true) // carrier, no DHCP server
	vethNIC(t, h, "bsta1", true)
	store, err := slot.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other := commit(t, store, cfgHead+"    - {name: bsta1, addresses: [10.78.0.5/24]}\n")
	commit(t, store, cfgHead+"    - {name: bsrv1, dhcp4: true}\n")
	m := &Manager{Store: store, Network: realNetwork(t), Deadline: 2 * time.Second}
	res := make(chan error, 1)
	go func() {
		cfg, err := m.Boot(context.Background())
		if err == nil && (cfg == nil || cfg.Network.Interfaces[0].Name != "bsta1") {
			err = fmt.Errorf("Boot returned %+v, want the other slot's config", cfg)
		}
		res <- err
	}()
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(guard):
		t.Fatalf("Boot did not return within %s", guard)
	}
	rec := m.History()[0]
	t.Logf("boot record: %s", rec.Message)
	if rec.State != Degraded || rec.RolledBackTo != other || !strings.Contains(rec.Message, "bsrv1/4") ||
		!strings.Contains(rec.Message, "restored slot "+other+" generation 1") {
		t.Errorf("boot record %+v, want Degraded, rolled back to %s with the reason", rec, other)
	}
	l, err := h.LinkByName("bsta1")
	if err != nil {
		t.Fatal(err)
	}
	if as, _ := h.AddrList(l, netlink.FAMILY_V4); len(as) != 1 || as[0].IPNet.String() != "10.78.0.5/24" {
		t.Errorf("bsta1 addresses %v, want the other slot's 10.78.0.5/24", as)
	}
}

// TestConfirmExpiryWithUnsettleableRollback: the committed config needs a
// DHCP server that has gone away, so the rollback of an unconfirmed change
// cannot settle. The expiry still finishes within its deadlines (slot, then
// DHCP on every NIC) and releases the lock; while it runs, Pending and
// History answer at once. Before, the expiry waited forever holding the lock.
func TestConfirmExpiryWithUnsettleableRollback(t *testing.T) {
	h := nstest.Handle(t)
	stopServer := dhcpNIC(t, h, "bnic5", 5)
	store, err := slot.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{Store: store, Network: realNetwork(t, "bnic5"), Deadline: 2 * time.Second}
	ctx := context.Background()
	if rec, err := m.Apply(ctx, []byte(cfgHead+"    - {name: bnic5, dhcp4: true}\n"), Options{}); err != nil || rec.State != Available {
		t.Fatalf("DHCP config: %v %+v", err, rec)
	}
	stopServer()

	rollingBack, release, expired := make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	m.Fault = func(step string) {
		switch step {
		case "rollback":
			rollingBack <- struct{}{}
			<-release
		case "expired":
			close(expired)
		}
	}
	rec, err := m.Apply(ctx, []byte(cfgHead+"    - {name: bnic5, addresses: [10.9.5.200/24]}\n"), Options{ConfirmWithin: 50 * time.Millisecond})
	if err != nil || rec.State != AwaitingConfirmation {
		t.Fatalf("tried change: %v %+v", err, rec)
	}
	select {
	case <-rollingBack:
	case <-time.After(guard):
		t.Fatal("the confirmation deadline never started a rollback")
	}
	// The rollback holds the transaction lock: status calls still answer.
	answered := make(chan string, 1)
	go func() {
		_, pending := m.Pending()
		hist := m.History()
		answered <- fmt.Sprintf("pending=%v last=%s/%s", pending, hist[len(hist)-1].State, hist[len(hist)-1].Reason)
	}()
	select {
	case got := <-answered:
		if got != "pending=false last=Degraded/NotConfirmed" {
			t.Errorf("during the rollback: %s", got)
		}
	case <-time.After(guard):
		t.Fatal("Pending/History blocked on the rollback")
	}
	close(release)
	select {
	case <-expired:
	case <-time.After(guard):
		t.Fatal("the rollback of the unconfirmed change never finished")
	}
	last := m.History()[len(m.History())-1]
	t.Logf("expiry record: %s", last.Message)
	if last.Generation != rec.Generation || last.Reason != ReasonNotConfirmed || last.RolledBackTo != "default" ||
		!strings.Contains(last.Message, "did not apply") || !strings.Contains(last.Message, "no DHCP lease on bnic5/4") {
		t.Errorf("after the expiry: %+v", last)
	}
	// The lock is free again: a new change goes through.
	m.Fault = nil
	if rec, err := m.Apply(ctx, []byte(cfgHead+"    - {name: bnic5, addresses: [10.9.5.201/24]}\n"), Options{}); err != nil || rec.State != Available {
		t.Errorf("change after the expiry: %v %+v", err, rec)
	}
}
