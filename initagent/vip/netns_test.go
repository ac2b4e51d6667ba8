package vip

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testInterval is the advert interval of tests about behaviour rather than
// speed: 300 ms keeps speakers built with -race from missing three adverts
// in a row on a loaded machine (tools/bench/vip measures the default).
const testInterval = 300 * time.Millisecond

// api4 is the IPv4 API router of node i of the first n nodes: unicast to
// the others, accepting adverts only from them.
func api4(l *lan, i, n int, prio uint8, interval time.Duration) RouterConfig {
	if interval == 0 {
		interval = testInterval
	}
	return RouterConfig{Name: "api", Interface: "eth0", Priority: prio, Preempt: true, AdvertInterval: interval,
		VIPs: []netip.Prefix{vip4}, Peers: l.peers(i, n)}
}

// api6 is the IPv6 router of node i: multicast to ff02::12.
func api6(prio uint8, interval time.Duration) RouterConfig {
	if interval == 0 {
		interval = testInterval
	}
	return RouterConfig{Name: "api6", Interface: "eth0", Priority: prio, Preempt: true, AdvertInterval: interval,
		VIPs: []netip.Prefix{vip6}}
}

// TestFailoverKill: the master's speaker is SIGKILLed (and its link taken
// down, the node is dead): exactly one backup, the one with the higher
// priority, takes both VIPs, and no two live nodes ever hold a VIP.
func TestFailoverKill(t *testing.T) {
	l := newLAN(t, 3)
	// 300 ms adverts: the two backups' down timers differ by
	// (200-10)/256 × 300 ms ≈ 220 ms, so the lower one does not also
	// take over on a loaded test machine.
	const interval = testInterval
	prios := []uint8{250, 200, 10}
	for i, nd := range l.nodes {
		nd.start(t, speakerSpec{Cluster: "test", Routers: []RouterConfig{api4(l, i, 3, prios[i], interval), api6(prios[i], interval)}})
	}
	for _, r := range []string{"api", "api6"} {
		l.nodes[0].waitState(t, r, StateMaster)
		for _, nd := range l.nodes[1:] {
			waitFor(t, fmt.Sprintf("node%d %s to follow node0", nd.i, r), func() bool {
				st := nd.router(t, r)
				return st.State == StateBackup && (st.Master == l.nodes[0].addr.String() || st.Master == l.nodes[0].ll.String())
			})
		}
	}
	s := l.sample(t, vip4, vip6)
	l.nodes[0].setLink(t, false)
	l.nodes[0].signal(t, syscall.SIGKILL)
	for _, r := range []string{"api", "api6"} {
		st := l.nodes[1].waitState(t, r, StateMaster)
		if tr, _ := lastTransition(st, StateMaster); tr.Cause != CauseMasterDown {
			t.Errorf("node1 %s became master because of %q (%s), want %q", r, tr.Cause, tr.Reason, CauseMasterDown)
		}
		waitFor(t, "node2 to follow node1 on "+r, func() bool {
			st := l.nodes[2].router(t, r)
			return st.Master == l.nodes[1].addr.String() || st.Master == l.nodes[1].ll.String()
		})
		if st := l.nodes[2].router(t, r); st.State != StateBackup {
			t.Errorf("node2 %s is %s, want backup", r, st.State)
		} else if _, ok := lastTransition(st, StateMaster); ok {
			t.Errorf("node2 %s was master during the failover: %+v", r, st.Transitions)
		}
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		if h := l.holders(t, v); len(h) != 1 || h[0] != 1 {
			t.Errorf("%s is held by live nodes %v, want [1]", v, h)
		}
	}
	s.done()
	if s.split > 0 {
		t.Errorf("%d of %d samples saw a VIP on two live nodes: %v", s.split, s.samples, s.splitDesc)
	}
}

