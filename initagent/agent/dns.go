package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/renameio/v2"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/dns"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/runtime"
)

// Where the node's resolver listens: 127.0.0.53 for the host, and a
// node-local link address for pods (the address NodeLocal DNSCache uses), on
// a dummy link of its own so it exists whatever the NICs do.
var (
	localDNS    = netip.MustParseAddrPort("127.0.0.53:53")
	podDNS      = netip.MustParseAddrPort("169.254.20.10:53")
	podDNSLink  = "ballast-dns"
	podResolvTo = "run/ballast/pod-resolv.conf" // kubelet --resolv-conf
)

// resolver keeps /etc/resolv.conf and the local DNS server in step with
// the upstreams the network learns. Before the server runs, resolv.conf
// names the upstreams; once it runs, it names 127.0.0.53 and upstream
// changes go only into the server, so nothing that copied resolv.conf
// (containers) ever needs a restart.
type resolver struct {
	root string
	a    *Agent

	mu       sync.Mutex
	addrsMu  sync.Mutex // orders refreshNodeAddrs's read and set
	server   *dns.Server
	upstream []netip.Addr
	search   []string
}

// update is called after every network apply (network.Manager.OnDNS),
// including those a DHCP lease change causes: the upstreams and the node's
// own addresses may have changed.
func (r *resolver) update(servers []netip.Addr, search []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.upstream, r.search = servers, search
	r.apply()
	if r.server != nil {
		r.refreshNodeAddrs(r.server)
	}
}

// refreshNodeAddrs tells the server the node's current addresses: queries
// from them may recurse and are not rate limited, as loopback's.
func (r *resolver) refreshNodeAddrs(srv *dns.Server) {
	r.addrsMu.Lock()
	defer r.addrsMu.Unlock()
	addrs, err := dns.HostAddrs()
	if err != nil {
		r.a.Log.Error("dns: node addresses", "err", err)
		return
	}
	srv.SetNodeAddrs(addrs)
}

// watchAddrs refreshes the node's addresses in the server whenever the
// kernel adds or removes one, including those no network apply makes (SLAAC,
// VIPs, CNI bridges); update refreshes them after every apply as well.
func (r *resolver) watchAddrs(ctx context.Context, srv *dns.Server) {
	ch := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) { r.a.Log.Debug("dns: address updates", "err", err) }})
	if err != nil {
		r.a.Log.Error("dns: cannot watch node addresses; refreshed after network applies only", "err", err)
		return
	}
	defer func() {
		close(done)
		go func() {
			for range ch { // until the subscription's reader has gone
			}
		}()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ch:
			if !ok {
				r.a.Log.Error("dns: node address updates ended; refreshed after network applies only")
				return
			}
			// One refresh for a burst of changes.
			for more := true; more; {
				select {
				case _, more = <-ch:
				default:
					more = false
				}
			}
			r.refreshNodeAddrs(srv)
		}
	}
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
	listen := []string{localDNS.String()}
	allowed := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	if err := r.a.needLinkKinds(ctx, []string{config.TypeDummy}); err != nil {
		r.a.Log.Warn("dummy links unavailable", "err", err)
	}
	if err := ensurePodDNSLink(); err != nil {
		r.a.Log.Error("pod dns address; pods get no node-local resolver", "err", err)
	} else {
		listen = append(listen, podDNS.String())
		allowed = append(allowed, netip.PrefixFrom(podDNS.Addr(), 32))
		allowed = append(allowed, config.Prefixes(cfg.Cluster.PodCIDRs, config.DefaultPodCIDR)...)
		allowed = append(allowed, config.Prefixes(cfg.Cluster.ServiceCIDRs, config.DefaultServiceCIDR)...)
		search := cfg.Network.DNS.Search
		if content, err := dns.PodResolvConf(podDNS.Addr(), search); err != nil {
			r.a.Log.Error("pod resolv.conf", "err", err)
		} else if err := os.MkdirAll(filepath.Dir(filepath.Join(r.root, podResolvTo)), 0o755); err == nil {
			if err := renameio.WriteFile(filepath.Join(r.root, podResolvTo), content, 0o644); err != nil {
				r.a.Log.Error("pod resolv.conf", "err", err)
			}
		}
	}
	// The node's own addresses are never rate limited and may recurse;
	// update and watchAddrs keep them current.
	own, err := dns.HostAddrs()
	if err != nil {
		r.a.Log.Error("dns: node addresses", "err", err)
	}
	own = append(own, nodeAddrs...)
	stubs := clusterDNSStubs(cfg)
	srv, err := dns.New(dns.Config{Listen: listen, AllowedNets: allowed, NodeAddrs: own, Records: rec, Stubs: stubs, Log: r.a.Log.With("part", "dns")})
	if err != nil {
		r.a.Log.Error("local dns", "err", err)
		return
	}
	r.a.sup.Start(ctx, pid1.Daemon{Name: "dns", Run: func(ctx context.Context) error {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go r.watchAddrs(wctx, srv)
		return srv.Run(ctx)
	}})
	r.mu.Lock()
	r.server = srv
	r.apply()
	r.mu.Unlock()
	var stubZones []string
	for _, st := range stubs {
		stubZones = append(stubZones, st.Zone+"→"+st.Servers[0].String())
	}
	r.a.Log.Info("local dns", "listen", strings.Join(listen, ","), "zone", cfg.Cluster.Name+"."+cfg.Cluster.Domain, "stubs", strings.Join(stubZones, ","))
}

