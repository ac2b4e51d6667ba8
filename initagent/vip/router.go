package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// router is one virtual router: the RFC 5798 §6.4 state machine, run by
// one goroutine (run), fed by a receiving goroutine.
type router struct {
	cfg    RouterConfig
	log    *slog.Logger
	tracks []routerTrack
	v6     bool
	vips   []netip.Addr
	peers  map[netip.Addr]bool
	// pokec wakes the loop when a track changed.
	pokec chan struct{}

	mu sync.Mutex
	st RouterStatus // guarded by mu

	// Owned by the run goroutine.
	state          State
	prio           uint8 // effective priority
	fault          bool
	src            netip.Addr
	masterAdverInt time.Duration
	// downCause and downReason explain the takeover if the master down
	// timer expires now.
	downCause  Cause
	downReason string
	started    time.Time
	conn       *vrrpConn
	ann        *announcer
	nl         *netlink.Handle
	link       netlink.Link
	timer      *time.Timer // advert timer (master) or master down timer (backup)
	garp       *time.Timer // repeats the announcements while master
	reasserted time.Time   // when a lower-priority master was last answered
	holding    bool        // the VIPs are claimed (master, past a preemption's claim delay)
	heldSince  time.Time   // when holding began
	// masterHeard counts the master's adverts a backup accepted; deferrals
	// the quarter intervals its takeover waited for queued packets.
	masterHeard uint64
	deferrals   int
	claim       *time.Timer // adds the VIPs after a preemption
}

// rxAdvert is a valid advert of this router's VRID.
type rxAdvert struct {
	*advert
	src netip.Addr
}

func newRouter(cfg RouterConfig, log *slog.Logger) *router {
	r := &router{
		cfg:   cfg,
		log:   log,
		v6:    cfg.VIPs[0].Addr().Is6(),
		peers: map[netip.Addr]bool{},
		pokec: make(chan struct{}, 1),
		state: StateInit,
	}
	for _, p := range cfg.VIPs {
		r.vips = append(r.vips, p.Addr())
	}
	for _, p := range cfg.Peers {
		r.peers[p] = true
	}
	fam := 4
	if r.v6 {
		fam = 6
	}
	r.st = RouterStatus{
		Name: cfg.Name, Interface: cfg.Interface, VRID: cfg.VRID, Family: fam,
		State: StateInit, Since: time.Now(), Priority: cfg.Priority,
		AdvertIntervalMs: cfg.AdvertInterval.Milliseconds(),
	}
	for _, a := range r.vips {
		r.st.VIPs = append(r.st.VIPs, a.String())
	}
	return r
}

// poke wakes the router loop to re-evaluate its tracks.
func (r *router) poke() {
	select {
	case r.pokec <- struct{}{}:
	default:
	}
}

func (r *router) status() RouterStatus {
	r.mu.Lock()
	st := r.st
	st.VIPs = slices.Clone(st.VIPs)
	st.Transitions = slices.Clone(st.Transitions)
	r.mu.Unlock()
	for _, rt := range r.tracks {
		st.Tracks = append(st.Tracks, rt.t.status(rt.weight, rt.fault))
	}
	return st
}

func (r *router) count(f func(*Counters)) {
	r.mu.Lock()
	f(&r.st.Counters)
	r.mu.Unlock()
}

