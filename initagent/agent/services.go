package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/apiproxy"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/vip"
)

const (
	// DefaultAPIProxyPort is the node-local frontend kubelet and static pods use.
	DefaultAPIProxyPort = 7445
	// APIServerPort is where the API VIP is served (by the proxy) and
	// where kube-apiservers listen on their node addresses.
	APIServerPort = 6443
	// apiProxyTrack is the VIP track fed by the proxy's health.
	apiProxyTrack = "apiproxy"
)

// haServices are the API proxy and the VIP speaker, built from one config.
type haServices struct {
	proxy   *apiproxy.Proxy
	speaker *vip.Speaker
}

// apiProxyConfig derives the proxy's settings: it runs wherever the config
// names apiServers (unless services.apiProxy is false), with a frontend on
// 127.0.0.1 for the node and, on control-plane nodes, one per API VIP.
func apiProxyConfig(cfg *config.MachineConfig, role string) (*apiproxy.Config, bool) {
	c := cfg.Cluster
	if len(c.APIServers) == 0 || (cfg.Services.APIProxy != nil && !*cfg.Services.APIProxy) {
		return nil, false
	}
	port := c.APIProxy.Port
	if port == 0 {
		port = DefaultAPIProxyPort
	}
	pc := &apiproxy.Config{
		Frontends:  []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(port))},
		Backends:   append([]string(nil), c.APIServers...),
		Balance:    c.APIProxy.Balance,
		PinnedSPKI: c.APIProxy.PinnedSPKI,
		// Until the cluster CA is known (kubelet bootstrap), checks without
		// pins accept any certificate: they only choose among backends; the
		// traffic itself stays end-to-end TLS between client and apiserver.
		InsecureUntilCA: len(c.APIProxy.PinnedSPKI) == 0,
	}
	if c.APIProxy.CheckIntervalMs > 0 {
		pc.CheckInterval = time.Duration(c.APIProxy.CheckIntervalMs) * time.Millisecond
	}
	if role == "control-plane" {
		for _, v := range c.APIVIPs {
			pc.Frontends = append(pc.Frontends, net.JoinHostPort(v, strconv.Itoa(APIServerPort)))
		}
	}
	return pc, true
}

// vipConfig derives the speaker's routers: on control-plane nodes (unless
// services.vip is false) one per VIP family for the API VIPs, tracking the
// proxy when it runs, and one per family for the ingress VIPs. ifaceFor
// names the interface whose subnet holds an address.
func vipConfig(cfg *config.MachineConfig, role string, proxy bool, ifaceFor func(netip.Addr) (string, error)) (*vip.Config, error) {
	c := cfg.Cluster
	on := role == "control-plane"
	if cfg.Services.VIP != nil {
		on = *cfg.Services.VIP
	}
	if !on || len(c.APIVIPs)+len(c.IngressVIPs) == 0 {
		return nil, nil
	}
	vc := &vip.Config{Cluster: c.Name}
	var peers []netip.Addr
	for _, p := range c.Peers {
		if a, err := netip.ParseAddr(p); err == nil {
			peers = append(peers, a.Unmap())
		}
	}
	for _, set := range []struct {
		name  string
		vips  []string
		vrid  int
		track *vip.TrackConfig
	}{
		{"api", c.APIVIPs, c.VIP.APIVRID, apiTrack(proxy)},
		{"ingress", c.IngressVIPs, c.VIP.IngressVRID, ingressTrack(c.VIP.IngressCheck)},
	} {
		byFamily := map[bool][]netip.Addr{}
		for _, s := range set.vips {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue // refused by validation already
			}
			a = a.Unmap()
			byFamily[a.Is6()] = append(byFamily[a.Is6()], a)
		}
		for _, v6 := range []bool{false, true} {
			addrs := byFamily[v6]
			if len(addrs) == 0 {
				continue
			}
			name := set.name
			if v6 && len(byFamily[false]) > 0 {
				name += "-v6"
			}
			iface := c.VIP.Interface
			if iface == "" {
				var err error
				if iface, err = ifaceFor(addrs[0]); err != nil {
					return nil, fmt.Errorf("cluster.%sVIPs: %s: %w (set cluster.vip.interface)", set.name, addrs[0], err)
				}
			}
			rc := vip.RouterConfig{Name: name, Interface: iface, VRID: uint8(set.vrid), Priority: uint8(c.VIP.Priority),
				Preempt: c.VIP.Preempt, PreemptDelay: time.Duration(c.VIP.PreemptDelaySeconds) * time.Second,
				AdvertInterval: time.Duration(c.VIP.AdvertIntervalMs) * time.Millisecond}
			for _, a := range addrs {
				rc.VIPs = append(rc.VIPs, netip.PrefixFrom(a, a.BitLen()))
			}
			for _, p := range peers {
				if p.Is6() == v6 {
					rc.Peers = append(rc.Peers, p)
				}
			}
			if set.track != nil {
				rc.Tracks = []vip.TrackConfig{*set.track}
			}
			vc.Routers = append(vc.Routers, rc)
		}
	}
	return vc, nil
}

