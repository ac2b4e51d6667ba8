// Package network keeps the node's network at its desired state: the
// machine config's interfaces (or, without one, DHCP on every NIC) merged
// with what the DHCP clients learn, applied through netconf whenever either
// changes. DHCP clients publish leases here and never touch the kernel.
//
//	m := &network.Manager{Log: log, Applier: &netconf.Applier{Log: log}}
//	go m.Run(ctx)
//	m.SetDesired(network.Desired{Spec: spec, DHCP4: []string{"eth0"}})
//	err := m.WaitSettled(ctx) // applied, and a lease on every DHCP interface with carrier
//
// Manager.Apply (a config, or nil for DHCP on every NIC, then WaitSettled)
// is what network transactions (initagent/txn) drive.
package network

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/dhcp"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/netfilter"
)

// Desired is one layer of configuration: static state plus which interfaces
// run DHCPv4.
type Desired struct {
	Spec   netconf.Spec
	DHCP4  []string          // interface names
	DHCP6  map[string]string // interface name → "stateful" or "stateless"
	DNS    []netip.Addr
	Search []string
	// Netfilter is ballast's nftables table (pod egress NAT).
	Netfilter netfilter.Ruleset
	Source    string // where it came from, for logs and status
}

// Manager reconciles the kernel with Desired plus the current DHCP leases.
type Manager struct {
	Log     *slog.Logger
	Applier *netconf.Applier
	// LeaseDir persists DHCP leases across agent restarts; empty: none.
	LeaseDir string
	Hostname string
	// OnDNS is called with the DNS servers and search domains whenever they
	// change (static config first, then DHCP); nil: ignored.
	OnDNS func(servers []netip.Addr, search []string)
	// VerifyLease judges a DHCP lease whose address, routes or DNS servers
	// differ from the previous one, after it is applied (a DHCP change is a
	// transaction too). An error puts the previous lease back while it is
	// still valid. Nil: every lease is accepted.
	VerifyLease func(ctx context.Context, lease dhcp.Lease) error
	// OnLeaseVerdict reports each verified change; nil: ignored.
	OnLeaseVerdict func(old, new dhcp.Lease, err error)
	// OnApplied is called after every apply that changed the kernel; nil: ignored.
	OnApplied func()
	// ApplyNetfilter replaces ballast's nftables table with a ruleset
	// that differs from the last one applied; nil: the table is not managed.
	ApplyNetfilter func(netfilter.Ruleset) error
	// NIC selects the links the default network (DHCPv4 on every NIC)
	// covers; nil: the physical NICs (links of no kind but loopback).
	NIC func(netlink.Link) bool
	// CarrierGrace is how long WaitSettled waits for an interface without
	// carrier before it stops waiting for its lease; zero: 5s, negative:
	// not at all.
	CarrierGrace time.Duration

	mu         sync.Mutex
	desired    Desired
	desiredGen int // bumped by SetDesired
	appliedGen int // desiredGen of the last apply
	leases     map[string]dhcp.Lease
	// netfilter is the ruleset in the kernel, as last applied.
	netfilter *netfilter.Ruleset
	// verify holds the clients whose new lease awaits VerifyLease, with the
	// lease it replaced (zero when there was none).
	verify  map[string]dhcp.Lease
	status  Status
	kick    chan struct{}
	waiters []chan struct{}
	once    sync.Once
}

// Status is what the node API and the readiness line report.
type Status struct {
	Source    string
	Applied   time.Time
	LastError string
	Changes   int // kernel changes made by the last apply
	Addresses []netip.Prefix
	Leases    []dhcp.Lease
	// Firewall and Egress are ballast's nftables table as applied: one line
	// per opening (name: match) and per egress rule; Firewall is empty when
	// the node accepts everything.
	Firewall []string `json:",omitempty"`
	Egress   []string `json:",omitempty"`
}

