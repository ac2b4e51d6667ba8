package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/config/source"
	"github.com/ballast-os/ballast/initagent/ignite"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/pid1"
)

// defaultNetworkTimeout bounds how long boot waits for the network (and
// DHCP leases) before declaring itself ready anyway, degraded.
const defaultNetworkTimeout = 60 * time.Second

// startNetwork brings up DHCP on every NIC, then looks for the machine
// config; a valid one replaces the default. A missing, unreachable or invalid
// config leaves the default in place and is reported, never half-applied.
func (a *Agent) startNetwork(ctx context.Context, cmdline boot.Cmdline, hostname string) (*network.Manager, *config.MachineConfig) {
	m := &network.Manager{
		Log:      a.Log.With("part", "network"),
		Applier:  &netconf.Applier{Log: a.Log},
		LeaseDir: filepath.Join(a.Root, "var/lib/ballast/dhcp"),
		Hostname: hostname,
		OnDNS: func(servers []netip.Addr, search []string) {
			if err := renameio.WriteFile(filepath.Join(a.Root, "etc/resolv.conf"), network.ResolvConf(servers, search), 0o644); err != nil {
				a.Log.Error("write resolv.conf", "err", err)
			}
		},
	}
	a.sup.Start(ctx, pid1.Daemon{Name: "network", Run: m.Run})
	def, err := network.DefaultDesired()
	if err != nil {
		a.Log.Error("default network", "err", err)
	}
	m.SetDesired(def)

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
	desired, err := network.FromConfig(cfg, res.Source)
	if err != nil {
		a.Log.Error("machine config rejected, keeping DHCP on every NIC", "err", err)
		return m, nil
	}
	a.Log.Info("machine config accepted", "source", res.Source, "sha256", res.SHA256)
	m.SetDesired(desired)
	if err := a.firstBoot(ctx, cfg); err != nil {
		a.Log.Error("ignition", "err", err)
	}
	return m, cfg
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
