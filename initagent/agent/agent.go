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
	"github.com/ballast-os/ballast/initagent/boottime"
	"github.com/ballast-os/ballast/initagent/coldplug"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/logring"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
	"github.com/ballast-os/ballast/initagent/podroutes"
	"github.com/ballast-os/ballast/initagent/runtime"
	"github.com/ballast-os/ballast/initagent/sysslot"
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
	// Container: the agent runs as a container node (boot.InContainer) on
	// the host's kernel; see container.go for what that changes.
	Container bool

	sup       pid1.Supervisor
	txn       *txn.Manager
	nodeIP    nodeIPState
	resolver  *resolver
	api       apiState
	ha        haServices
	reaper    *pid1.Reaper  // external programs are started through it
	kube      *runtime.Kube // nil unless the system image carries Kubernetes
	started   time.Time     // when Run began
	timeline  *boottime.Timeline
	podRoutes *podroutes.Daemon // routes to the other nodes' pod CIDRs; nil without Kubernetes
	system    *sysslot.Manager  // the system slots this boot came from; nil on netboot and live media
	bless     *blessing         // judges a boot of a system slot that is not good yet; nil otherwise
	hardware  *coldplug.Loader  // loads drivers for the devices present and hot-plugged; nil without drivers
	cpu       *boot.CPU         // processors and their microcode revision; nil when unreadable
	modules   *boot.Modules     // the image's boot modules, loading in the background; nil in a container
	// localAPIServer: the API proxy fronts this control-plane node's own kube-apiserver too.
	localAPIServer bool
	// discovered are the apiservers registered in the cluster (runtime.Kube.APIServers).
	apiServersMu sync.Mutex
	discovered   []string

	outputsMu sync.Mutex
	outputs   map[string]io.Writer // per external service: log ring + rotated file
}

// multiConsole is a Console that also reaches the node's other consoles
// (console.Consoles).
type multiConsole interface {
	Discover(root string) []string
	Important() io.Writer
}

// importantConsole is where lines every console must show go.
func (a *Agent) importantConsole() io.Writer {
	if c, ok := a.Console.(multiConsole); ok {
		return c.Important()
	}
	return a.Console
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
	a.started = bootStart
	a.timeline = boottime.New(!a.Container)

	if err := boot.MountEssential(a.Root, a.Log); err != nil {
		return pid1.Request{}, err
	}
	// Orphans can appear from here on; reap them for the life of the agent.
	a.reaper = &pid1.Reaper{Log: a.Log}
	go a.reaper.Run(ctx)

	cmdline, err := a.readCmdline()
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
	if err != nil && !a.Container {
		// Without it there is no module list, but the node can still come up on built-in drivers.
		a.Log.Error("no image description, skipping module loading", "err", err)
	}
	if info == nil {
		info = &boot.ImageInfo{}
	}
	driversIn := a.startDrivers(ctx, cmdline, info)
	a.readCPU() // meanwhile
	if err := driversIn(); err != nil {
		return pid1.Request{}, err
	}
	// After coldplug: a console can be a driver module (virtio console).
	if c, ok := a.Console.(multiConsole); ok && !a.Container {
		a.Log.Info("consoles", "primary", "/dev/console", "others", c.Discover(a.Root))
	}

	// Power requests are served from here on, also while the node comes up
	// (a boot on trial that hangs reboots through them, see blessing).
	requests := make(chan pid1.Request, 1)
	go pid1.WatchSignals(ctx, requests)
	if a.Container {
		a.Log.Info("container node: no power button, poweroff is SIGTERM to the container (runc kill)")
	} else {
		go func() {
			if err := a.needModules(ctx, "power button", "button", "evdev"); err != nil {
				a.Log.Warn("power button modules", "err", err)
			}
			pid1.WatchPowerButton(ctx, a.Log, requests)
		}()
	}

	if err := a.prepareSystem(ctx, cmdline); err != nil {
		a.Log.Error("system slots", "err", err)
	}
	if !a.Container && a.systemPayload() {
		go a.prefetchPayload(ctx)
	}
	a.armBlessing(ctx, cmdline, requests)

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

	up := make(chan struct{})
	go func() {
		defer close(up)
		a.bringUp(ctx, cmdline, info, hostname, bootStart, requests)
	}()
	var req pid1.Request
wait:
	for {
		select {
		case <-up:
			up = nil
			if shutdownAfterReady != "" {
				req = pid1.Request{Action: shutdownAfterReady, Reason: "ballast.shutdown on the kernel cmdline"}
				break wait
			}
		case req = <-requests:
			break wait
		case <-ctx.Done():
			req = pid1.Request{Action: pid1.Poweroff, Reason: "context cancelled"}
			break wait
		}
	}
	if up != nil {
		a.Log.Warn("power request before the node was ready", "action", req.Action)
	}
	a.Log.Info("shutting down", "action", req.Action, "reason", req.Reason)
	if stuck := a.sup.StopAll(a.StopTimeout); len(stuck) > 0 {
		a.Log.Error("daemons did not stop", "daemons", fmt.Sprint(stuck))
	}
	return req, nil
}