func (m *Manager) init() {
	m.once.Do(func() {
		m.kick = make(chan struct{}, 1)
		m.leases = map[string]dhcp.Lease{}
		m.verify = map[string]dhcp.Lease{}
		if m.Log == nil {
			m.Log = slog.New(slog.DiscardHandler)
		}
	})
}

// SetDesired replaces the desired state and reconciles.
func (m *Manager) SetDesired(d Desired) {
	m.init()
	m.mu.Lock()
	m.desired = d
	m.desiredGen++
	m.mu.Unlock()
	m.poke()
}

func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Status returns a copy of the current status.
func (m *Manager) Status() Status {
	m.init()
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.status
	s.Addresses = slices.Clone(s.Addresses)
	s.Leases = slices.Clone(s.Leases)
	return s
}

// defaultCarrierGrace is how long WaitSettled waits for carrier on an
// interface it just brought up (autonegotiation takes seconds on physical NICs).
const defaultCarrierGrace = 5 * time.Second

// SettleError says what kept the desired state from settling. A config that
// is in place but names DHCP interfaces without carrier settles "partly":
// the error's Partial is true and nothing waits for those interfaces.
type SettleError struct {
	Source    string
	Failed    string   // the apply's error, when it failed
	NotYet    bool     // the desired state was not applied yet
	NoLease   []string // DHCP clients ("eth0/4") whose interface has carrier but no lease
	NoCarrier []string // DHCP clients not waited for: their interface has no carrier
	Err       error    // why the wait ended early (ctx)
}

func (e *SettleError) Error() string {
	var parts []string
	if e.Failed != "" {
		parts = append(parts, "apply failed: "+e.Failed)
	}
	if e.NotYet {
		parts = append(parts, "not applied yet")
	}
	if len(e.NoLease) > 0 {
		parts = append(parts, "no DHCP lease on "+strings.Join(e.NoLease, ", "))
	}
	if len(e.NoCarrier) > 0 {
		parts = append(parts, "no carrier on "+strings.Join(e.NoCarrier, ", ")+" (not waited for)")
	}
	msg := strings.Join(parts, "; ")
	if e.Err != nil {
		msg = "network did not settle (" + e.Err.Error() + "): " + msg
	}
	return msg
}

func (e *SettleError) Unwrap() error { return e.Err }

// Partial reports that the desired state is in place except for DHCP on
// interfaces without carrier.
func (e *SettleError) Partial() bool {
	return e.Failed == "" && !e.NotYet && len(e.NoLease) == 0 && e.Err == nil
}

// Apply makes cfg the desired state (nil: DHCP on every NIC) and waits
// until it settles (see WaitSettled); it lets network transactions
// (txn.Network) drive the manager. source names cfg in logs and status.
func (m *Manager) Apply(ctx context.Context, cfg *config.MachineConfig, source string) error {
	var (
		d   Desired
		err error
	)
	if cfg == nil {
		d, err = m.DefaultDesired()
	} else {
		d, err = FromConfig(cfg, source)
	}
	if err != nil {
		return err
	}
	m.SetDesired(d)
	return m.WaitSettled(ctx)
}

// WaitSettled returns nil once the latest desired state has been applied,
// every DHCP interface with carrier has a lease and no interface keeps a
// lease it should no longer have. It never waits for an interface without
// carrier (one that has none after CarrierGrace): when only those lack a
// lease it returns a *SettleError whose Partial is true. It returns a
// *SettleError at once when the apply failed, and when ctx ends first
// (wrapping ctx's error, with what was still missing).
func (m *Manager) WaitSettled(ctx context.Context) error {
	m.init()
	grace := m.CarrierGrace
	if grace == 0 {
		grace = defaultCarrierGrace
	}
	graceOver := grace < 0
	timer := time.NewTimer(max(grace, 0))
	defer timer.Stop()

	// Carrier changes wake the wait up, as applies and leases do.
	links := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: func(error) {}}); err != nil {
		m.Log.Warn("watching carrier changes", "err", err)
		links = nil
	} else {
		defer func() {
			close(done)
			for range links { // the subscription closes it once it sees done
			}
		}()
	}
	for {
		se, wake := m.settleState(graceOver)
		if se == nil {
			return nil
		}
		if se.Failed != "" || !se.NotYet && len(se.NoLease) == 0 {
			return se // failed, or only interfaces without carrier lack a lease
		}
		select {
		case <-ctx.Done():
			se.Err = ctx.Err()
			return se
		case <-wake:
		case <-links:
		case <-timer.C:
			graceOver = true
		}
	}
}