// run runs the router until ctx is cancelled.
func (r *router) run(ctx context.Context) error {
	r.started = time.Now()
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer nl.Close()
	r.nl = nl
	ifi, err := r.waitInterface(ctx)
	if err != nil || ctx.Err() != nil {
		return err
	}
	// A speaker that was killed leaves its VIPs behind; start clean.
	r.removeVIPs()
	r.conn, err = listenVRRP(ifi, r.v6, len(r.peers) == 0)
	if err != nil {
		return err
	}
	r.ann, err = newAnnouncer(ifi, r.v6)
	if err != nil {
		r.conn.Close()
		return err
	}
	defer r.ann.Close()

	rxc := make(chan rxAdvert, 16)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { r.receive(rxc, done) })
	defer func() {
		close(done)
		r.conn.Close()
		wg.Wait()
	}()

	r.timer = time.NewTimer(time.Hour)
	r.timer.Stop()
	defer r.timer.Stop()
	r.garp = time.NewTimer(time.Hour)
	r.garp.Stop()
	defer r.garp.Stop()
	r.claim = time.NewTimer(time.Hour)
	r.claim.Stop()
	defer r.claim.Stop()

	r.masterAdverInt = r.cfg.AdvertInterval
	r.prio, r.fault, _ = r.evalTracks()
	r.setPriority()
	if r.fault {
		r.transition(StateFault, CauseFault, "a fault track is failed at startup")
	} else {
		r.enterBackup(CauseStartup, "started")
	}
	r.log.Info("vrrp router started", "iface", ifi.Name, "source", r.src, "priority", r.prio, "vips", r.vips)

	for {
		select {
		case <-ctx.Done():
			if r.state == StateMaster {
				// Priority 0 makes the backups take over after their skew
				// time instead of the whole master down interval (§6.4.3).
				r.sendAdvert(0)
				r.leaveMaster()
			}
			r.transition(StateInit, CauseShutdown, "stopped")
			return nil
		case a := <-rxc:
			r.onAdvert(a)
		case <-r.timer.C:
			switch r.state {
			case StateMaster:
				prio := r.advertPriority()
				r.sendAdvert(prio)
				r.setMaster(r.src, prio)
				r.timer.Reset(r.cfg.AdvertInterval)
			case StateBackup:
				if !r.stalled(rxc) {
					r.becomeMaster(r.downCause, r.downReason)
				}
			}
		case <-r.claim.C:
			if r.state == StateMaster {
				r.claimVIPs()
			}
		case <-r.garp.C:
			if r.state == StateMaster {
				r.announce()
				if r.cfg.GARPInterval > 0 {
					r.garp.Reset(r.cfg.GARPInterval)
				}
			}
		case <-r.pokec:
			r.onTracks()
		}
	}
}

// waitInterface waits for the interface and the advert source address.
func (r *router) waitInterface(ctx context.Context) (*net.Interface, error) {
	logged := false
	for {
		ifi, src, err := r.findInterface()
		if err == nil {
			r.src = src
			r.mu.Lock()
			r.st.Source = src.String()
			r.mu.Unlock()
			return ifi, nil
		}
		if !logged {
			r.log.Warn("waiting for interface", "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(time.Second):
		}
	}
}

func (r *router) findInterface() (*net.Interface, netip.Addr, error) {
	link, err := r.nl.LinkByName(r.cfg.Interface)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("interface %s: %w", r.cfg.Interface, err)
	}
	r.link = link
	la := link.Attrs()
	ifi := &net.Interface{Index: la.Index, MTU: la.MTU, Name: la.Name, HardwareAddr: la.HardwareAddr, Flags: la.Flags}
	if r.cfg.Source.IsValid() {
		return ifi, r.cfg.Source, nil
	}
	fam := netlink.FAMILY_V4
	if r.v6 {
		fam = netlink.FAMILY_V6
	}
	addrs, err := r.nl.AddrList(link, fam)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("addresses of %s: %w", r.cfg.Interface, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if slices.Contains(r.vips, ip) || a.Flags&(unix.IFA_F_SECONDARY|unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			continue
		}
		if ip.IsLinkLocalUnicast() == r.wantLinkLocal() {
			return ifi, ip, nil
		}
	}
	what := "an IPv4 address"
	switch {
	case r.wantLinkLocal():
		what = "a usable IPv6 link-local address"
	case r.v6:
		what = "a global IPv6 address (the peers are global)"
	}
	return nil, netip.Addr{}, fmt.Errorf("interface %s has no %s to send adverts from (set Source)", r.cfg.Interface, what)
}

// wantLinkLocal reports whether adverts go out from a link-local address:
// IPv6 with multicast (RFC 5798 §5.1.2.1) or link-local peers. With global
// IPv6 peers the source is a global address, the one the peers list.
func (r *router) wantLinkLocal() bool {
	if !r.v6 {
		return false
	}
	for _, p := range r.cfg.Peers {
		if !p.IsLinkLocalUnicast() {
			return false
		}
	}
	return true
}