// TestPartitionHeal: the master is cut off from the switch, the best
// backup takes over (two masters while partitioned are expected); after
// the heal the higher priority wins again and, once settled, no sample
// ever shows a VIP on two nodes.
func TestPartitionHeal(t *testing.T) {
	l := newLAN(t, 3)
	prios := []uint8{250, 200, 10}
	for i, nd := range l.nodes {
		nd.start(t, speakerSpec{Routers: []RouterConfig{
			withVRID(api4(l, i, 3, prios[i], 0), 42), withVRID(api6(prios[i], 0), 42)}})
	}
	l.nodes[0].waitState(t, "api", StateMaster)
	l.nodes[0].waitState(t, "api6", StateMaster)
	run(t, "ip", "-n", l.sw, "link", "set", "p0", "down")
	l.nodes[1].waitState(t, "api", StateMaster)
	l.nodes[1].waitState(t, "api6", StateMaster)
	run(t, "ip", "-n", l.sw, "link", "set", "p0", "up")
	for _, r := range []string{"api", "api6"} {
		st := l.nodes[1].waitState(t, r, StateBackup)
		if tr, _ := lastTransition(st, StateBackup); tr.Cause != CauseHigherPrio {
			t.Errorf("node1 %s stepped down because of %q (%s), want %q", r, tr.Cause, tr.Reason, CauseHigherPrio)
		}
	}
	waitFor(t, "node0 alone to hold the VIPs after the heal", func() bool {
		h4, h6 := l.holders(t, vip4), l.holders(t, vip6)
		return len(h4) == 1 && h4[0] == 0 && len(h6) == 1 && h6[0] == 0
	})
	// Settled: watch for 2 s (several master down intervals) that it stays so.
	s := l.sample(t, vip4, vip6)
	time.Sleep(2 * time.Second)
	s.done()
	if s.split > 0 || s.samples < 10 {
		t.Errorf("%d of %d samples after the heal saw a VIP on two nodes: %v", s.split, s.samples, s.splitDesc)
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		if h := l.holders(t, v); len(h) != 1 || h[0] != 0 {
			t.Errorf("%s is held by %v after the heal, want [0]", v, h)
		}
	}
}

func withVRID(r RouterConfig, vrid uint8) RouterConfig { r.VRID = vrid; return r }

// TestGracefulStop: with 1 s adverts (master down interval > 3 s), SIGTERM
// on the master makes it send priority 0 and remove its VIPs, and the
// backup takes over because of that advert, not its down timer.
func TestGracefulStop(t *testing.T) {
	l := newLAN(t, 2)
	for i, prio := range []uint8{150, 100} {
		l.nodes[i].start(t, speakerSpec{Cluster: "test", Routers: []RouterConfig{api4(l, i, 2, prio, time.Second), api6(prio, time.Second)}})
	}
	l.nodes[0].waitState(t, "api", StateMaster)
	l.nodes[0].waitState(t, "api6", StateMaster)
	l.nodes[1].waitState(t, "api", StateBackup)
	if err := l.nodes[0].signal(t, syscall.SIGTERM); err != nil {
		t.Fatalf("node0 speaker exited with %v after SIGTERM, want 0", err)
	}
	for _, v := range []netip.Prefix{vip4, vip6} {
		if l.nodes[0].holds(t, v) {
			t.Errorf("node0 still holds %s after a graceful stop", v)
		}
	}
	for _, r := range []string{"api", "api6"} {
		st := l.nodes[1].waitState(t, r, StateMaster)
		tr, _ := lastTransition(st, StateMaster)
		if tr.Cause != CausePriorityZero {
			t.Errorf("node1 %s took over because of %q (%s), want %q", r, tr.Cause, tr.Reason, CausePriorityZero)
		}
		if st.Counters.PriorityZeroReceived == 0 {
			t.Errorf("node1 %s counted no priority-0 advert: %+v", r, st.Counters)
		}
	}
}

