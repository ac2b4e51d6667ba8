// Package vip is the VIP speaker: VRRP version 3 (RFC 5798, IP protocol
// 112) over IPv4 and IPv6 with raw sockets, VIPs added and removed with
// netlink, gratuitous ARP and unsolicited neighbour advertisements on
// takeover and periodically, and a priority-0 advertisement on shutdown so
// a backup takes over at once. It interoperates with keepalived
// (vrrp_version 3).
//
// The speaker answers with the interface's own MAC address, like keepalived
// without use_vmac: the virtual MAC 00-00-5E-00-01-{VRID} of RFC 5798 §7.3 is
// not used, so a takeover needs the gratuitous ARP / unsolicited NA to move
// the neighbours' caches.
//
// Three departures from RFC 5798 keep a VIP in place on an overloaded node,
// where a process can miss a few 100 ms adverts: a backup whose down timer
// expires while the master's adverts still wait on its socket does not
// take over; a master that has held the VIPs for a few seconds advertises
// one more than its priority, so a backup that took over anyway loses to
// it even with an equal priority and a higher address; and a master that
// hears a lower-priority master announces the VIPs again, so the hosts the
// other's takeover redirected come back. On the wire they are plain VRRP.
//
// Usage:
//
//	s, err := vip.New(vip.Config{
//		Cluster: "prod",
//		Routers: []vip.RouterConfig{{
//			Name: "api", Interface: "eth0", Priority: 150, Preempt: true,
//			VIPs:   []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24")},
//			Peers:  []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")},
//			Tracks: []vip.TrackConfig{{Name: "apiproxy", Weight: 60}},
//		}},
//	})
//	go s.Run(ctx)
//	s.SetTrack("apiproxy", true) // from the API proxy, whenever its health changes
package vip

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// YieldPriority is the lowest priority. A master advertising it yields:
// backups with a higher priority take over even without Preempt. A
// node configured with priority 1 is therefore the one of last resort.
const YieldPriority = 1

// Defaults.
const (
	// DefaultAdvertInterval is 10 centiseconds. A backup takes over when
	// it has heard nothing for Master_Down_Interval = 3×interval + skew
	// (RFC 5798 §6.1), skew = (256−priority)/256 × interval ≤ interval, so
	// 0.3–0.4 s after the master died, plus the time the gratuitous ARP
	// takes. That meets the failover target (median ≤ 0.5 s, p95 ≤ 1 s);
	// 20 cs would put the down timer alone at 0.6–0.8 s. Three missed
	// adverts in a row (300 ms without the master being scheduled or its
	// packets delivered) is still far above the scheduling delays of a
	// busy 2-core node: tools/bench/vip measures failover with both cores
	// busy and counts spurious takeovers (flaps). keepalived accepts
	// advert_int 0.1 with vrrp_version 3.
	DefaultAdvertInterval = 100 * time.Millisecond
	// DefaultPriority is keepalived's default priority.
	DefaultPriority = 100
	// DefaultGARPInterval repeats the gratuitous ARP / unsolicited NA
	// while master: some switches and hosts miss the burst at takeover.
	DefaultGARPInterval = 60 * time.Second
	// stickyAfter is how long a master must have held the VIPs before it
	// advertises one more than its priority (see router.advertPriority):
	// far longer than a spurious takeover lasts (the displaced master's
	// next advert ends it), short next to a real outage.
	stickyAfter = 3 * time.Second
	// maxDeferrals bounds how often a backup defers its takeover for
	// packets waiting on its socket (see router.stalled).
	maxDeferrals = 4
	// garpRepeat is when the takeover burst is sent a second time.
	garpRepeat = time.Second
	// historyLen bounds RouterStatus.Transitions.
	historyLen = 32
)

// Config configures a Speaker. Every zero value is a usable default, except
// that Routers must not be empty.
type Config struct {
	// Logger receives structured logs. Nil: discarded.
	Logger *slog.Logger
	// Cluster is the cluster's name; a router without a VRID gets
	// DeriveVRID(Cluster, router Name). Empty: every router needs a VRID.
	Cluster string
	// Routers are the virtual routers to run, e.g. the API VIP and the
	// ingress VIP. Required.
	Routers []RouterConfig
}