// settleState says what the latest desired state still lacks (nil:
// nothing) and returns a channel closed at the next apply. Interfaces
// without carrier count as NoCarrier once graceOver, else as NoLease.
func (m *Manager) settleState(graceOver bool) (*SettleError, chan struct{}) {
	m.mu.Lock()
	want := wantedClients(m.desired)
	se := &SettleError{Source: m.desired.Source}
	se.NotYet = m.appliedGen != m.desiredGen
	if !se.NotYet {
		se.Failed = m.status.LastError
	}
	var missing []string
	for key := range want {
		if _, ok := m.leases[key]; !ok {
			missing = append(missing, key)
		}
	}
	stale := len(m.leases) > len(want)-len(missing)
	ch := make(chan struct{})
	m.waiters = append(m.waiters, ch)
	m.mu.Unlock()
	slices.Sort(missing)
	for _, key := range missing {
		name, _, _ := strings.Cut(key, "/")
		if graceOver && !hasCarrier(name) {
			se.NoCarrier = append(se.NoCarrier, key)
		} else {
			se.NoLease = append(se.NoLease, key)
		}
	}
	if stale && !se.NotYet {
		// A lease of a client being stopped is dropped by the next apply.
		se.NotYet = true
	}
	if !se.NotYet && se.Failed == "" && len(se.NoLease) == 0 && len(se.NoCarrier) == 0 {
		return nil, ch
	}
	return se, ch
}

// hasCarrier reports whether the interface's lower layer is up.
func hasCarrier(name string) bool {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return false
	}
	return l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
}

// Run reconciles until ctx ends, starting and stopping DHCP clients as the
// desired state names them.
func (m *Manager) Run(ctx context.Context) error {
	m.init()
	clients := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	defer func() {
		for _, cancel := range clients {
			cancel()
		}
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.kick:
		}
		m.mu.Lock()
		d, gen := m.desired, m.desiredGen
		spec := merge(d.Spec, m.leases)
		m.mu.Unlock()

		res, err := m.Applier.Apply(ctx, spec)
		if err == nil {
			var changed bool
			if changed, err = m.applyNetfilter(d.Netfilter); changed {
				res.Changes = append(res.Changes, "nftables table "+netfilter.TableName)
			}
		}
		m.mu.Lock()
		m.status.Source = d.Source
		m.status.Applied = time.Now()
		m.appliedGen = gen
		m.status.Changes = 0
		if res != nil {
			m.status.Changes = len(res.Changes)
		}
		m.status.LastError = ""
		if err != nil {
			m.status.LastError = err.Error()
			m.Log.Error("apply network", "source", d.Source, "err", err)
		} else if m.status.Changes > 0 {
			m.Log.Info("network applied", "source", d.Source, "changes", m.status.Changes)
		}
		m.status.Addresses = addresses(spec)
		m.status.Leases = m.leaseList()
		servers, search := dnsOf(d, m.leases)
		for _, w := range m.waiters {
			close(w)
		}
		m.waiters = nil
		m.mu.Unlock()
		if m.OnDNS != nil {
			m.OnDNS(servers, search)
		}
		if m.OnApplied != nil && res != nil && len(res.Changes) > 0 {
			m.OnApplied()
		}

		if err == nil {
			m.verifyLeases(ctx)
		}

		// DHCP clients follow the desired state; the interface is up by now.
		want := wantedClients(d)
		for key, cancel := range clients {
			if _, ok := want[key]; !ok {
				m.Log.Info("stopping dhcp", "client", key)
				cancel()
				delete(clients, key)
				// Its lease leaves the desired state now, not when the release is answered.
				m.mu.Lock()
				delete(m.leases, key)
				m.mu.Unlock()
				m.poke()
			}
		}
		for key, mode := range want {
			if _, running := clients[key]; running {
				continue
			}
			c, err := m.newClient(key, mode)
			if err != nil {
				m.Log.Error("dhcp", "client", key, "err", err)
				continue
			}
			m.Log.Info("starting dhcp", "client", key, "mode", mode)
			cctx, cancel := context.WithCancel(ctx)
			clients[key] = cancel
			wg.Go(func() {
				if err := c.Run(cctx); err != nil && cctx.Err() == nil {
					m.Log.Error("dhcp stopped", "client", key, "err", err)
				}
			})
		}
	}
}