// TestForgedAdvert: adverts from a node outside the peer list, with a
// higher priority and a valid checksum, are dropped and counted; adverts
// with TTL 64 are dropped and counted; the master stays.
func TestForgedAdvert(t *testing.T) {
	l := newLAN(t, 3) // node2 is the rogue, not in anyone's Peers
	for i, prio := range []uint8{150, 100} {
		l.nodes[i].start(t, speakerSpec{Routers: []RouterConfig{withVRID(api4(l, i, 2, prio, 0), 7)}})
	}
	l.nodes[0].waitState(t, "api", StateMaster)
	l.nodes[1].waitState(t, "api", StateBackup)
	before := []RouterStatus{l.nodes[0].router(t, "api"), l.nodes[1].router(t, "api")}

	rogue := l.nodes[2]
	const forged = 40
	inNS(t, rogue.ns, func() {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			t.Error(err)
			return
		}
		c, err := listenVRRP(ifi, false, false)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		a := advert{VRID: 7, Priority: 254, Centis: 10, Addrs: []netip.Addr{vip4.Addr()}}
		for range forged {
			for _, dst := range []netip.Addr{l.nodes[0].addr, l.nodes[1].addr} {
				if err := c.send(a.marshal(rogue.addr, dst), rogue.addr, dst); err != nil {
					t.Error(err)
				}
			}
			time.Sleep(50 * time.Millisecond) // 2 s of adverts: 2 master down intervals
		}
		c.v4.SetTTL(64)
		for _, dst := range []netip.Addr{l.nodes[0].addr, l.nodes[1].addr} {
			c.send(a.marshal(rogue.addr, dst), rogue.addr, dst)
		}
	})
	for i := range 2 {
		waitFor(t, fmt.Sprintf("node%d to count the forged adverts", i), func() bool {
			c := l.nodes[i].router(t, "api").Counters
			return c.DroppedNotPeer >= forged && c.DroppedTTL >= 1
		})
		st := l.nodes[i].router(t, "api")
		if len(st.Transitions) != len(before[i].Transitions) || st.State != before[i].State {
			t.Errorf("node%d changed state on forged adverts: %+v", i, st.Transitions)
		}
		if st.Master != l.nodes[0].addr.String() {
			t.Errorf("node%d sees master %q, want %s", i, st.Master, l.nodes[0].addr)
		}
	}
	if h := l.holders(t, vip4); len(h) != 1 || h[0] != 0 {
		t.Errorf("%s is held by %v, want [0]", vip4, h)
	}
}

// TestTracks: a failed track lowers the priority by its weight and the
// change is advertised at once, so a preempting backup takes over; a fault
// track gives the VIPs up with a priority-0 advert.
func TestTracks(t *testing.T) {
	l := newLAN(t, 2)
	l.nodes[0].start(t, speakerSpec{Routers: []RouterConfig{func() RouterConfig {
		r := withVRID(api4(l, 0, 2, 150, 0), 9)
		r.Tracks = []TrackConfig{{Name: "apiproxy", Weight: 60}}
		return r
	}()}})
	l.nodes[1].start(t, speakerSpec{Routers: []RouterConfig{func() RouterConfig {
		r := withVRID(api4(l, 1, 2, 100, 0), 9)
		r.Tracks = []TrackConfig{{Name: "apiproxy", Fault: true}}
		return r
	}()}})
	n0, n1 := l.nodes[0], l.nodes[1]
	// No reports yet: node0 runs at 150-60, node1 is in fault.
	st := n0.waitState(t, "api", StateMaster)
	if st.EffectivePriority != 90 {
		t.Errorf("node0 effective priority %d, want 90", st.EffectivePriority)
	}
	n1.waitState(t, "api", StateFault)

	step := func(nd *node, healthy bool, master *node, cause Cause) {
		t.Helper()
		nd.setTrack(t, "apiproxy", healthy)
		st := master.waitState(t, "api", StateMaster)
		if tr, _ := lastTransition(st, StateMaster); tr.Cause != cause {
			t.Errorf("node%d became master because of %q (%s), want %q", master.i, tr.Cause, tr.Reason, cause)
		}
		other := n0
		if master == n0 {
			other = n1
		}
		waitFor(t, fmt.Sprintf("node%d alone to hold the VIP", master.i), func() bool {
			h := l.holders(t, vip4)
			return len(h) == 1 && h[0] == master.i && other.router(t, "api").State != StateMaster
		})
	}
	step(n1, true, n1, CausePreempt)       // node1 recovers: 100 > 90
	step(n0, true, n0, CausePreempt)       // node0 healthy: 150 > 100
	step(n0, false, n1, CausePreempt)      // node0 drops to 90, advertised at once
	step(n1, false, n0, CausePriorityZero) // node1 faults: priority 0
	if st := n1.router(t, "api"); st.State != StateFault || st.EffectivePriority != 0 {
		t.Errorf("node1 is %s with priority %d, want fault with 0", st.State, st.EffectivePriority)
	}
}

