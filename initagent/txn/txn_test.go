package txn

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// Every test here runs in its own network namespace (see nstest.Main).
func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "crash":
		os.Exit(crashChild())
	case "verify":
		os.Exit(verifyChild())
	}
	os.Exit(nstest.Main(m))
}

// kernelNetwork applies configs straight through netconf.
type kernelNetwork struct{ a *netconf.Applier }

func (k kernelNetwork) Apply(ctx context.Context, cfg *config.MachineConfig, _ string) error {
	if cfg == nil {
		return nil
	}
	spec, err := netconf.FromConfig(cfg.Network)
	if err != nil {
		return err
	}
	_, err = k.a.Apply(ctx, spec)
	return err
}

func nodeConfig(addr, gw, dnsServer string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - name: eth0
      addresses: [%s]
      routes:
        - {to: default, via: %s}
  dns:
    servers: [%s]
`, addr, gw, dnsServer))
}

// setupLab makes eth0 facing a "router" in a network namespace of its own
// (a kernel does not answer ARP from its own addresses), which owns
// 10.0.0.1 (the gateway) and answers DNS on 10.0.0.1:53.
func setupLab(h *netlink.Handle) (stop func(), err error) {
	b := make([]byte, 4)
	rand.Read(b)
	ns := "btxn-" + hex.EncodeToString(b)
	if name := os.Getenv(routerNetnsEnv); name != "" {
		ns = name // a child that is killed: the parent deletes it
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "eth0"
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "router"}); err != nil {
		return nil, fmt.Errorf("veth: %w", err)
	}
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "set", "router", "netns", ns},
		{"-n", ns, "addr", "add", "10.0.0.1/24", "dev", "router"},
		{"-n", ns, "link", "set", "router", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			exec.Command("ip", "netns", "del", ns).Run()
			return nil, fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	pcc := make(chan net.PacketConn, 1)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace switch
		handle, err := netns.GetFromName(ns)
		if err == nil {
			err = netns.Set(handle)
			handle.Close()
		}
		if err != nil {
			errc <- err
			return
		}
		pc, err := net.ListenPacket("udp", "10.0.0.1:53")
		if err != nil {
			errc <- err
			return
		}
		pcc <- pc
	}()
	var pc net.PacketConn
	select {
	case err := <-errc:
		exec.Command("ip", "netns", "del", ns).Run()
		return nil, fmt.Errorf("dns listen: %w", err)
	case pc = <-pcc:
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	return func() {
		srv.Shutdown()
		exec.Command("ip", "netns", "del", ns).Run()
	}, nil
}

func lab(t *testing.T) *netlink.Handle {
	h := nstest.Handle(t)
	stop, err := setupLab(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop()
		if l, err := h.LinkByName("eth0"); err == nil {
			h.LinkDel(l)
		}
	})
	return h
}

func hasAddr(h *netlink.Handle, addr string) bool {
	l, err := h.LinkByName("eth0")
	if err != nil {
		return false
	}
	as, _ := h.AddrList(l, netlink.FAMILY_V4)
	for _, a := range as {
		if a.IPNet.String() == addr {
			return true
		}
	}
	return false
}

func defaultGateway(h *netlink.Handle) string {
	rs, _ := h.RouteGet(net.ParseIP("8.8.8.8"))
	if len(rs) == 0 {
		return ""
	}
	return rs[0].Gw.String()
}

// TestFieldDemo is the demo: a good change commits, a DNS server
// that cannot exist and an unreachable gateway are reverted by themselves,
// and a gateway outside the subnet is refused before anything is touched.
func TestFieldDemo(t *testing.T) {
	h := lab(t)
	dir := t.TempDir()
	store, err := slot.NewDir(filepath.Join(dir, "slots"))
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{Store: store, Network: kernelNetwork{&netconf.Applier{}}, HistoryFile: filepath.Join(dir, "history.json")}
	ctx := context.Background()

	rec, err := m.Apply(ctx, nodeConfig("10.0.0.5/24", "10.0.0.1", "10.0.0.1"), Options{})
	if err != nil || rec.State != Available {
		t.Fatalf("first config: %v %+v", err, rec)
	}
	rec, err = m.Apply(ctx, nodeConfig("10.0.0.6/24", "10.0.0.1", "10.0.0.1"), Options{})
	if err != nil || rec.State != Available {
		t.Fatalf("address change: %v %+v", err, rec)
	}
	if !hasAddr(h, "10.0.0.6/24") || hasAddr(h, "10.0.0.5/24") {
		t.Error("address change not applied")
	}

	rec, err = m.Apply(ctx, nodeConfig("10.0.0.6/24", "10.0.0.1", "10.0.0.99"), Options{})
	if err == nil || rec.State != Degraded || rec.Reason != ReasonFailedToConfigure || rec.FailedProbe != "dns 10.0.0.99" {
		t.Errorf("bad DNS: %v %+v", err, rec)
	}
	if took := rec.Finished.Sub(rec.Started); took > 10*time.Second {
		t.Errorf("bad DNS took %s to revert, more than the 10s deadline", took)
	}
	s, _, err := slot.Active(m.Store)
	if err != nil || s.Header.Generation != 2 {
		t.Errorf("active slot after rollback: %+v %v, want generation 2", s, err)
	}

	rec, err = m.Apply(ctx, nodeConfig("10.0.0.6/24", "10.0.0.2", "10.0.0.1"), Options{})
	if err == nil || rec.FailedProbe != "gateway 10.0.0.2 on eth0" {
		t.Errorf("unreachable gateway: %v %+v", err, rec)
	}
	if gw := defaultGateway(h); gw != "10.0.0.1" {
		t.Errorf("default gateway after rollback = %q, want 10.0.0.1 restored", gw)
	}

	before, _ := m.Store.Slots()
	rec, err = m.Apply(ctx, nodeConfig("10.0.0.6/24", "192.168.77.1", "10.0.0.1"), Options{})
	if err == nil || rec.Reason != ReasonInvalid || !strings.Contains(err.Error(), "gateway 192.168.77.1 is not inside any subnet") {
		t.Errorf("off-subnet gateway: %v %+v", err, rec)
	}
	after, _ := m.Store.Slots()
	if before != after {
		t.Errorf("a refused config touched the slots:\n%+v\n%+v", before, after)
	}

	// The history survives a restart of the agent.
	var states []string
	for _, r := range (&Manager{HistoryFile: m.HistoryFile}).History() {
		states = append(states, r.State+"/"+r.Reason)
	}
	want := "Available/ Available/ Degraded/FailedToConfigure Degraded/FailedToConfigure Degraded/InvalidConfig"
	if strings.Join(states, " ") != want {
		t.Errorf("history %v, want %s", states, want)
	}
}

func TestDryRunTouchesNothing(t *testing.T) {
	lab(t)
	store, err := slot.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{Store: store, Network: kernelNetwork{&netconf.Applier{}}}
	rec, err := m.Apply(context.Background(), nodeConfig("10.0.0.5/24", "10.0.0.1", "10.0.0.1"), Options{DryRun: true})
	if err != nil || rec.State != "DryRun" {
		t.Fatalf("dry run: %v %+v", err, rec)
	}
	if s, _ := store.Slots(); s[0].Header.Generation != 0 || s[1].Header.Generation != 0 {
		t.Errorf("dry run wrote a slot: %+v", s)
	}
	if len(m.History()) != 0 {
		t.Error("dry run recorded a transaction")
	}
}

const (
	roleEnv = "BALLAST_TXN_ROLE"
	stepEnv = "BALLAST_TXN_CRASH_AT"
	diskEnv = "BALLAST_TXN_DISK"
	badEnv  = "BALLAST_TXN_BAD"
	// routerNetnsEnv names the router's netns of a child the test kills.
	routerNetnsEnv = "BALLAST_TXN_ROUTER_NETNS"
)

// childNode sets up a child process's lab and a Manager on the disk image
// named by the environment, as a node would have at start.
func childNode() (*Manager, *netlink.Handle, func(), error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("netlink: %w", err)
	}
	stop, err := setupLab(h)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("lab: %w", err)
	}
	store, err := slot.NewGPT(os.Getenv(diskEnv))
	if err != nil {
		stop()
		return nil, nil, nil, fmt.Errorf("store: %w", err)
	}
	return &Manager{Store: store, Network: kernelNetwork{&netconf.Applier{}}}, h, stop, nil
}

// crashChild (in its own netns) commits a first config, then starts a
// second and stops dead at the step; the parent SIGKILLs it there.
func crashChild() int {
	m, _, stop, err := childNode()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer stop()
	if _, err := m.Apply(context.Background(), nodeConfig("10.0.0.5/24", "10.0.0.1", "10.0.0.1"), Options{}); err != nil {
		fmt.Println("first apply:", err)
		return 1
	}
	step := os.Getenv(stepEnv)
	m.Fault = func(at string) {
		if at == step {
			fmt.Println("AT", at)
			select {} // wait to be killed
		}
	}
	gw := "10.0.0.1"
	if os.Getenv(badEnv) != "" {
		gw = "10.0.0.2" // nobody answers there
	}
	m.Apply(context.Background(), nodeConfig("10.0.0.9/24", gw, "10.0.0.1"), Options{})
	fmt.Println("FINISHED without reaching", step)
	return 1
}

// verifyChild (in a fresh netns, like a rebooted node) boots from the disk
// image and prints the address it applied.
func verifyChild() int {
	m, h, stop, err := childNode()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer stop()
	cfg, err := m.Boot(context.Background())
	if err != nil {
		fmt.Println("boot:", err)
		return 1
	}
	fmt.Printf("BOOTED %s kernel-has-it=%v\n", cfg.Network.Interfaces[0].Addresses[0].Address, hasAddr(h, cfg.Network.Interfaces[0].Addresses[0].Address))
	return 0
}

// TestCrashAtEveryStepBootsLastGood SIGKILLs a process in the middle of a
// transaction at each step, then boots from the same disk image like a
// restarted node. Once the transaction has spent its one try (right after
// the flip) the node boots the last good config. A crash before that
// leaves a trying slot with its try: the next start tries it once, commits
// it if its probes pass and otherwise rolls back to the last good one.
func TestCrashAtEveryStepBootsLastGood(t *testing.T) {
	nstest.Handle(t) // skips unless isolated (root)
	for _, tc := range []struct {
		step string
		bad  bool
		want string
	}{
		{"flipped", false, "10.0.0.9/24"},
		{"flipped", true, "10.0.0.5/24"},
		{"applied", false, "10.0.0.5/24"},
		{"probed", false, "10.0.0.5/24"},
		{"before-commit", false, "10.0.0.5/24"},
	} {
		step := tc.step
		name := step
		if tc.bad {
			name += "-bad-config"
		}
		t.Run(name, func(t *testing.T) {
			disk := filepath.Join(t.TempDir(), "disk.img")
			if err := slot.CreateImage(disk, 16<<20); err != nil {
				t.Fatal(err)
			}
			router := fmt.Sprintf("btxn-crash-%d-%s", os.Getpid(), name)
			cmd := crashCmd(step, disk, tc.bad)
			cmd.Env = append(cmd.Env, routerNetnsEnv+"="+router)
			t.Cleanup(func() { exec.Command("ip", "netns", "del", router).Run() })
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			buf := make([]byte, 4096)
			for !strings.Contains(got.String(), "AT "+step) {
				n, err := out.Read(buf)
				got.Write(buf[:n])
				if err != nil {
					break
				}
			}
			cmd.Process.Kill() // SIGKILL: no deferred cleanup, no commit, like a power cut for the agent
			cmd.Wait()
			if !strings.Contains(got.String(), "AT "+step) {
				t.Fatalf("child never reached %s:\n%s", step, got.String())
			}
			var vout bytes.Buffer
			code := nstest.Unshare([]string{"-test.run=^$"}, []string{roleEnv + "=verify", diskEnv + "=" + disk}, &vout, &vout)
			if code != 0 || !strings.Contains(vout.String(), "BOOTED "+tc.want+" kernel-has-it=true") {
				t.Errorf("after a crash at %s: exit %d, want %s applied:\n%s", name, code, tc.want, vout.String())
			}
		})
	}
}

// TestPeerAPIServersNeedNotAnswerYet: the hosts of cluster.apiServers are
// regression-only probes. A node whose peers are still off commits its
// first config (a cluster's nodes boot in any order), and a peer host that
// refuses the port (its apiserver not started) counts as answering.
func TestPeerAPIServersNeedNotAnswerYet(t *testing.T) {
	lab(t)
	dir := t.TempDir()
	store, err := slot.NewDir(filepath.Join(dir, "slots"))
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{Store: store, Network: kernelNetwork{&netconf.Applier{}}, HistoryFile: filepath.Join(dir, "history.json"),
		ProbeTimeout: time.Second}
	withPeer := func(peer string) []byte {
		return append(nodeConfig("10.0.0.5/24", "10.0.0.1", "10.0.0.1"), fmt.Sprintf("cluster:\n  apiServers: [%q]\n", peer)...)
	}
	rec, err := m.Apply(context.Background(), withPeer("10.0.0.77:6443"), Options{}) // no such host yet
	if err != nil || rec.State != Available {
		t.Fatalf("first config with a peer that is off: %v %+v", err, rec)
	}
	var seen bool
	for _, p := range rec.Probes {
		if p.Name == "tcp host 10.0.0.77:6443" {
			seen = true
			if p.After == "ok" || !strings.Contains(p.Before, "not probed before") {
				t.Errorf("peer probe outcome %+v", p)
			}
		}
	}
	if !seen {
		t.Errorf("no probe of the peer in %+v", rec.Probes)
	}
	rec, err = m.Apply(context.Background(), withPeer("10.0.0.1:6443"), Options{}) // the host refuses: answered
	if err != nil || rec.State != Available {
		t.Fatalf("peer host that refuses the port: %v %+v", err, rec)
	}
	for _, p := range rec.Probes {
		if p.Name == "tcp host 10.0.0.1:6443" && p.After != "ok" {
			t.Errorf("a refusing peer host did not count as answering: %+v", p)
		}
	}
}
