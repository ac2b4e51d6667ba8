package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/runtime"
	"github.com/ballast-os/ballast/initagent/sysslot"
)

// kubeLogDir keeps containerd's and kubelet's output, rotated.
const kubeLogDir = "var/log/ballast"

// systemPayload reports whether the mounted system image carries Kubernetes.
func (a *Agent) systemPayload() bool {
	_, _, ok := runtime.ReadPayload(filepath.Join(a.Root, sysslot.SystemMount))
	return ok
}

// withLocalAPIServer makes the API proxy of a control-plane node that runs
// the control plane front its own kube-apiserver too.
func withLocalAPIServer(cfg *config.MachineConfig, nodeAddrs []netip.Addr) *config.MachineConfig {
	if len(nodeAddrs) == 0 {
		return cfg
	}
	local := net.JoinHostPort(nodeAddrs[0].String(), strconv.Itoa(APIServerPort))
	if slices.Contains(cfg.Cluster.APIServers, local) {
		return cfg
	}
	c := *cfg
	c.Cluster.APIServers = append(append([]string(nil), cfg.Cluster.APIServers...), local)
	return &c
}

// startKube runs Kubernetes from the system image (see runtime.Kube).
func (a *Agent) startKube(ctx context.Context, cfg *config.MachineConfig, role, hostname string, nodeAddrs []netip.Addr) {
	// cluster.domain is the zone of the cluster's records (api.<name>.<domain>),
	// not the in-cluster DNS domain, which stays cluster.local.
	c := runtime.Cluster{Name: cfg.Cluster.Name}
	if cfg.Cluster.Name != "" && cfg.Cluster.Domain != "" {
		c.ExtraSANs = []string{"api." + cfg.Cluster.Name + "." + cfg.Cluster.Domain}
	}
	for _, v := range cfg.Cluster.APIVIPs {
		if ip, err := netip.ParseAddr(v); err == nil {
			c.APIVIPs = append(c.APIVIPs, ip.Unmap())
		}
	}
	c.PodCIDRs, c.ServiceCIDRs = config.Prefixes(cfg.Cluster.PodCIDRs, config.DefaultPodCIDR), config.Prefixes(cfg.Cluster.ServiceCIDRs, config.DefaultServiceCIDR)
	cc := cfg.Cluster
	c.CACert, c.CAKey = []byte(cc.CA.Certificate), []byte(cc.CA.Key)
	c.EtcdCACert, c.EtcdCAKey = []byte(cc.EtcdCA.Certificate), []byte(cc.EtcdCA.Key)
	c.FrontProxyCACert, c.FrontProxyCAKey = []byte(cc.FrontProxyCA.Certificate), []byte(cc.FrontProxyCA.Key)
	c.ServiceAccountKey, c.Token, c.APIServers = []byte(cc.ServiceAccountKey), cc.Token, cc.APIServers
	for _, p := range cc.Peers {
		if ip, err := netip.ParseAddr(p); err == nil {
			c.Peers = append(c.Peers, ip.Unmap())
		}
	}
	k := &runtime.Kube{
		Root: a.Root, System: filepath.Join(a.Root, sysslot.SystemMount), Role: role, NodeName: hostname,
		NodeIPs: nodeAddrs, Cluster: c, KubeletExtraArgs: cfg.Kubelet.ExtraArgs,
		Log: a.Log.With("part", "kube"), Reaper: a.reaper, Since: a.bootTime(), Timeline: a.timeline,
		StartDaemon: func(d pid1.Daemon) { a.sup.Start(ctx, d) },
		Output:      a.serviceOutput,
	}
	if a.ha.proxy != nil {
		// The cluster CA from the config: the health checks verify the apiservers from the start.
		if pool := x509.NewCertPool(); pool.AppendCertsFromPEM(c.CACert) {
			a.ha.proxy.SetRootCAs(pool)
		}
		k.APIServers = a.apiServersDiscovered
		k.ProxyPort = cfg.Cluster.APIProxy.Port
		if k.ProxyPort == 0 {
			k.ProxyPort = DefaultAPIProxyPort
		}
	}
	if a.resolver != nil && a.resolver.podDNSServing() {
		k.ClusterDNS = []netip.Addr{podDNS.Addr()}
		k.ResolvConf = filepath.Join(a.Root, podResolvTo)
	}
	a.kube = k
	a.sup.Start(ctx, pid1.Daemon{Name: "kubernetes", Run: func(ctx context.Context) error {
		// containerd's overlay snapshots, br_netfilter, kube-proxy's nftables.
		if err := a.needAllModules(ctx, "kubernetes"); err != nil {
			return err
		}
		return k.Run(ctx)
	}})
	a.podRoutes = a.startPodRoutes(ctx, filepath.Join(a.Root, "var/lib/kubelet/kubeconfig"), hostname)
}

