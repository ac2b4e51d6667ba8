// Package agent is initagent's boot sequence: it brings the node from the
// kernel handing over to a ready state, runs the daemons, and returns when
// the machine should go down.
package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/logring"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
	"github.com/ballast-os/ballast/initagent/runtime"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// Agent runs one boot of a node.
type Agent struct {
	Log     *slog.Logger
	Console io.Writer // gets the readiness line
	// LogLevel, if set, is lowered to debug when the cmdline has ballast.debug.
	LogLevel *slog.LevelVar
	// Root is "/" on a node; tests may point it elsewhere.
	Root string
	// StopTimeout bounds how long each daemon may take to stop; zero means 10s.
	StopTimeout time.Duration
	// Logs keeps recent log lines for the API; nil means none are kept.
	Logs *logring.Ring

	sup      pid1.Supervisor
	txn      *txn.Manager
	nodeIP   nodeIPState
	resolver *resolver
	api      apiState
	ha       haServices
	reaper   *pid1.Reaper  // external programs are started through it
	kube     *runtime.Kube // nil unless the system image carries Kubernetes

	outputsMu sync.Mutex
	outputs   map[string]io.Writer // per external service: log ring + rotated file
}

// Run boots the node and blocks until a power request arrives. It returns the
// request after stopping the daemons; an error means boot could not go on.
func (a *Agent) Run(ctx context.Context) (pid1.Request, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.Root == "" {
		a.Root = "/"
	}
	if a.StopTimeout == 0 {
		a.StopTimeout = 10 * time.Second
	}
	a.sup.Log = a.Log
	bootStart := time.Now()

	if err := boot.MountEssential(a.Root, a.Log); err != nil {
		return pid1.Request{}, err
	}
	// Orphans can appear from here on; reap them for the life of the agent.
	a.reaper = &pid1.Reaper{Log: a.Log}
	go a.reaper.Run(ctx)

	cmdline, err := boot.ReadCmdline()
	if err != nil {
		return pid1.Request{}, err
	}
	if _, debug := cmdline.Get("ballast.debug"); debug && a.LogLevel != nil {
		a.LogLevel.Set(slog.LevelDebug)
	}
	a.Log.Info("kernel cmdline", "ballast", cmdline.Ballast())
	var shutdownAfterReady pid1.Action
	if v, ok := cmdline.Get("ballast.shutdown"); ok {
		if shutdownAfterReady, err = pid1.ParseAction(v); err != nil {
			a.Log.Error("ignoring ballast.shutdown", "err", err)
		}
	}

	info, err := boot.ReadImageInfo(filepath.Join(a.Root, boot.ImageInfoPath))
	if err != nil {
		// Without it there is no module list, but the node can still come up on built-in drivers.
		a.Log.Error("no image description, skipping module loading", "err", err)
		info = &boot.ImageInfo{}
	} else {
		res := boot.LoadModules(filepath.Join(a.Root, "lib/modules", info.KernelRelease), info.Modules, a.Log)
		a.Log.Info("kernel modules", "loaded", res.Loaded, "already", res.AlreadyLoaded,
			"failed", len(res.Failed), "took", res.Duration.Round(time.Millisecond))
	}

	if err := a.prepareSystem(ctx, cmdline); err != nil {
		a.Log.Error("system slots", "err", err)
	}

	hostname := info.Hostname
	if v, ok := cmdline.Get("ballast.hostname"); ok && v != "" {
		hostname = v
	}
	if hostname == "" {
		hostname = "ballast"
	}
	if err := boot.SetHostname(hostname); err != nil {
		a.Log.Error("hostname", "err", err)
	}

	if err := boot.PromoteSecondaries(a.Root); err != nil {
		a.Log.Error("sysctl", "err", err)
	}
	if err := boot.LoopbackUp(); err != nil {
		a.Log.Error("loopback", "err", err)
	}
	requests := make(chan pid1.Request, 1)
	go pid1.WatchSignals(ctx, requests)
	go pid1.WatchPowerButton(ctx, a.Log, requests)

	a.resolver = &resolver{root: a.Root, a: a}
	net, cfg := a.startNetwork(ctx, cmdline, hostname)
	if err := a.waitNetwork(ctx, net, cmdline, a.Log); err != nil {
		a.Log.Error("network degraded", "err", err)
	}
	d, err := a.decideNodeIP(cfg)
	if err != nil {
		a.Log.Error("nodeip", "err", err)
	}
	var nodeAddrs []netip.Addr
	if d != nil {
		nodeAddrs = d.Addrs()
	}
	a.resolver.startDNS(ctx, cfg, hostname, nodeAddrs)

	role := info.Role
	if cfg != nil && cfg.Cluster.Role != "" {
		role = cfg.Cluster.Role
	}
	kube := cfg != nil && a.systemPayload()
	if kube && role == "control-plane" {
		cfg = withLocalAPIServer(cfg, nodeAddrs)
	}
	a.startServices(ctx, cfg, role)
	if kube {
		a.startKube(ctx, cfg, role, hostname, nodeAddrs)
	} else if cfg != nil {
		a.Log.Info("no Kubernetes in the system image: node runs networking only")
	}
	a.startAPI(ctx, hostname, net, cfg, cmdline, requests)
	st := net.Status()
	readiness.Announce(a.Console, readiness.Line{Hostname: hostname, Recipe: info.Recipe, Role: info.Role,
		Uptime: time.Since(bootStart), Addresses: st.Addresses})
	a.Log.Info("ready", "hostname", hostname, "recipe", info.Recipe, "boot", time.Since(bootStart).Round(time.Millisecond))
	a.afterReady(ctx, cmdline)

	var req pid1.Request
	if shutdownAfterReady != "" {
		req = pid1.Request{Action: shutdownAfterReady, Reason: "ballast.shutdown on the kernel cmdline"}
	} else {
		select {
		case req = <-requests:
		case <-ctx.Done():
			req = pid1.Request{Action: pid1.Poweroff, Reason: "context cancelled"}
		}
	}
	a.Log.Info("shutting down", "action", req.Action, "reason", req.Reason)
	if stuck := a.sup.StopAll(a.StopTimeout); len(stuck) > 0 {
		a.Log.Error("daemons did not stop", "daemons", fmt.Sprint(stuck))
	}
	return req, nil
}

// currentConfig is the config in the active slot, if any.
func (a *Agent) currentConfig() *config.MachineConfig {
	if a.txn == nil {
		return nil
	}
	_, data, err := slot.Active(a.txn.Store)
	if err != nil {
		return nil
	}
	cfg, _, err := config.Parse(data)
	if err != nil {
		return nil
	}
	return cfg
}

// networkApplied decides the nodeIP again after the network changed (once
// the first decision exists): sticky while the chosen address stays.
func (a *Agent) networkApplied() {
	a.reloadAPI()
	if cfg := a.currentConfig(); cfg != nil && a.ha.proxy != nil {
		// Backends follow the committed config; learned ones are added by the runtime.
		a.ha.proxy.SetBackends(cfg.Cluster.APIServers)
	}
	if a.nodeIP.get() == nil {
		return
	}
	if _, err := a.decideNodeIP(a.currentConfig()); err != nil {
		a.Log.Error("nodeip", "err", err)
	}
}