// TestYieldingMaster: without Preempt, a master whose track took it down
// to YieldPriority is taken over by a node with a higher priority; when
// every node's track has failed, the VIP stays where it is instead of
// leaving the subnet with nobody answering for it.
func TestYieldingMaster(t *testing.T) {
	l := newLAN(t, 2)
	start := func(nd *node, prio uint8) {
		nd.start(t, speakerSpec{Routers: []RouterConfig{func() RouterConfig {
			r := withVRID(api4(l, nd.i, 2, prio, 0), 11)
			r.Preempt = false
			r.Tracks = []TrackConfig{{Name: "apiproxy", Weight: 254 - YieldPriority}}
			return r
		}()}})
	}
	n0, n1 := l.nodes[0], l.nodes[1]
	alone := func(nd *node) func() bool {
		return func() bool {
			h := l.holders(t, vip4)
			return len(h) == 1 && h[0] == nd.i
		}
	}
	stays := func(nd *node, why string) {
		t.Helper()
		for end := time.Now().Add(5 * testInterval); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if !alone(nd)() {
				t.Fatalf("%s: the VIP must stay on node%d; held by %v", why, nd.i, l.holders(t, vip4))
			}
		}
	}
	// Tracks start failed: node0 (150) comes up alone and holds the VIP
	// at priority 1; node1, yielding too, leaves it there.
	start(n0, 150)
	if st := n0.waitState(t, "api", StateMaster); st.EffectivePriority != YieldPriority {
		t.Errorf("node0 holds the VIP at priority %d, want %d", st.EffectivePriority, YieldPriority)
	}
	start(n1, 100)
	n1.waitState(t, "api", StateBackup)
	stays(n0, "both nodes yield")

	// node1's track recovers: it takes over from the yielding master
	// although preempt is off and node0's configured priority is higher.
	n1.setTrack(t, "apiproxy", true)
	st := n1.waitState(t, "api", StateMaster)
	if tr, _ := lastTransition(st, StateMaster); tr.Cause != CausePreempt || !strings.Contains(tr.Reason, "yields") {
		t.Errorf("node1 became master because of %q (%s), want a takeover from a yielding master", tr.Cause, tr.Reason)
	}
	waitFor(t, "node1 alone to hold the VIP", alone(n1))

	// Its track fails again: both yield, and the VIP stays with it.
	n1.setTrack(t, "apiproxy", false)
	waitFor(t, "node0 to see node1 yield", func() bool { return n0.router(t, "api").MasterPriority == YieldPriority })
	stays(n1, "every track failed")

	// Both recover: without preempt node0 (150) leaves the healthy
	// master node1 (100) alone.
	n1.setTrack(t, "apiproxy", true)
	waitFor(t, "node0 to see node1 at priority 100 (101 once it has held the VIP for stickyAfter)", func() bool {
		p := n0.router(t, "api").MasterPriority
		return p == 100 || p == 101
	})
	n0.setTrack(t, "apiproxy", true)
	waitFor(t, "node0 at priority 150", func() bool { return n0.router(t, "api").EffectivePriority == 150 })
	stays(n1, "a healthy master without preempt")
}

// TestStickyMaster: with equal priorities, a backup with the higher
// address that took over only because the master's process stalled
// (SIGSTOP past the master down interval) gives the VIP back as soon as
// the master advertises again, where RFC 5798's address tie-break alone
// would move the VIP to it. After a real failover (the master killed) the
// new master keeps the VIP when the old one comes back.
func TestStickyMaster(t *testing.T) {
	l := newLAN(t, 2)
	n0, n1 := l.nodes[0], l.nodes[1]
	spec := func(nd *node) speakerSpec {
		return speakerSpec{Routers: []RouterConfig{withVRID(api4(l, nd.i, 2, 100, 0), 12)}}
	}
	alone := func(nd *node) func() bool {
		return func() bool {
			h := l.holders(t, vip4)
			return len(h) == 1 && h[0] == nd.i
		}
	}
	n0.start(t, spec(n0))
	n0.waitState(t, "api", StateMaster)
	n1.start(t, spec(n1))
	n1.waitState(t, "api", StateBackup)
	waitFor(t, "node0 to advertise 101 after holding the VIP for stickyAfter", func() bool { return n1.router(t, "api").MasterPriority == 101 })

	if err := n0.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	n1.waitState(t, "api", StateMaster)
	if err := n0.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	st := n1.waitState(t, "api", StateBackup)
	if tr, _ := lastTransition(st, StateBackup); tr.Cause != CauseHigherPrio {
		t.Errorf("node1 stepped down because of %q (%s), want node0's higher advertised priority", tr.Cause, tr.Reason)
	}
	waitFor(t, "node0 alone to hold the VIP after its stall", alone(n0))
	if st := n0.router(t, "api"); st.State != StateMaster {
		t.Errorf("node0 is %s after its stall, want master", st.State)
	}

	// A real failover: node1 takes over and, once settled, keeps the VIP
	// when node0 comes back with the same priority.
	n0.setLink(t, false)
	n0.signal(t, syscall.SIGKILL)
	n1.waitState(t, "api", StateMaster)
	waitFor(t, "node1 alone to hold the VIP", alone(n1))
	time.Sleep(stickyAfter)
	n0.setLink(t, true)
	n0.start(t, spec(n0))
	n0.waitState(t, "api", StateBackup)
	waitFor(t, "node0 to follow node1 at 101", func() bool { return n0.router(t, "api").MasterPriority == 101 })
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if !alone(n1)() {
			t.Fatalf("the VIP must stay on node1 after node0 came back; held by %v", l.holders(t, vip4))
		}
	}
}