// RouterConfig configures one virtual router. A router is IPv4 or IPv6:
// RFC 5798 §5.2.9 lets one router carry one family only, so dual-stack VIPs
// need two routers (they may share the VRID).
type RouterConfig struct {
	// Name identifies the router in logs and status, e.g. "api",
	// "ingress". Required, unique.
	Name string
	// Interface is the interface adverts are sent and received on and the
	// VIPs are added to. Required.
	Interface string
	// VRID is the virtual router ID, 1–255, the same on every node of this
	// router. Zero: DeriveVRID(Config.Cluster, Name).
	VRID uint8
	// Priority is this node's priority, 1–254 (255 is reserved for the
	// owner of the addresses, which a VIP speaker never is). Zero: 100.
	Priority uint8
	// Preempt lets this node take the VIPs from a master with a lower
	// priority. False: a master keeps the VIPs until it fails or leaves.
	// A settled master advertises its priority plus one, so a node whose
	// priority is only one higher does not preempt it.
	Preempt bool
	// PreemptDelay is how long after Run starts this node does not preempt
	// (keepalived's preempt_delay): a freshly booted node does not take the
	// VIPs before its services are warm. Zero: preempt at once.
	PreemptDelay time.Duration
	// AdvertInterval is how often the master advertises, a multiple of
	// 10 ms from 10 ms to 40.95 s (§5.2.7 carries centiseconds).
	// Zero: DefaultAdvertInterval (100 ms).
	AdvertInterval time.Duration
	// VIPs are the virtual addresses with their prefix length, all of one
	// family. Required.
	VIPs []netip.Prefix
	// Peers are the other nodes' addresses. Empty: adverts go to the
	// multicast group (224.0.0.18 or ff02::12) and are accepted from
	// anyone. Set: adverts are sent to each peer by unicast and adverts
	// from any other address are dropped and counted, so a node that is
	// not listed never takes part.
	Peers []netip.Addr
	// Source is the adverts' source address; it must be on Interface.
	// Zero: the interface's first IPv4 address that is not a VIP, or its
	// IPv6 link-local address (§5.1.2.1), or with IPv6 peers given by
	// global address its first global address that is not a VIP (the
	// address the other nodes list as peer, keepalived's unicast_src_ip).
	Source netip.Addr
	// GARPInterval is how often a master repeats the gratuitous ARP or
	// unsolicited NA for its VIPs. Zero: 60 s. Negative: only at takeover.
	GARPInterval time.Duration
	// Tracks lower the priority when they fail (see TrackConfig).
	Tracks []TrackConfig
}

// TrackConfig is a health signal a router follows. A failed track lowers
// the router's priority by Weight; a failed track with Fault set puts the
// router in the fault state, where it gives up the VIPs (sending
// priority 0 if it was master) and does not take part until the track
// recovers.
//
// A Weight that takes the priority down to YieldPriority makes the router
// yield instead: any node with a higher priority takes the VIPs from it,
// preempt or not, but while none has, it keeps them. That suits a signal
// every node can lose at once (the API proxy's health when all apiservers
// are slow): with Fault every node would give the VIPs up and clients would
// reach nothing, not even a slow apiserver.
//
// A track with neither HTTP nor TCP is set from inside the process with
// Speaker.SetTrack (the API proxy's "I have a healthy backend"). Tracks
// start failed until their first report or first successful check.
type TrackConfig struct {
	// Name identifies the track for SetTrack and in status. Required;
	// routers that list the same name share the track.
	Name string
	// Weight is subtracted from the priority while the track fails
	// (the effective priority never drops below 1). Required unless Fault.
	Weight uint8
	// Fault makes a failed track put the router in the fault state.
	Fault bool
	// HTTP is a URL polled with GET; a 2xx answer is a success.
	HTTP string
	// TCP is a host:port; an accepted connection is a success.
	TCP string
	// Interval is the time between checks. Zero: 1 s.
	Interval time.Duration
	// Timeout bounds one check. Zero: the interval.
	Timeout time.Duration
	// Fall is how many failed checks in a row fail a healthy track, Rise
	// how many successful ones heal a failed one. Zero: 3 and 2.
	Fall, Rise int
}

// DeriveVRID returns a VRID for a router from the cluster's name and the
// router's role (e.g. "api", "ingress"): stable across nodes and releases,
// never 0, and spread over 1–255 so that two clusters on one L2 segment
// rarely collide. New rejects two routers of one speaker that end up with
// the same VRID on one interface and family; set one VRID explicitly then.
func DeriveVRID(cluster, role string) uint8 {
	h := fnv.New32a()
	io.WriteString(h, cluster)
	h.Write([]byte{0})
	io.WriteString(h, role)
	return uint8(h.Sum32()%255) + 1
}

// Speaker runs the virtual routers of a Config. Create it with New.
type Speaker struct {
	log     *slog.Logger
	routers []*router
	tracks  map[string]*track
	running atomic.Bool
}

