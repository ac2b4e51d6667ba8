package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/config/source"
	"github.com/ballast-os/ballast/initagent/dhcp"
	"github.com/ballast-os/ballast/initagent/ignite"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/netfilter"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/probe"
	"github.com/ballast-os/ballast/initagent/txn/slot"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// defaultNetworkTimeout bounds how long boot waits for the network (and
// DHCP leases) before declaring itself ready anyway, degraded.
const defaultNetworkTimeout = 60 * time.Second

// startNetwork brings up DHCP on every NIC, then looks for the machine
// config; a valid one replaces the default. A missing, unreachable or invalid
// config leaves the default in place and is reported, never half-applied.
func (a *Agent) startNetwork(ctx context.Context, cmdline boot.Cmdline, hostname string) (*network.Manager, *config.MachineConfig) {
	m := &network.Manager{
		Log:       a.Log.With("part", "network"),
		Applier:   &netconf.Applier{Log: a.Log, NeedKinds: a.needLinkKinds},
		LeaseDir:  filepath.Join(a.Root, "var/lib/ballast/dhcp"),
		Hostname:  hostname,
		OnApplied: a.networkApplied,
		OnDNS:     a.resolver.update,
		ApplyNetfilter: func(rs netfilter.Ruleset) error {
			if err := a.needAllModules(ctx, "nftables"); err != nil {
				return err
			}
			conn, err := netfilter.New(0)
			if err != nil {
				return err
			}
			return netfilter.Apply(conn, rs)
		},
	}
	m.VerifyLease = func(ctx context.Context, l dhcp.Lease) error { return verifyLease(ctx, l) }
	m.OnLeaseVerdict = func(old, cur dhcp.Lease, err error) {
		if a.txn == nil {
			return
		}
		rec := txn.Record{Origin: "dhcp", Slot: "-", Started: time.Now().UTC(), Finished: time.Now().UTC(), State: txn.Available,
			Message: fmt.Sprintf("%s lease %s → %s", cur.Interface, old.Address, cur.Address)}
		if err != nil {
			rec.State, rec.Reason, rec.Message = txn.Degraded, txn.ReasonFailedToConfigure, rec.Message+": "+err.Error()
		}
		a.txn.Note(rec)
	}
	a.sup.Start(ctx, pid1.Daemon{Name: "network", Run: m.Run})
	def, err := m.DefaultDesired()
	if err != nil {
		a.Log.Error("default network", "err", err)
	}
	m.SetDesired(def)

	a.txn = &txn.Manager{
		Store:       a.configStore(),
		Network:     m,
		Log:         a.Log.With("part", "txn"),
		HistoryFile: filepath.Join(a.Root, "var/lib/ballast/txn/history.json"),
	}
	// A config in the slots (committed, or interrupted with a try left) wins:
	// it is what the node was last told through nodectl or a previous boot.
	// Boot bounds every apply by the transaction deadline and falls back to
	// the other good slot, then to DHCP on every NIC, so this returns.
	cfg, err := a.txn.Boot(ctx)
	switch {
	case err == nil:
		a.Log.Info("machine config from config slot")
		if err := a.firstBoot(ctx, cfg); err != nil {
			a.Log.Error("ignition", "err", err)
		}
		return m, cfg
	case errors.Is(err, txn.ErrDefaultNetwork):
		// The slots keep their configs for the next boot; nodectl apply or
		// rollback fixes this one. An older config from a source would not do better.
		a.Log.Error("no config slot applied, running DHCP on every NIC", "err", err)
		return m, nil
	case !errors.Is(err, txn.ErrNoConfig):
		a.Log.Error("config slots unusable", "err", err)
	}

	netChanged, stopWatching := watchAddrsAndRoutes(a.Log)
	res, err := source.Fetch(ctx, source.Options{Cmdline: cmdline.Ballast(), Root: a.Root, Log: a.Log.With("part", "config"),
		Devices: a.configDriveCandidates(), NetworkChanged: netChanged,
		NeedFilesystem: func(ctx context.Context, fstype string) error { return a.needFilesystems(ctx, fstype) }})
	stopWatching()
	switch {
	case errors.Is(err, source.ErrNoConfig):
		a.Log.Info("no machine config, keeping DHCP on every NIC", "why", err)
		return m, nil
	case err != nil:
		a.Log.Error("machine config unavailable, keeping DHCP on every NIC", "err", err)
		return m, nil
	}
	cfg, warnings, err := config.Parse(res.Data)
	for _, w := range warnings {
		a.Log.Warn("machine config normalised", "field", w.Path, "note", w.Msg)
	}
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				a.Log.Error("machine config invalid", "source", res.Source, "field", e.Path, "line", e.Line, "problem", e.Msg)
			}
		} else {
			a.Log.Error("machine config invalid", "source", res.Source, "err", err)
		}
		a.Log.Error("machine config rejected, keeping DHCP on every NIC", "source", res.Source, "sha256", res.SHA256)
		return m, nil
	}
	a.Log.Info("machine config accepted", "source", res.Source, "sha256", res.SHA256)
	rec, err := a.txn.Apply(ctx, res.Data, txn.Options{Origin: "boot"})
	if err != nil {
		a.Log.Error("machine config did not pass its probes, back on DHCP", "source", res.Source, "probe", rec.FailedProbe, "err", err)
		return m, nil
	}
	if err := a.firstBoot(ctx, cfg); err != nil {
		a.Log.Error("ignition", "err", err)
	}
	return m, cfg
}