// clusterDNSStubs sends the in-cluster domain (cluster.local: Service and
// pod names, and the NXDOMAIN for every other name in it that the pods'
// search list produces) and the reverse names of the Service addresses to
// the cluster's DNS Service (CoreDNS, which kubeadm's addon phase deploys
// at the tenth address of the first service CIDR), so the node and pods
// resolve them, PTR included. Only those zones go there: the node's own
// zone is answered first and never depends on it.
func clusterDNSStubs(cfg *config.MachineConfig) []dns.Stub {
	svcs := config.Prefixes(cfg.Cluster.ServiceCIDRs, config.DefaultServiceCIDR)
	ip := svcs[0].Addr()
	for range 10 {
		ip = ip.Next()
	}
	if !svcs[0].Contains(ip) {
		return nil
	}
	server := []netip.AddrPort{netip.AddrPortFrom(ip, 53)}
	domain := runtime.DefaultDNSDomain
	stubs := []dns.Stub{{Zone: domain, Servers: server}}
	for _, p := range svcs {
		zones, err := dns.ReverseZones(p)
		if err != nil {
			continue // only for an invalid prefix, which validation refuses
		}
		for _, z := range zones {
			stubs = append(stubs, dns.Stub{Zone: z, Servers: server})
		}
	}
	return stubs
}

// ensurePodDNSLink creates the dummy link holding the pods' resolver
// address. Where the kernel has no dummy links (a container node on a host
// without the module) the address goes on loopback: the kernel delivers to
// a local address whichever link holds it.
func ensurePodDNSLink() error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(podDNSLink)
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = podDNSLink
		err := h.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
		switch {
		case errors.Is(err, unix.EOPNOTSUPP):
			if link, err = h.LinkByName("lo"); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("create %s: %w", podDNSLink, err)
		default:
			if link, err = h.LinkByName(podDNSLink); err != nil {
				return err
			}
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: podDNS.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", podDNS.Addr(), link.Attrs().Name, err)
	}
	return h.LinkSetUp(link)
}

// podDNSServing reports whether pods can use the node-local resolver.
func (r *resolver) podDNSServing() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, err := os.Stat(filepath.Join(r.root, podResolvTo))
	return r.server != nil && err == nil
}

// status is the local DNS server's status, or nil before it runs.
func (r *resolver) status() any {
	r.mu.Lock()
	srv := r.server
	r.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Status()
}