// New checks cfg and returns a speaker; Run starts it.
func New(cfg Config) (*Speaker, error) {
	if len(cfg.Routers) == 0 {
		return nil, errors.New("vip: Routers is empty: configure at least one virtual router")
	}
	log := cfg.Logger
	if log == nil {
		log = discard()
	}
	s := &Speaker{log: log, tracks: map[string]*track{}}
	names := map[string]bool{}
	type slot struct {
		iface string
		v6    bool
		vrid  uint8
	}
	slots := map[slot]string{}
	for i := range cfg.Routers {
		rc := cfg.Routers[i]
		if err := normalize(&rc, cfg.Cluster); err != nil {
			return nil, fmt.Errorf("vip: Routers[%d] (%q): %w", i, rc.Name, err)
		}
		if names[rc.Name] {
			return nil, fmt.Errorf("vip: Routers[%d]: Name %q is used twice; give each router its own name", i, rc.Name)
		}
		names[rc.Name] = true
		k := slot{rc.Interface, rc.VIPs[0].Addr().Is6(), rc.VRID}
		if other, ok := slots[k]; ok {
			return nil, fmt.Errorf("vip: Routers[%d] (%q): VRID %d is already used by router %q on %s; set VRID explicitly on one of them", i, rc.Name, rc.VRID, other, rc.Interface)
		}
		slots[k] = rc.Name
		r := newRouter(rc, log.With("router", rc.Name, "vrid", rc.VRID))
		for j, tc := range rc.Tracks {
			t, ok := s.tracks[tc.Name]
			if !ok {
				t = newTrack(tc)
				s.tracks[tc.Name] = t
			} else if t.cfg.HTTP != tc.HTTP || t.cfg.TCP != tc.TCP {
				return nil, fmt.Errorf("vip: Routers[%d] (%q): Tracks[%d]: track %q is defined with another check elsewhere; use one definition or another name", i, rc.Name, j, tc.Name)
			}
			t.routers = append(t.routers, r)
			r.tracks = append(r.tracks, routerTrack{t: t, weight: tc.Weight, fault: tc.Fault})
		}
		s.routers = append(s.routers, r)
	}
	return s, nil
}

// normalize fills in defaults and checks rc.
func normalize(rc *RouterConfig, cluster string) error {
	if rc.Name == "" {
		return errors.New("Name is empty: name the router, e.g. \"api\"")
	}
	if rc.Interface == "" || len(rc.Interface) >= 16 {
		return fmt.Errorf("Interface %q is not an interface name (1-15 bytes)", rc.Interface)
	}
	if rc.VRID == 0 {
		if cluster == "" {
			return errors.New("VRID is 0 and Config.Cluster is empty: set a VRID (1-255) or the cluster name to derive it from")
		}
		rc.VRID = DeriveVRID(cluster, rc.Name)
	}
	switch {
	case rc.Priority == 0:
		rc.Priority = DefaultPriority
	case rc.Priority == 255:
		return errors.New("Priority 255 is reserved for the owner of the addresses (RFC 5798 §5.2.4); use 1-254")
	}
	if rc.PreemptDelay < 0 {
		return fmt.Errorf("PreemptDelay %s is negative", rc.PreemptDelay)
	}
	switch {
	case rc.AdvertInterval == 0:
		rc.AdvertInterval = DefaultAdvertInterval
	case rc.AdvertInterval < 10*time.Millisecond || rc.AdvertInterval > maxAdvertCentis*10*time.Millisecond || rc.AdvertInterval%(10*time.Millisecond) != 0:
		return fmt.Errorf("AdvertInterval %s must be a multiple of 10ms from 10ms to 40.95s (VRRPv3 carries centiseconds)", rc.AdvertInterval)
	}
	if len(rc.VIPs) == 0 {
		return errors.New("VIPs is empty: configure the virtual address(es) with their prefix length, e.g. 192.0.2.10/24")
	}
	if len(rc.VIPs) > 255 {
		return fmt.Errorf("VIPs has %d addresses; an advert carries at most 255", len(rc.VIPs))
	}
	v6 := rc.VIPs[0].Addr().Is6()
	family := func(a netip.Addr) string {
		if a.Is6() {
			return "IPv6"
		}
		return "IPv4"
	}
	want := family(rc.VIPs[0].Addr())
	seen := map[netip.Addr]bool{}
	for i, p := range rc.VIPs {
		a := p.Addr()
		switch {
		case !p.IsValid():
			return fmt.Errorf("VIPs[%d] is not a valid prefix", i)
		case a.Is4In6() || a.Zone() != "":
			return fmt.Errorf("VIPs[%d] %s: write IPv4 addresses as a.b.c.d and IPv6 addresses without a zone", i, p)
		case a.Is6() != v6:
			return fmt.Errorf("VIPs[%d] %s is not %s like VIPs[0]: one router carries one family (RFC 5798 §5.2.9); configure a second router for the other family", i, p, want)
		case !a.IsGlobalUnicast():
			return fmt.Errorf("VIPs[%d] %s is not a unicast address a node could own", i, p)
		case seen[a]:
			return fmt.Errorf("VIPs[%d] %s is listed twice", i, p)
		}
		seen[a] = true
	}
	for i, a := range rc.Peers {
		switch {
		case !a.IsValid() || a.IsUnspecified() || a.IsMulticast():
			return fmt.Errorf("Peers[%d] %s is not a unicast address", i, a)
		case a.Zone() != "":
			return fmt.Errorf("Peers[%d] %s: leave out the zone, adverts always use Interface", i, a)
		case a.Is6() != v6 || a.Is4In6():
			return fmt.Errorf("Peers[%d] %s is not %s like the VIPs", i, a, want)
		case seen[a]:
			return fmt.Errorf("Peers[%d] %s is a VIP or listed twice", i, a)
		}
		seen[a] = true
	}
	if rc.Source.IsValid() {
		switch a := rc.Source; {
		case a.IsUnspecified() || a.IsMulticast():
			return fmt.Errorf("Source %s is not a unicast address", a)
		case a.Is6() != v6 || a.Is4In6():
			return fmt.Errorf("Source %s is not %s like the VIPs", a, want)
		case seen[a]:
			return fmt.Errorf("Source %s is a VIP or a peer; use this node's own address", a)
		}
	}
	if rc.GARPInterval == 0 {
		rc.GARPInterval = DefaultGARPInterval
	}
	tnames := map[string]bool{}
	for i := range rc.Tracks {
		tc := &rc.Tracks[i]
		if err := normalizeTrack(tc); err != nil {
			return fmt.Errorf("Tracks[%d] (%q): %w", i, tc.Name, err)
		}
		if tnames[tc.Name] {
			return fmt.Errorf("Tracks[%d]: %q is listed twice", i, tc.Name)
		}
		tnames[tc.Name] = true
	}
	return nil
}