// TestStalledBackup: a backup whose own process stalls (SIGSTOP) past the
// master down interval, while the master's adverts queue on its socket,
// does not take over when it runs again: the adverts waiting to be read
// prove the master alive. Repeated, since which of the expired timer and
// the queued adverts the resumed process sees first is up to scheduling.
func TestStalledBackup(t *testing.T) {
	l := newLAN(t, 2)
	n0, n1 := l.nodes[0], l.nodes[1]
	n0.start(t, speakerSpec{Routers: []RouterConfig{withVRID(api4(l, n0.i, 2, 150, 0), 13)}})
	n0.waitState(t, "api", StateMaster)
	n1.start(t, speakerSpec{Routers: []RouterConfig{withVRID(api4(l, n1.i, 2, 100, 0), 13)}})
	waitFor(t, "node1 to follow node0", func() bool { return n1.router(t, "api").Master == n0.addr.String() })
	for range 5 {
		if err := n1.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * testInterval)
		if err := n1.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * testInterval)
	}
	st := n1.router(t, "api")
	if tr, ok := lastTransition(st, StateMaster); ok {
		t.Errorf("the stalled backup took over (%s: %s); transitions %+v", tr.Cause, tr.Reason, st.Transitions)
	}
	if c := st.Counters; c.TakeoversAvoided == 0 {
		t.Errorf("no takeover avoided counted: %+v", c)
	}
}

// TestIPv6UnicastPeers: IPv6 peers given by global address; adverts go
// out from the global address the peers list, and a graceful stop hands
// over with priority 0.
func TestIPv6UnicastPeers(t *testing.T) {
	l := newLAN(t, 2)
	addr := func(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", i+1)) }
	for i := range 2 {
		run(t, "ip", "-n", l.nodes[i].ns, "addr", "add", addr(i).String()+"/64", "dev", "eth0", "nodad")
	}
	for i, prio := range []uint8{150, 100} {
		r := api6(prio, 0)
		r.Peers = []netip.Addr{addr(1 - i)}
		l.nodes[i].start(t, speakerSpec{Cluster: "test", Routers: []RouterConfig{r}})
	}
	st := l.nodes[0].waitState(t, "api6", StateMaster)
	if st.Source != addr(0).String() {
		t.Errorf("node0 sends from %s, want its global address %s", st.Source, addr(0))
	}
	waitFor(t, "node1 to follow node0", func() bool {
		st := l.nodes[1].router(t, "api6")
		return st.State == StateBackup && st.Master == addr(0).String()
	})
	if err := l.nodes[0].signal(t, syscall.SIGTERM); err != nil {
		t.Fatalf("node0 exited with %v", err)
	}
	st = l.nodes[1].waitState(t, "api6", StateMaster)
	if tr, _ := lastTransition(st, StateMaster); tr.Cause != CausePriorityZero {
		t.Errorf("node1 took over because of %q (%s), want %q", tr.Cause, tr.Reason, CausePriorityZero)
	}
	if h := l.holders(t, vip6); len(h) != 1 || h[0] != 1 {
		t.Errorf("%s held by %v, want [1]", vip6, h)
	}
}