// applyNetfilter applies rs unless it is what the kernel has.
func (m *Manager) applyNetfilter(rs netfilter.Ruleset) (bool, error) {
	if m.ApplyNetfilter == nil || (m.netfilter != nil && reflect.DeepEqual(*m.netfilter, rs)) {
		return false, nil
	}
	if m.netfilter == nil && reflect.DeepEqual(rs, netfilter.Ruleset{}) {
		return false, nil // nothing of ours to remove (a kernel without nf_tables stays fine)
	}
	if err := m.ApplyNetfilter(rs); err != nil {
		m.netfilter = nil // unknown now: the next apply rewrites it
		return false, err
	}
	m.netfilter = &rs
	m.mu.Lock()
	m.status.Firewall, m.status.Egress = rs.Describe()
	m.mu.Unlock()
	return true, nil
}

// leaseChanged reports whether b differs from a in what reaches the kernel
// or the resolver; a plain renewal does not.
func leaseChanged(a, b dhcp.Lease) bool {
	return a.Address != b.Address || a.Router != b.Router || !slices.Equal(a.Routes, b.Routes) ||
		!slices.Equal(a.DNS, b.DNS) || a.MTU != b.MTU
}

// leaseVerifyTimeout bounds VerifyLease, like a config transaction's deadline.
const leaseVerifyTimeout = 10 * time.Second

// verifyLeases judges the leases applied since the last call and puts the
// previous lease back for each one that fails while that one is still valid.
func (m *Manager) verifyLeases(ctx context.Context) {
	m.mu.Lock()
	pending := m.verify
	m.verify = map[string]dhcp.Lease{}
	m.mu.Unlock()
	for key, old := range pending {
		m.mu.Lock()
		cur, ok := m.leases[key]
		m.mu.Unlock()
		if !ok {
			continue
		}
		vctx, cancel := context.WithTimeout(ctx, leaseVerifyTimeout)
		err := m.VerifyLease(vctx, cur)
		cancel()
		if m.OnLeaseVerdict != nil {
			m.OnLeaseVerdict(old, cur, err)
		}
		if err == nil {
			continue
		}
		if old.Address.IsValid() && time.Now().Before(old.ExpiresAt) {
			m.Log.Error("dhcp change failed its probes, keeping the previous lease", "client", key,
				"new", cur.Address, "kept", old.Address, "until", old.ExpiresAt, "err", err)
			m.mu.Lock()
			m.leases[key] = old
			m.mu.Unlock()
			m.poke()
		} else {
			m.Log.Error("dhcp lease failed its probes and there is no previous one to keep", "client", key, "address", cur.Address, "err", err)
		}
	}
}