// watchAddrsAndRoutes pokes the returned channel whenever the kernel adds
// an address or a route, until stop. Without netlink it returns a channel
// that never fires: callers then fall back on their timers.
func watchAddrsAndRoutes(log *slog.Logger) (changed <-chan struct{}, stop func()) {
	poke := make(chan struct{}, 1)
	done := make(chan struct{})
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	onErr := func(err error) { log.Debug("address and route updates", "err", err) }
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		log.Debug("cannot follow address updates", "err", err)
		addrs = nil
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		log.Debug("cannot follow route updates", "err", err)
		routes = nil
	}
	// Drained to the end when stopped: the subscriptions' readers close
	// them once they see done.
	addrsSub, routesSub := addrs, routes
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for addrs != nil || routes != nil {
			added := false
			select {
			case <-done:
				return
			case u, ok := <-addrs:
				if !ok {
					addrs = nil
				}
				added = ok && u.NewAddr
			case u, ok := <-routes:
				if !ok {
					routes = nil
				}
				// Local-table routes come with each address, already noticed.
				added = ok && u.Type == unix.RTM_NEWROUTE && u.Table != unix.RT_TABLE_LOCAL
			}
			if added {
				select {
				case poke <- struct{}{}:
				default:
				}
			}
		}
	}()
	return poke, func() {
		close(done)
		wg.Wait()
		if addrsSub != nil {
			go func() {
				for range addrsSub {
				}
			}()
		}
		if routesSub != nil {
			go func() {
				for range routesSub {
				}
			}()
		}
	}
}

// verifyLease probes what a new DHCP lease brings: its gateway answers
// ARP/NDP and its DNS servers answer.
func verifyLease(ctx context.Context, l dhcp.Lease) error {
	var ps []probe.Probe
	gw := l.Router
	for _, r := range l.Routes {
		if r.Dst.Bits() == 0 && r.Gateway.IsValid() {
			gw = r.Gateway
		}
	}
	if gw.IsValid() {
		ps = append(ps, probe.Gateway(l.Interface, gw))
	}
	name := l.Domain
	if len(l.Search) > 0 {
		name = l.Search[0]
	}
	for _, s := range l.DNS {
		ps = append(ps, probe.DNS(s, name))
	}
	var errs []error
	for _, r := range probe.RunAll(ctx, ps, 3*time.Second) {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	return errors.Join(errs...)
}

// configStore finds the CONFIG-A/CONFIG-B partitions of an installed disk,
// or keeps the slots in tmpfs on a diskless node.
func (a *Agent) configStore() slot.Store {
	if a.Container {
		return a.containerConfigStore()
	}
	ueventFiles, _ := filepath.Glob(filepath.Join(a.Root, "sys/class/block/*/uevent"))
	for _, u := range ueventFiles {
		data, err := os.ReadFile(u)
		if err != nil || !strings.Contains(string(data), "PARTNAME=CONFIG-A\n") {
			continue
		}
		part := filepath.Dir(u)
		disk := filepath.Base(filepath.Dir(mustEval(part)))
		store, err := slot.NewGPT(filepath.Join(a.Root, "dev", disk))
		if err == nil {
			a.Log.Info("config slots on disk", "disk", "/dev/"+disk)
			return store
		}
		a.Log.Error("config partitions unusable, using tmpfs slots", "disk", disk, "err", err)
	}
	dir := filepath.Join(a.Root, "run/ballast/config-slots")
	store, err := slot.NewDir(dir)
	if err != nil {
		a.Log.Error("tmpfs config slots", "err", err)
	}
	return store
}

func mustEval(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// firstBoot applies the config's Ignition section: everything on the first
// boot of STATE, the entries outside /var (the root is rebuilt every boot)
// on every boot (see ignite.Boot).
func (a *Agent) firstBoot(ctx context.Context, cfg *config.MachineConfig) error {
	ign, err := cfg.IgnitionConfig()
	if err != nil || ign == nil {
		return err
	}
	res, err := ignite.Boot(ctx, ign, ignite.Options{Root: a.Root})
	if err != nil {
		return err
	}
	a.Log.Info("ignition applied", "mode", res.Mode, "files", res.Files, "directories", res.Directories,
		"links", res.Links, "users", res.Users)
	return nil
}

// waitNetwork waits for the network to settle, bounded by
// ballast.network.timeout (a Go duration).
func (a *Agent) waitNetwork(ctx context.Context, m *network.Manager, cmdline boot.Cmdline, log *slog.Logger) error {
	timeout := defaultNetworkTimeout
	if v, ok := cmdline.Get("ballast.network.timeout"); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			log.Error("ignoring ballast.network.timeout", "value", v, "err", err)
		} else {
			timeout = d
		}
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// NICs without carrier are not waited for; they are reported.
	err := m.WaitSettled(wctx)
	var se *network.SettleError
	if errors.As(err, &se) && se.Partial() {
		log.Warn("network settled partly", "why", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("network not settled within %s: %w", timeout, err)
	}
	return nil
}