// apiTrack makes a node whose proxy reaches no apiserver yield the API VIP
// to one whose proxy does. It does not give the VIP up: when every node's
// proxy sees no apiserver at once (all of them slow to answer /readyz on
// an overloaded cluster) the VIP stays where it is, and clients still reach
// a slow apiserver instead of no route to host.
func apiTrack(proxy bool) *vip.TrackConfig {
	if !proxy {
		return nil
	}
	return &vip.TrackConfig{Name: apiProxyTrack, Weight: apiTrackWeight}
}

// apiTrackWeight takes any priority (at most 254) down to vip.YieldPriority.
const apiTrackWeight = 254 - vip.YieldPriority

func ingressTrack(hc config.HealthCheck) *vip.TrackConfig {
	if hc.HTTP == "" && hc.TCP == "" {
		return nil
	}
	return &vip.TrackConfig{Name: "ingress-check", HTTP: hc.HTTP, TCP: hc.TCP, Weight: uint8(hc.Weight), Fault: hc.Fault}
}

// interfaceFor returns the interface whose connected route covers a.
func interfaceFor(a netip.Addr) (string, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return "", err
	}
	defer h.Close()
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	routes, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return "", err
	}
	best, bestBits := -1, -1
	for _, r := range routes {
		if r.Dst == nil || r.Gw != nil || r.Scope != netlink.SCOPE_LINK {
			continue
		}
		p, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		bits, _ := r.Dst.Mask.Size()
		if netip.PrefixFrom(p.Unmap(), bits).Contains(a) && bits > bestBits {
			best, bestBits = r.LinkIndex, bits
		}
	}
	if best < 0 {
		return "", fmt.Errorf("no interface has a subnet holding it")
	}
	l, err := h.LinkByIndex(best)
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}

// startServices starts the API proxy and the VIP speaker the config asks
// for, and feeds the proxy's health into the API VIP's track.
func (a *Agent) startServices(ctx context.Context, cfg *config.MachineConfig, role string) {
	if cfg == nil {
		return
	}
	if cfg.Cluster.Role != "" {
		role = cfg.Cluster.Role
	}
	var hs haServices
	if pc, ok := apiProxyConfig(cfg, role); ok {
		pc.Logger = a.Log.With("part", "apiproxy")
		p, err := apiproxy.New(*pc)
		if err != nil {
			a.Log.Error("api proxy", "err", err)
		} else {
			hs.proxy = p
			a.sup.Start(ctx, pid1.Daemon{Name: "apiproxy", Run: p.Run})
		}
	}
	vc, err := vipConfig(cfg, role, hs.proxy != nil, interfaceFor)
	if err != nil {
		a.Log.Error("vip speaker", "err", err)
	} else if vc != nil {
		vc.Logger = a.Log.With("part", "vip")
		s, err := vip.New(*vc)
		if err != nil {
			a.Log.Error("vip speaker", "err", err)
		} else {
			hs.speaker = s
			if hs.proxy != nil {
				linkHealth(hs.proxy, s, a.Log)
			}
			a.sup.Start(ctx, pid1.Daemon{Name: "vip", Run: s.Run})
		}
	}
	a.ha = hs
}

// healthConfirm is how long the proxy must stay without a healthy backend
// before the API VIP yields: one more health check interval, so a
// moment of CPU starvation that times out every check does not move the
// VIP, while a real outage still moves it within seconds.
const healthConfirm = time.Second

// linkHealth feeds the proxy's "≥ 1 healthy backend" into the API VIP's
// track: the speaker only ever reacts to that aggregate, so a backend is
// always dropped by the proxy before the VIP could move because of it.
// Recovery is passed on at once; loss only once confirmed.
func linkHealth(p *apiproxy.Proxy, s *vip.Speaker, log *slog.Logger) {
	var mu sync.Mutex
	var pending *time.Timer
	set := func(healthy bool) {
		if err := s.SetTrack(apiProxyTrack, healthy); err != nil {
			log.Error("vip track", "err", err)
		}
	}
	p.OnHealth(func(healthy bool) {
		mu.Lock()
		defer mu.Unlock()
		if pending != nil {
			pending.Stop()
			pending = nil
		}
		if healthy {
			set(true)
			return
		}
		pending = time.AfterFunc(healthConfirm, func() {
			if !p.Healthy() {
				log.Warn("api proxy has no healthy apiserver: the API VIP yields to a node whose proxy has one")
				set(false)
			}
		})
	})
}

// haSections adds the proxy's and speaker's status and metrics to the API.
func (a *Agent) haSections(sections map[string]func() any) []func(io.Writer) {
	var metrics []func(io.Writer)
	if p := a.ha.proxy; p != nil {
		sections["apiProxy"] = func() any { return p.Status() }
		metrics = append(metrics, func(w io.Writer) { _ = p.WriteMetrics(w) })
	}
	if s := a.ha.speaker; s != nil {
		sections["vip"] = func() any { return s.Status() }
	}
	return metrics
}
