package agent

import (
	"context"
	"errors"
	"path/filepath"
	"sync"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/nodeip"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/sysslot"
)

// ConsoleAccessParam on the kernel cmdline, set to "rw", lets the local
// socket and the console port change the node; by default they only read.
// Whoever sets the cmdline owns the machine anyway (labs, tests, rescue).
const ConsoleAccessParam = "ballast.api.console"

// apiState is the node API: the server and, when api.tls is configured,
// the mutual-TLS listener whose settings follow the committed config.
type apiState struct {
	mu      sync.Mutex
	ctx     context.Context
	srv     *api.Server
	tls     api.TLSListener
	serving string // address the mTLS listener serves, "" before it starts
}

// startAPI serves the local API on its unix socket, on the
// org.ballast.api.0 virtio-serial port when the hypervisor provides one,
// and with mutual TLS on the network when the config has api.tls.
func (a *Agent) startAPI(ctx context.Context, hostname string, net *network.Manager, cfg *config.MachineConfig,
	cmdline boot.Cmdline, requests chan<- pid1.Request) {
	srv := &api.Server{Log: a.Log.With("part", "api"), Txn: a.txn, Hostname: hostname, Logs: a.Logs,
		NetworkStatus: func() any { return net.Status() },
		NodeIP:        func() *nodeip.Decision { return a.nodeIP.get() },
		Sections: map[string]func() any{
			"daemons": func() any { return a.sup.Status() },
		},
		Power: func(action, reason string) error {
			act, err := pid1.ParseAction(action)
			if err != nil {
				return err
			}
			select {
			case requests <- pid1.Request{Action: act, Reason: reason}:
				return nil
			default:
				return errors.New("a power request is already being handled")
			}
		},
	}
	srv.Metrics = a.haSections(srv.Sections)
	if k := a.kube; k != nil {
		srv.Sections["kubernetes"] = func() any { return k.Status() }
	}
	if a.resolver != nil {
		srv.Sections["dns"] = func() any { return a.resolver.status() }
	}
	if u := a.systemUpgrader(cmdline); u != nil {
		srv.Upgrade = u
		if st, ok := u.(interface{ Status() sysslot.Status }); ok {
			srv.Sections["system"] = func() any { return st.Status() }
		}
	}
	if v, _ := cmdline.Get(ConsoleAccessParam); v == "rw" {
		srv.ConsoleAccess = api.Full
	}
	sock := filepath.Join(a.Root, api.SocketPath)
	a.sup.Start(ctx, pid1.Daemon{Name: "api", Run: func(ctx context.Context) error { return srv.ServeLocal(ctx, sock) }})
	if dev := api.FindVirtioPort(a.Root, api.VirtioPortName); dev != "" {
		a.sup.Start(ctx, pid1.Daemon{Name: "api-vport", Run: func(ctx context.Context) error { return srv.ServePort(ctx, dev) }})
	}
	a.api.mu.Lock()
	a.api.ctx, a.api.srv = ctx, srv
	a.api.mu.Unlock()
	a.configureTLS(cfg)
}

// reloadAPI takes the API's TLS settings from the committed config.
func (a *Agent) reloadAPI() {
	if cfg := a.currentConfig(); cfg != nil {
		a.configureTLS(cfg)
	}
}

// configureTLS starts the mTLS listener the first time cfg has api.tls and
// swaps its certificates on later changes; new connections use them.
func (a *Agent) configureTLS(cfg *config.MachineConfig) {
	s := &a.api
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil || cfg == nil || !cfg.API.Enabled() {
		return
	}
	conf, err := api.TLSConfig(cfg.API.TLS)
	if err != nil {
		a.Log.Error("node api: keeping the previous TLS settings", "err", err)
		return
	}
	s.tls.Set(conf)
	addr := cfg.API.Address()
	switch {
	case s.serving == "":
		s.serving = addr
		a.sup.Start(s.ctx, pid1.Daemon{Name: "api-tls", Run: func(ctx context.Context) error { return s.srv.ServeTLS(ctx, addr, &s.tls) }})
	case s.serving != addr:
		a.Log.Warn("node api: api.listen changed; the new address is used after the next boot", "serving", s.serving, "configured", addr)
	}
}