// receive reads adverts, drops and counts the invalid ones (RFC 5798
// §7.1) and passes this router's valid ones to rxc until done is closed.
func (r *router) receive(rxc chan<- rxAdvert, done <-chan struct{}) {
	buf := make([]byte, 8192)
	for {
		p, err := r.conn.recv(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			r.log.Warn("read VRRP socket", "err", err)
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if p.ttl != requiredTTL {
			r.count(func(c *Counters) { c.DroppedTTL++ })
			continue
		}
		a, err := decodeAdvert(p.payload, p.src, p.dst)
		if err != nil {
			r.count(func(c *Counters) {
				switch {
				case errors.Is(err, errChecksum):
					c.DroppedChecksum++
				case errors.Is(err, errVersion):
					c.DroppedVersion++
				default:
					c.DroppedMalformed++
				}
			})
			continue
		}
		if a.VRID != r.cfg.VRID {
			r.count(func(c *Counters) { c.OtherVRID++ })
			continue
		}
		if len(r.peers) > 0 && !r.peers[p.src] {
			r.count(func(c *Counters) { c.DroppedNotPeer++ })
			continue
		}
		if p.src == r.src {
			continue
		}
		r.count(func(c *Counters) {
			c.AdvertsReceived++
			if a.Priority == 0 {
				c.PriorityZeroReceived++
			}
			if time.Duration(a.Centis)*10*time.Millisecond != r.cfg.AdvertInterval {
				c.IntervalMismatch++
			}
		})
		select {
		case rxc <- rxAdvert{a, p.src}:
		case <-done:
			return
		}
	}
}

// onAdvert handles a valid advert (§6.4.2, §6.4.3).
func (r *router) onAdvert(a rxAdvert) {
	interval := time.Duration(a.Centis) * 10 * time.Millisecond
	switch r.state {
	case StateFault, StateInit:
		r.setMaster(a.src, a.Priority)
	case StateBackup:
		if a.Priority == 0 {
			// The master left: take over after the skew time only.
			r.setMaster(netip.Addr{}, 0)
			r.timer.Reset(r.skew(r.masterAdverInt))
			r.downCause, r.downReason = CausePriorityZero, fmt.Sprintf("master %s sent priority 0 (leaving)", a.src)
			return
		}
		yielding := a.Priority == YieldPriority
		if a.Priority >= r.prio || !(r.preemptNow() || yielding) {
			r.masterHeard++
			r.deferrals = 0
			r.masterAdverInt = interval
			r.setMaster(a.src, a.Priority)
			r.timer.Reset(r.downInterval())
			r.downCause, r.downReason = CauseMasterDown, fmt.Sprintf("no advert from master %s for the master down interval", a.src)
			return
		}
		// A lower-priority master: let the down timer run out to preempt it.
		r.setMaster(a.src, a.Priority)
		r.downCause, r.downReason = CausePreempt, fmt.Sprintf("preempting master %s (priority %d < %d)", a.src, a.Priority, r.prio)
		if yielding && !r.preemptNow() {
			r.downReason = fmt.Sprintf("taking over from master %s, which yields (priority %d: its tracks failed)", a.src, a.Priority)
		}
	case StateMaster:
		switch {
		case a.Priority == 0:
			// Another master left: assert ourselves at once (§6.4.3).
			r.sendAdvert(r.advertPriority())
			r.timer.Reset(r.cfg.AdvertInterval)
		case a.Priority > r.advertPriority() || (a.Priority == r.advertPriority() && a.src.Compare(r.src) > 0):
			r.masterAdverInt = interval
			r.setMaster(a.src, a.Priority)
			r.leaveMaster()
			r.enterBackup(CauseHigherPrio, fmt.Sprintf("advert from %s with priority %d over ours %d", a.src, a.Priority, r.advertPriority()))
		default:
			r.reassert(a)
		}
	}
}

// stalled is asked when the master down timer expires on a backup. It
// reads the adverts already handed over, and if one came from the master,
// or a packet still waits on the socket, this process stalled, not the
// master (an overloaded node): taking over would announce the VIPs from a
// second master for nothing and reset the connections that reach it. So
// the takeover waits, a quarter advert interval at a time, at most one
// advert interval in all: packets that are not the master's cannot hold
// it off for longer.
func (r *router) stalled(rxc <-chan rxAdvert) bool {
	if r.downCause != CauseMasterDown {
		return false // a preemption or a master that left: meant to happen now
	}
	heard := r.masterHeard
	for len(rxc) > 0 && r.state == StateBackup {
		r.onAdvert(<-rxc)
	}
	if r.downCause != CauseMasterDown {
		// A drained advert changed why the timer runs: a master leaving
		// (priority 0) set it to the skew time; a preemption is due now.
		return r.downCause == CausePriorityZero
	}
	if r.masterHeard != heard {
		r.count(func(c *Counters) { c.TakeoversAvoided++ })
		return true
	}
	if r.deferrals < maxDeferrals && r.conn.queued() {
		if r.deferrals == 0 {
			r.count(func(c *Counters) { c.TakeoversAvoided++ })
		}
		r.deferrals++
		r.timer.Reset(r.cfg.AdvertInterval / maxDeferrals)
		return true
	}
	r.deferrals = 0
	return false
}

// reassert answers a master with a lower priority: a backup that missed
// our adverts (a partition, or its process or ours stalled for a master
// down interval) and took over. Its takeover announced the VIPs with its
// MAC, so the hosts that heard it keep sending to that node after it steps
// down on our advert, and their connections get reset or find no route.
// So we advertise at once and announce the VIPs again, then once more
// after garpRepeat, past the neighbour lock time (1 s on Linux) in which
// a host ignores a second change of the same entry; keepalived does the
// same (vrrp_garp_lower_prio_repeat). At most once per garpRepeat, however
// long the other master keeps advertising.
func (r *router) reassert(a rxAdvert) {
	if !r.holding {
		// A preemption in progress: the old master's last adverts, before
		// it steps down and we claim the VIPs.
		return
	}
	r.count(func(c *Counters) { c.LowerPriorityMasters++ })
	if time.Since(r.reasserted) < garpRepeat {
		return
	}
	r.reasserted = time.Now()
	r.log.Warn("another master with a lower priority: asserting and announcing the VIPs again",
		"master", a.src, "priority", a.Priority, "ours", r.advertPriority())
	r.sendAdvert(r.advertPriority())
	r.timer.Reset(r.cfg.AdvertInterval)
	r.announce()
	r.garp.Reset(garpRepeat)
}

// advertPriority is the priority a master advertises: its effective
// priority, plus one once it has held the VIPs for stickyAfter. A backup
// that took over only because it missed a few adverts (its process or the
// master's stalled on an overloaded node) has not held them that long, so
// when the adverts flow again it loses to the master it displaced even with
// the same configured priority and a higher address, where RFC 5798's
// tie-break would move the VIP (and reset every connection through it) for
// nothing. After a real failover the new master gets the same edge, so a
// recovered node of equal priority does not take the VIP back either
// (keepalived's nopreempt, for equal priorities only). A yielding master
// gets no bonus, nor one at 254 (255 means the address owner).
func (r *router) advertPriority() uint8 {
	if r.holding && r.prio > YieldPriority && r.prio < 254 && time.Since(r.heldSince) >= stickyAfter {
		return r.prio + 1
	}
	return r.prio
}

// preemptNow reports whether this node may take the VIPs from a master
// with a lower priority (one at YieldPriority is taken over regardless).
func (r *router) preemptNow() bool {
	return r.cfg.Preempt && time.Since(r.started) >= r.cfg.PreemptDelay
}

// skew is Skew_Time (§6.1) for the effective priority.
func (r *router) skew(adverInt time.Duration) time.Duration {
	return time.Duration(256-int(r.prio)) * adverInt / 256
}

// downInterval is Master_Down_Interval (§6.1).
func (r *router) downInterval() time.Duration {
	return 3*r.masterAdverInt + r.skew(r.masterAdverInt)
}

func (r *router) enterBackup(cause Cause, reason string) {
	r.timer.Reset(r.downInterval())
	r.downCause, r.downReason = CauseMasterDown, "no advert from a master for the master down interval"
	r.transition(StateBackup, cause, reason)
}

func (r *router) becomeMaster(cause Cause, reason string) {
	r.sendAdvert(r.prio)
	r.transition(StateMaster, cause, reason)
	r.setMaster(r.src, r.prio)
	r.timer.Reset(r.cfg.AdvertInterval)
	if cause == CausePreempt {
		// The old master is alive: give it half an advert interval to
		// receive our advert and drop the VIPs, so that preemption is
		// break-before-make instead of both nodes answering ARP for a
		// moment. Nothing is lost: the old master served until now.
		r.claim.Reset(r.cfg.AdvertInterval / 2)
		return
	}
	r.claimVIPs()
}

// claimVIPs adds the VIPs and announces them.
func (r *router) claimVIPs() {
	r.holding, r.heldSince = true, time.Now()
	r.addVIPs()
	r.announce()
	r.garp.Reset(garpRepeat)
}

// leaveMaster stops the master's timers and removes the VIPs.
func (r *router) leaveMaster() {
	r.holding = false
	r.claim.Stop()
	r.garp.Stop()
	r.removeVIPs()
}

// onTracks applies a change of the tracks.
func (r *router) onTracks() {
	prio, fault, why := r.evalTracks()
	switch {
	case fault && r.state != StateFault:
		r.fault = true
		if r.state == StateMaster {
			r.sendAdvert(0)
			r.leaveMaster()
		}
		r.timer.Stop()
		r.prio = prio
		r.setPriority()
		r.transition(StateFault, CauseFault, why)
		return
	case !fault && r.state == StateFault:
		r.fault = false
		r.prio = prio
		r.setPriority()
		r.masterAdverInt = r.cfg.AdvertInterval
		r.enterBackup(CauseRecovered, "fault tracks recovered")
		return
	}
	if prio == r.prio {
		return
	}
	r.log.Info("priority changed", "from", r.prio, "to", prio, "why", why)
	r.prio = prio
	r.setPriority()
	if r.state == StateMaster {
		// Tell the backups now, so that one with a higher priority and
		// preempt takes over without waiting.
		prio := r.advertPriority()
		r.sendAdvert(prio)
		r.setMaster(r.src, prio)
		r.timer.Reset(r.cfg.AdvertInterval)
	}
}

// evalTracks returns the effective priority, whether a fault track failed,
// and why.
func (r *router) evalTracks() (uint8, bool, string) {
	prio := int(r.cfg.Priority)
	why := "all tracks healthy"
	var failed []string
	for _, rt := range r.tracks {
		if rt.t.get() {
			continue
		}
		failed = append(failed, rt.t.cfg.Name)
		if rt.fault {
			return r.cfg.Priority, true, fmt.Sprintf("fault track %q failed", rt.t.cfg.Name)
		}
		prio -= int(rt.weight)
	}
	if len(failed) > 0 {
		why = fmt.Sprintf("failed tracks %q", failed)
	}
	return uint8(max(prio, 1)), false, why
}

func (r *router) setPriority() {
	r.mu.Lock()
	r.st.EffectivePriority = r.prio
	if r.fault {
		r.st.EffectivePriority = 0
	}
	r.mu.Unlock()
}

func (r *router) setMaster(a netip.Addr, prio uint8) {
	r.mu.Lock()
	r.st.Master, r.st.MasterPriority = "", prio
	if a.IsValid() {
		r.st.Master = a.String()
	}
	r.mu.Unlock()
}

func (r *router) transition(to State, cause Cause, reason string) {
	from := r.state
	r.state = to
	now := time.Now()
	r.mu.Lock()
	r.st.State, r.st.Since = to, now
	if len(r.st.Transitions) == historyLen {
		r.st.Transitions = slices.Delete(r.st.Transitions, 0, 1)
	}
	r.st.Transitions = append(r.st.Transitions, Transition{At: now, From: from, To: to, Cause: cause, Reason: reason})
	r.mu.Unlock()
	r.log.Info("vrrp state", "from", from, "to", to, "cause", cause, "reason", reason, "priority", r.prio)
}

// sendAdvert sends an advert with prio to the group or to every peer.
func (r *router) sendAdvert(prio uint8) {
	a := advert{VRID: r.cfg.VRID, Priority: prio, Centis: uint16(r.cfg.AdvertInterval / (10 * time.Millisecond)), Addrs: r.vips}
	dsts := r.cfg.Peers
	if len(dsts) == 0 {
		dsts = []netip.Addr{groupV4}
		if r.v6 {
			dsts = []netip.Addr{groupV6}
		}
	}
	for _, dst := range dsts {
		err := r.conn.send(a.marshal(r.src, dst), r.src, dst)
		r.count(func(c *Counters) {
			if err != nil {
				c.SendErrors++
				return
			}
			c.AdvertsSent++
			if prio == 0 {
				c.PriorityZeroSent++
			}
		})
		if err != nil {
			r.log.Warn("send advert", "to", dst, "err", err)
		}
	}
}

func (r *router) announce() {
	err := r.ann.announce(r.vips, r.src)
	r.count(func(c *Counters) {
		if err != nil {
			c.SendErrors++
			return
		}
		c.Announcements += uint64(len(r.vips))
	})
	if err != nil {
		r.log.Warn("announce VIPs", "err", err)
	}
}

func (r *router) addVIPs() {
	for _, p := range r.cfg.VIPs {
		a := &netlink.Addr{IPNet: prefixIPNet(p)}
		if r.v6 {
			// The VIP must answer at once, not after duplicate address
			// detection (the other nodes do not hold it).
			a.Flags = unix.IFA_F_NODAD
		}
		if err := r.nl.AddrReplace(r.link, a); err != nil {
			r.log.Error("add VIP", "vip", p, "err", err)
		}
	}
}

func (r *router) removeVIPs() {
	if r.link == nil {
		return
	}
	for _, p := range r.cfg.VIPs {
		err := r.nl.AddrDel(r.link, &netlink.Addr{IPNet: prefixIPNet(p)})
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) {
			r.log.Error("remove VIP", "vip", p, "err", err)
		}
	}
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}