// wantedClients lists the DHCP clients d asks for: "eth0/4" → "", "eth0/6" → mode.
func wantedClients(d Desired) map[string]string {
	w := map[string]string{}
	for _, name := range d.DHCP4 {
		w[name+"/4"] = ""
	}
	for name, mode := range d.DHCP6 {
		w[name+"/6"] = mode
	}
	return w
}

type dhcpClient interface {
	Run(ctx context.Context) error
}

func (m *Manager) newClient(key, mode string) (dhcpClient, error) {
	name, fam, _ := strings.Cut(key, "/")
	log := m.Log.With("interface", name, "family", fam)
	onLease := func(l dhcp.Lease) {
		m.mu.Lock()
		if _, wanted := wantedClients(m.desired)[key]; !wanted {
			m.mu.Unlock() // a lease that arrived while its client was being stopped
			return
		}
		old := m.leases[key]
		m.leases[key] = l
		if m.VerifyLease != nil && leaseChanged(old, l) {
			m.verify[key] = old
		}
		m.mu.Unlock()
		log.Info("dhcp lease", "address", l.Address, "router", l.Router, "dns", fmt.Sprint(l.DNS), "lease", l.LeaseTime)
		m.poke()
	}
	onExpire := func(l dhcp.Lease) {
		m.mu.Lock()
		if cur, ok := m.leases[key]; ok && cur.Address == l.Address {
			delete(m.leases, key)
		}
		m.mu.Unlock()
		log.Info("dhcp lease gone", "address", l.Address)
		m.poke()
	}
	if fam == "6" {
		return dhcp.NewClient6(dhcp.Config6{Interface: name, Stateless: mode == "stateless", LeaseDir: m.LeaseDir,
			Log: log, OnLease: onLease, OnExpire: onExpire})
	}
	return dhcp.NewClient4(dhcp.Config4{Interface: name, LeaseDir: m.LeaseDir, Hostname: m.Hostname,
		Log: log, OnLease: onLease, OnExpire: onExpire})
}

func (m *Manager) leaseList() []dhcp.Lease {
	var ls []dhcp.Lease
	for _, l := range m.leases {
		ls = append(ls, l)
	}
	slices.SortFunc(ls, func(a, b dhcp.Lease) int { return strings.Compare(a.Interface, b.Interface) })
	return ls
}

// dhcpMetric is the metric of DHCP default routes: static routes (metric 0
// by default) win over them.
const dhcpMetric = 1024

// merge adds each lease's address, routes and MTU to its interface.
func merge(spec netconf.Spec, leases map[string]dhcp.Lease) netconf.Spec {
	out := netconf.Spec{Rules: spec.Rules}
	for _, l := range spec.Links {
		l.Addresses = slices.Clone(l.Addresses)
		l.Routes = slices.Clone(l.Routes)
		if lease, ok := leases[l.Name+"/6"]; ok && lease.Address.IsValid() {
			// DHCPv6 gives no prefix length or routes: those come from router advertisements.
			l.Addresses = append(l.Addresses, netconf.AddrSpec{Prefix: lease.Address})
		}
		if lease, ok := leases[l.Name+"/4"]; ok && lease.Address.IsValid() {
			l.Addresses = append(l.Addresses, netconf.AddrSpec{Prefix: lease.Address})
			routes := lease.Routes
			if len(routes) == 0 && lease.Router.IsValid() {
				routes = []dhcp.Route{{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gateway: lease.Router}}
			}
			for _, r := range routes {
				l.Routes = append(l.Routes, netconf.RouteSpec{Dst: r.Dst, Gw: r.Gateway, Src: lease.Address.Addr(), Metric: dhcpMetric})
			}
			if l.MTU == 0 && lease.MTU >= 576 {
				l.MTU = lease.MTU
			}
		}
		out.Links = append(out.Links, l)
	}
	return out
}

func addresses(spec netconf.Spec) []netip.Prefix {
	var ps []netip.Prefix
	for _, l := range spec.Links {
		for _, a := range l.Addresses {
			ps = append(ps, a.Prefix)
		}
	}
	return ps
}