func normalizeTrack(tc *TrackConfig) error {
	if tc.Name == "" {
		return errors.New("Name is empty")
	}
	if tc.Weight == 0 && !tc.Fault {
		return errors.New("Weight is 0 and Fault is false, so the track would do nothing; set a Weight or Fault")
	}
	if tc.HTTP != "" && tc.TCP != "" {
		return errors.New("both HTTP and TCP are set; a track runs one check")
	}
	if tc.HTTP != "" {
		u, err := url.Parse(tc.HTTP)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("HTTP %q is not an http:// or https:// URL", tc.HTTP)
		}
	}
	if tc.TCP != "" {
		if _, err := netip.ParseAddrPort(tc.TCP); err != nil {
			return fmt.Errorf("TCP %q is not an address:port like 127.0.0.1:443 or [::1]:443", tc.TCP)
		}
	}
	if tc.Interval < 0 || tc.Timeout < 0 || tc.Fall < 0 || tc.Rise < 0 {
		return errors.New("Interval, Timeout, Fall and Rise must not be negative")
	}
	if tc.Interval == 0 {
		tc.Interval = time.Second
	}
	if tc.Timeout == 0 {
		tc.Timeout = tc.Interval
	}
	if tc.Fall == 0 {
		tc.Fall = 3
	}
	if tc.Rise == 0 {
		tc.Rise = 2
	}
	return nil
}

// Run runs every router until ctx is cancelled; then a master sends a
// priority-0 advert, the VIPs are removed and Run returns nil. It returns
// an error when a router cannot run (its sockets cannot be opened); the
// other routers are stopped the same way first.
func (s *Speaker) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("vip: Run called while already running")
	}
	defer s.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, t := range s.tracks {
		if t.checked() {
			wg.Go(func() { t.run(ctx, s.log) })
		}
	}
	errs := make([]error, len(s.routers))
	for i, r := range s.routers {
		wg.Go(func() {
			if err := r.run(ctx); err != nil {
				errs[i] = fmt.Errorf("vip: router %q: %w", r.cfg.Name, err)
				cancel()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SetTrack reports the health of an in-process track (one without an HTTP
// or TCP check), e.g. the API proxy's "I have a healthy backend".
func (s *Speaker) SetTrack(name string, healthy bool) error {
	t, ok := s.tracks[name]
	if !ok {
		return fmt.Errorf("vip: no track %q is configured", name)
	}
	if t.checked() {
		return fmt.Errorf("vip: track %q runs its own check and cannot be set", name)
	}
	t.set(healthy, "set by SetTrack")
	return nil
}

// Status returns a snapshot of every router's state.
func (s *Speaker) Status() Status {
	st := Status{Routers: make([]RouterStatus, 0, len(s.routers))}
	for _, r := range s.routers {
		st.Routers = append(st.Routers, r.status())
	}
	return st
}