// bringUp brings the network, the services and the API up, reports
// ready and starts judging the boot (afterReady).
func (a *Agent) bringUp(ctx context.Context, cmdline boot.Cmdline, info *boot.ImageInfo, hostname string, bootStart time.Time, requests chan<- pid1.Request) {
	a.resolver = &resolver{root: a.Root, a: a}
	since := time.Now()
	net, cfg := a.startNetwork(ctx, cmdline, hostname)
	settled := a.waitNetwork(ctx, net, cmdline, a.Log)
	if settled != nil {
		a.Log.Error("network degraded", "err", settled)
	} else {
		a.timeline.Mark(boottime.NetworkCommitted)
	}
	bn := bootNetwork{Running: cfg, Records: bootRecords(a.txn.History(), since), Settled: settled}
	if cfg == nil {
		_, _, bn.Slots = slot.Active(a.txn.Store)
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
		a.localAPIServer = true
		cfg = withLocalAPIServer(cfg, nodeAddrs)
	}
	a.startServices(ctx, cfg, role)
	a.timeline.Mark(boottime.ServicesStarted)
	if kube {
		a.startKube(ctx, cfg, role, hostname, nodeAddrs)
	} else if cfg != nil {
		a.Log.Info("no Kubernetes in the system image: node runs networking only")
	}
	a.startAPI(ctx, hostname, net, cfg, cmdline, requests)
	st := net.Status()
	readiness.Announce(a.importantConsole(), readiness.Line{Hostname: hostname, Recipe: info.Recipe, Role: info.Role,
		Uptime: time.Since(bootStart), Addresses: st.Addresses})
	a.timeline.Mark(boottime.NodeAPIServing)
	a.Log.Info("ready", "hostname", hostname, "recipe", info.Recipe, "boot", time.Since(bootStart).Round(time.Millisecond))
	a.afterReady(ctx, cmdline, bn)
}

// startDrivers starts loading the drivers for the hardware present and the
// image's boot modules; the returned func waits until boot can go on.
//
// The drivers and the boot modules this boot mounts with load side by
// side: a driver's probe mostly waits for its device, and the kernel makes
// a module whose dependency is still loading wait for it (the two may also
// load the same module: one of them gets EEXIST). The other boot modules
// load once the drivers are in, while boot goes on: what needs one waits
// for it.
func (a *Agent) startDrivers(ctx context.Context, cmdline boot.Cmdline, info *boot.ImageInfo) (wait func() error) {
	switch {
	case a.Container:
		a.Log.Info("container node: no modules, the host's kernel provides them", "modules", len(info.Modules))
		return func() error { return nil }
	case len(info.Drivers) == 0:
		// No coldplug: the image's modules are its drivers too (a recipe
		// with a fixed module list), all in before boot goes on.
		a.startModules(ctx, info, boot.ModuleOrder{})
		return func() error { return a.needAllModules(ctx, "drivers") }
	}
	coldplugged := a.startColdplug(ctx, info)
	afterColdplug := make(chan struct{})
	a.startModules(ctx, info, boot.ModuleOrder{First: a.mountsFirst(cmdline), Later: afterColdplug})
	return func() error {
		coldplugged()
		close(afterColdplug)
		return nil
	}
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
// the first decision exists): sticky while the chosen address stays. What
// follows the committed config instead is taken in configCommitted.
func (a *Agent) networkApplied() {
	if a.nodeIP.get() == nil {
		return
	}
	if _, err := a.decideNodeIP(a.currentConfig()); err != nil {
		a.Log.Error("nodeip", "err", err)
	}
}

// configCommitted takes from the committed config what applies without a
// network change: the node API's TLS settings (certificates, client CAs,
// CRL, api.listen; none when api.tls was removed) and the API proxy's
// backends. It runs after every transaction the API asked for, so a change
// counts once it is committed or confirmed, never while it is tried.
func (a *Agent) configCommitted() {
	if a.txn == nil {
		return
	}
	_, data, err := slot.Active(a.txn.Store)
	if err != nil {
		a.Log.Error("committed config unreadable: the node API's TLS settings and the proxy's backends stay", "err", err)
		return
	}
	cfg, _, err := config.Parse(data)
	if err != nil {
		a.Log.Error("committed config invalid: the node API's TLS settings and the proxy's backends stay", "err", err)
		return
	}
	a.configureTLS(cfg)
	a.setProxyBackends(cfg)
}
