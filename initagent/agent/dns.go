package agent

import (
	"context"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/google/renameio/v2"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/dns"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/pid1"
)

// LocalDNS is where the node's own resolver listens.
var localDNS = netip.MustParseAddrPort("127.0.0.53:53")

// resolver keeps /etc/resolv.conf and the local DNS server in step with
// the upstreams the network learns. Before the server runs, resolv.conf
// names the upstreams; once it runs, it names 127.0.0.53 and upstream
// changes go only into the server, so nothing that copied resolv.conf
// (containers) ever needs a restart.
type resolver struct {
	root string
	a    *Agent

	mu       sync.Mutex
	server   *dns.Server
	upstream []netip.Addr
	search   []string
}

func (r *resolver) update(servers []netip.Addr, search []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.upstream, r.search = servers, search
	r.apply()
}

func (r *resolver) apply() {
	content := network.ResolvConf(r.upstream, r.search)
	if r.server != nil {
		ups := make([]netip.AddrPort, 0, len(r.upstream))
		for _, s := range r.upstream {
			ups = append(ups, netip.AddrPortFrom(s, 53))
		}
		if err := r.server.SetUpstreams(ups); err != nil {
			r.a.Log.Error("dns upstreams", "err", err)
		}
		var err error
		if content, err = dns.HostResolvConf(r.search); err != nil {
			r.a.Log.Error("resolv.conf", "err", err)
			return
		}
	}
	if err := renameio.WriteFile(filepath.Join(r.root, "etc/resolv.conf"), content, 0o644); err != nil {
		r.a.Log.Error("write resolv.conf", "err", err)
	}
}

// startDNS runs the local DNS server when the config names a cluster (it is
// authoritative for <cluster>.<domain>) and the services section does not
// turn it off.
func (r *resolver) startDNS(ctx context.Context, cfg *config.MachineConfig, hostname string, nodeAddrs []netip.Addr) {
	if cfg == nil || cfg.Cluster.Name == "" || cfg.Cluster.Domain == "" {
		return
	}
	if cfg.Services.DNS != nil && !*cfg.Services.DNS {
		return
	}
	rec := dns.Records{Cluster: cfg.Cluster.Name, Domain: cfg.Cluster.Domain,
		Nodes: map[string][]netip.Addr{hostname: nodeAddrs}}
	for _, v := range cfg.Cluster.APIVIPs {
		if a, err := netip.ParseAddr(v); err == nil {
			rec.APIVIPs = append(rec.APIVIPs, a)
		}
	}
	for _, v := range cfg.Cluster.IngressVIPs {
		if a, err := netip.ParseAddr(v); err == nil {
			rec.IngressVIPs = append(rec.IngressVIPs, a)
		}
	}
	srv, err := dns.New(dns.Config{Listen: []string{localDNS.String()}, Records: rec, Log: r.a.Log.With("part", "dns")})
	if err != nil {
		r.a.Log.Error("local dns", "err", err)
		return
	}
	r.a.sup.Start(ctx, pid1.Daemon{Name: "dns", Run: srv.Run})
	r.mu.Lock()
	r.server = srv
	r.apply()
	r.mu.Unlock()
	r.a.Log.Info("local dns", "listen", localDNS, "zone", cfg.Cluster.Name+"."+cfg.Cluster.Domain)
}