// apiServersDiscovered takes the apiservers registered in the cluster:
// the proxy's backends become the config's and these.
func (a *Agent) apiServersDiscovered(addrs []string) {
	a.apiServersMu.Lock()
	a.discovered = addrs
	a.apiServersMu.Unlock()
	if cfg := a.currentConfig(); cfg != nil {
		a.setProxyBackends(cfg)
	}
}

// setProxyBackends gives the API proxy the config's apiservers, this
// control plane's own, and those registered in the cluster.
func (a *Agent) setProxyBackends(cfg *config.MachineConfig) {
	if a.ha.proxy == nil {
		return
	}
	if a.localAPIServer {
		if d := a.nodeIP.get(); d != nil {
			cfg = withLocalAPIServer(cfg, d.Addrs())
		}
	}
	backends := append([]string(nil), cfg.Cluster.APIServers...)
	a.apiServersMu.Lock()
	for _, d := range a.discovered {
		if !slices.Contains(backends, d) {
			backends = append(backends, d)
		}
	}
	a.apiServersMu.Unlock()
	a.ha.proxy.SetBackends(backends)
}

// ClusterCalls are the node API's cluster calls served by k.
func ClusterCalls(k *runtime.Kube) api.ClusterCalls {
	return api.ClusterCalls{Bootstrap: bootstrapCall(k), Kubeconfig: kubeconfigCall(k)}
}

// bootstrapCall answers POST /v1/bootstrap from the runtime.
func bootstrapCall(k *runtime.Kube) func(context.Context) (api.BootstrapResponse, error) {
	return func(ctx context.Context) (api.BootstrapResponse, error) {
		r, err := k.Bootstrap(ctx)
		var exists *runtime.ClusterExistsError
		switch {
		case errors.As(err, &exists), errors.Is(err, runtime.ErrNoEtcd):
			return api.BootstrapResponse{}, &api.StatusError{Code: http.StatusConflict, Msg: err.Error()}
		case err != nil:
			return api.BootstrapResponse{}, err
		}
		return api.BootstrapResponse{Already: r.Already, Message: r.Message}, nil
	}
}

// kubeconfigCall answers /v1/kubeconfig from the runtime.
func kubeconfigCall(k *runtime.Kube) func(context.Context, string) ([]byte, error) {
	return func(_ context.Context, user string) ([]byte, error) {
		data, err := k.AdminKubeconfig(user)
		if errors.Is(err, runtime.ErrNotControlPlane) {
			return nil, &api.StatusError{Code: http.StatusConflict, Msg: err.Error()}
		}
		return data, err
	}
}

// serviceOutput is where an external program's output goes: the log ring
// (nodectl logs) and a rotated file on /var.
func (a *Agent) serviceOutput(service string) io.Writer {
	a.outputsMu.Lock()
	defer a.outputsMu.Unlock()
	if w, ok := a.outputs[service]; ok {
		return w
	}
	var w io.Writer = &runtime.RotatingFile{Path: filepath.Join(a.Root, kubeLogDir, service+".log")}
	if a.Logs != nil {
		w = io.MultiWriter(a.Logs.Writer(service), w)
	}
	if a.outputs == nil {
		a.outputs = map[string]io.Writer{}
	}
	a.outputs[service] = w
	return w
}

// bootTime is when the kernel started (CLOCK_BOOTTIME counts from there);
// a container node shares the host's kernel, so its boot is the agent's start.
func (a *Agent) bootTime() time.Time {
	if a.Container {
		return a.started
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Now()
	}
	return time.Now().Add(-time.Duration(ts.Nano()))
}