func dnsOf(d Desired, leases map[string]dhcp.Lease) ([]netip.Addr, []string) {
	servers, search := slices.Clone(d.DNS), slices.Clone(d.Search)
	names := make([]string, 0, len(leases))
	for n := range leases {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		l := leases[n]
		for _, s := range l.DNS {
			if !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
		for _, s := range append(slices.Clone(l.Search), l.Domain) {
			if s != "" && !slices.Contains(search, s) {
				search = append(search, s)
			}
		}
	}
	return servers, search
}

// DefaultDesired is the state of a node without a machine config: every
// physical NIC up with DHCPv4.
func DefaultDesired() (Desired, error) { return defaultDesired(nil) }

// DefaultDesired is DefaultDesired over the NICs m.NIC selects.
func (m *Manager) DefaultDesired() (Desired, error) { return defaultDesired(m.NIC) }

// PhysicalNIC reports whether l is a physical NIC: a link of no kind (not
// veth, bond, ...) other than loopback.
func PhysicalNIC(l netlink.Link) bool {
	return l.Type() == "device" && l.Attrs().Flags&net.FlagLoopback == 0
}

func defaultDesired(nic func(netlink.Link) bool) (Desired, error) {
	if nic == nil {
		nic = PhysicalNIC
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Desired{}, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return Desired{}, fmt.Errorf("list links: %w", err)
	}
	d := Desired{Source: "default (DHCPv4 on every NIC)"}
	for _, l := range links {
		if !nic(l) {
			continue
		}
		name := l.Attrs().Name
		d.Spec.Links = append(d.Spec.Links, netconf.LinkSpec{Name: name, Kind: config.TypeEthernet})
		d.DHCP4 = append(d.DHCP4, name)
	}
	return d, nil
}

// FromConfig is the desired state of a validated machine config.
func FromConfig(cfg *config.MachineConfig, source string) (Desired, error) {
	spec, err := netconf.FromConfig(cfg.Network)
	if err != nil {
		return Desired{}, err
	}
	d := Desired{Spec: spec, Source: source, Search: cfg.Network.DNS.Search, DHCP6: map[string]string{},
		Netfilter: netfilter.Ruleset{Egress: egressOf(cfg), Firewall: firewallOf(cfg)}}
	for _, s := range cfg.Network.DNS.Servers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Desired{}, err
		}
		d.DNS = append(d.DNS, a)
	}
	for _, ifc := range cfg.Network.Interfaces {
		if ifc.DHCP4 {
			d.DHCP4 = append(d.DHCP4, ifc.Name)
		}
		if ifc.DHCP6 != "" {
			d.DHCP6[ifc.Name] = ifc.DHCP6
		}
	}
	return d, nil
}

// egressOf is the pod egress NAT of a validated config: pods are in the
// cluster's pod networks, which with the service networks are never
// rewritten as destinations.
func egressOf(cfg *config.MachineConfig) *netfilter.Egress {
	pods := config.Prefixes(cfg.Cluster.PodCIDRs, config.DefaultPodCIDR)
	e := &netfilter.Egress{Pods: pods, Internal: append(slices.Clone(pods), config.Prefixes(cfg.Cluster.ServiceCIDRs, config.DefaultServiceCIDR)...)}
	for _, r := range cfg.Network.Egress {
		var rule netfilter.EgressRule
		if r.To != "" {
			rule.To = netip.MustParsePrefix(r.To)
		}
		if r.Source != config.EgressMasquerade {
			rule.Source = netip.MustParseAddr(r.Source)
		}
		rule.Interface = r.Interface
		e.Rules = append(e.Rules, rule)
	}
	return e
}

// ResolvConf renders /etc/resolv.conf.
func ResolvConf(servers []netip.Addr, search []string) []byte {
	var b strings.Builder
	b.WriteString("# written by ballast initagent\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	return []byte(b.String())
}
