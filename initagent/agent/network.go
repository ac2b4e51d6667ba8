package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/config/source"
	"github.com/ballast-os/ballast/initagent/dhcp"
	"github.com/ballast-os/ballast/initagent/ignite"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/probe"
	"github.com/ballast-os/ballast/initagent/txn/slot"
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
		Applier:   &netconf.Applier{Log: a.Log},
		LeaseDir:  filepath.Join(a.Root, "var/lib/ballast/dhcp"),
		Hostname:  hostname,
		OnApplied: a.networkApplied,
		OnDNS:     a.resolver.update,
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
	def, err := network.DefaultDesired()
	if err != nil {
		a.Log.Error("default network", "err", err)
	}
	m.SetDesired(def)

	a.txn = &txn.Manager{
		Store:       a.configStore(),
		Network:     networkApplier{m},
		Log:         a.Log.With("part", "txn"),
		HistoryFile: filepath.Join(a.Root, "var/lib/ballast/txn/history.json"),
	}
	// A config in the slots (committed, or interrupted with a try left) wins:
	// it is what the node was last told through nodectl or a previous boot.
	cfg, err := a.txn.Boot(ctx)
	switch {
	case err == nil:
		a.Log.Info("machine config from config slot")
		if err := a.firstBoot(ctx, cfg); err != nil {
			a.Log.Error("ignition", "err", err)
		}
		return m, cfg
	case !errors.Is(err, txn.ErrNoConfig):
		a.Log.Error("config slots unusable", "err", err)
	}

	res, err := source.Fetch(ctx, source.Options{Cmdline: cmdline.Ballast(), Root: a.Root, Log: a.Log.With("part", "config")})
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

// networkApplier lets transactions drive the network manager.
type networkApplier struct{ m *network.Manager }

func (n networkApplier) Apply(ctx context.Context, cfg *config.MachineConfig, source string) error {
	var (
		d   network.Desired
		err error
	)
	if cfg == nil {
		d, err = network.DefaultDesired()
	} else {
		d, err = network.FromConfig(cfg, source)
	}
	if err != nil {
		return err
	}
	n.m.SetDesired(d)
	if err := n.m.WaitSettled(ctx); err != nil {
		if st := n.m.Status(); st.LastError != "" {
			return errors.New(st.LastError)
		}
		return fmt.Errorf("network did not settle: %w", err)
	}
	return nil
}

// configStore finds the CONFIG-A/CONFIG-B partitions of an installed disk,
// or keeps the slots in tmpfs on a diskless node.
func (a *Agent) configStore() slot.Store {
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

// firstBoot applies the config's Ignition section once per boot of a fresh
// /var (every boot on a diskless node).
func (a *Agent) firstBoot(ctx context.Context, cfg *config.MachineConfig) error {
	ign, err := cfg.IgnitionConfig()
	if err != nil || ign == nil {
		return err
	}
	marker := filepath.Join(a.Root, "var/lib/ballast/ignition.applied")
	if _, err := os.Stat(marker); err == nil {
		a.Log.Info("ignition already applied", "marker", marker)
		return nil
	}
	if err := ignite.Apply(ctx, ign, ignite.Options{Root: a.Root}); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(marker), 0o755); err != nil {
		return err
	}
	a.Log.Info("ignition applied", "files", len(ign.Storage.Files), "directories", len(ign.Storage.Directories),
		"links", len(ign.Storage.Links), "users", len(ign.Passwd.Users))
	return os.WriteFile(marker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
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
	if err := m.WaitSettled(wctx); err != nil {
		st := m.Status()
		return fmt.Errorf("network not settled after %s (last error: %q, leases: %d)", timeout, st.LastError, len(st.Leases))
	}
	return nil
}
