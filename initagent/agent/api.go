package agent

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/disks"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/nodeip"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/sysslot"
	"github.com/ballast-os/ballast/initagent/txn"
)

// ConsoleAccessParam on the kernel cmdline, set to "rw", lets the local
// socket and the console port change the node; by default they only read.
// Whoever sets the cmdline owns the machine anyway (labs, tests, rescue).
const ConsoleAccessParam = "ballast.api.console"

// apiState is the node API: the server and the mutual-TLS endpoint whose
// settings follow the committed config's api section.
type apiState struct {
	mu      sync.Mutex
	ctx     context.Context
	srv     *api.Server
	tls     *api.TLSEndpoint
	started bool // the endpoint's daemon runs (it stays, idle while api.tls is absent)
	enabled bool // mutual TLS is on
	// listen opens the mTLS listener; nil: net.Listen (tests pass theirs).
	listen func(addr string) (net.Listener, error)
}

// committedTxn is the transaction manager as the API serves it: after
// every call that may have committed a config (apply, confirm, rollback),
// the agent takes the committed config's settings (configCommitted).
type committedTxn struct {
	*txn.Manager
	committed func()
}

func (c committedTxn) Apply(ctx context.Context, data []byte, o txn.Options) (txn.Record, error) {
	rec, err := c.Manager.Apply(ctx, data, o)
	if !o.DryRun {
		c.committed()
	}
	return rec, err
}

func (c committedTxn) Confirm(generation uint64) (txn.Record, error) {
	rec, err := c.Manager.Confirm(generation)
	c.committed()
	return rec, err
}

func (c committedTxn) Rollback(ctx context.Context) (txn.Record, error) {
	rec, err := c.Manager.Rollback(ctx)
	c.committed()
	return rec, err
}

// startAPI serves the local API on its unix socket, on the
// org.ballast.api.0 virtio-serial port when the hypervisor provides one,
// and with mutual TLS on the network when the config has api.tls.
func (a *Agent) startAPI(ctx context.Context, hostname string, net *network.Manager, cfg *config.MachineConfig,
	cmdline boot.Cmdline, requests chan<- pid1.Request) {
	srv := &api.Server{Log: a.Log.With("part", "api"), Txn: committedTxn{a.txn, a.configCommitted}, Hostname: hostname, Logs: a.Logs,
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
	if t := a.timeline; t != nil {
		srv.Sections["boot"] = func() any { return t.Marks() }
		srv.Metrics = append(srv.Metrics, t.WriteMetrics)
	}
	if k := a.kube; k != nil {
		srv.Sections["kubernetes"] = func() any { return k.Status() }
		srv.Cluster = ClusterCalls(k)
	}
	if d := a.podRoutes; d != nil {
		srv.Sections["podRoutes"] = func() any { return d.Status() }
	}
	if h := a.hardware; h != nil {
		srv.Sections["hardware"] = func() any { return h.Status() }
	}
	if c := a.cpu; c != nil {
		srv.Sections["cpu"] = func() any { return c }
	}
	if !a.Container {
		sys := filepath.Join(a.Root, "sys")
		srv.Sections["disks"] = func() any { return disks.List(sys) }
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
	a.api.tls = &api.TLSEndpoint{Server: srv, Listen: a.api.listen}
	a.api.mu.Unlock()
	a.configureTLS(cfg)
}

// configureTLS makes the mTLS endpoint follow cfg's api section: started the
// first time api.tls is there, new settings used from the next request on
// (connections of clients they refuse are closed), a new api.listen moved
// to, and mutual TLS stopped when api.tls is gone.
func (a *Agent) configureTLS(cfg *config.MachineConfig) {
	s := &a.api
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tls == nil {
		return
	}
	if cfg == nil || !cfg.API.Enabled() {
		if s.enabled {
			a.Log.Info("node api: api.tls removed from the committed config, mutual TLS stopped")
			s.tls.Set("", nil)
			s.enabled = false
		}
		return
	}
	conf, err := api.TLSConfig(cfg.API.TLS)
	if err != nil {
		a.Log.Error("node api: keeping the previous TLS settings", "err", err)
		return
	}
	s.tls.Set(cfg.API.Address(), conf)
	s.enabled = true
	if !s.started {
		s.started = true
		a.sup.Start(s.ctx, pid1.Daemon{Name: "api-tls", Run: s.tls.Run})
	}
}
