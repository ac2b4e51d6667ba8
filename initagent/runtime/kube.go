package runtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ballast-os/ballast/initagent/boottime"
	"github.com/ballast-os/ballast/initagent/imagestore"
	"github.com/ballast-os/ballast/initagent/pid1"
)

// Where the system image keeps what the runtime reads (image/payload lays it out).
const (
	systemManifest = "usr/share/ballast/payload.json"
	systemImages   = "usr/share/ballast/images"
)

// systemPayload is the system image's payload.json.
type systemPayload struct {
	Role     string `json:"role"`
	Versions struct {
		Kubernetes string
		Containerd string
		Etcd       string
	} `json:"versions"`
	Images []string `json:"images"`
}

// ReadPayload reports whether the system image mounted at system carries
// the Kubernetes payload, and which.
func ReadPayload(system string) (role, kubernetes string, ok bool) {
	p, err := readPayload(system)
	if err != nil || p.Versions.Kubernetes == "" {
		return "", "", false
	}
	return p.Role, p.Versions.Kubernetes, true
}

func readPayload(system string) (*systemPayload, error) {
	data, err := os.ReadFile(filepath.Join(system, systemManifest))
	if err != nil {
		return nil, err
	}
	var sp systemPayload
	if err := json.Unmarshal(data, &sp); err != nil {
		return nil, fmt.Errorf("%s: %w", systemManifest, err)
	}
	return &sp, nil
}

// DefaultDNSDomain is the cluster's in-cluster DNS domain (kubelet's
// clusterDomain, CoreDNS's zone) unless Cluster.Domain says otherwise.
const DefaultDNSDomain = "cluster.local"

// Cluster is what the node needs to know about its cluster.
type Cluster struct {
	Name         string
	Domain       string // in-cluster DNS domain; empty means DefaultDNSDomain
	APIVIPs      []netip.Addr
	ExtraSANs    []string // more names for the apiserver certificate
	PodCIDRs     []netip.Prefix
	ServiceCIDRs []netip.Prefix
	// CACert and CAKey (PEM), when set, are the cluster CA a control-plane
	// node signs with; otherwise the first control-plane node makes one.
	CACert, CAKey []byte
	// Shared by every control plane of a cluster with peers (PEM).
	EtcdCACert, EtcdCAKey             []byte
	FrontProxyCACert, FrontProxyCAKey []byte
	ServiceAccountKey                 []byte
	// Token is the bootstrap token workers join with.
	Token string
	// Peers are the other control-plane nodes: their etcd answers when a
	// cluster exists. Without peers a control plane bootstraps alone.
	Peers []netip.Addr
	// APIServers (host:port) reach the API when no proxy and no VIP does.
	APIServers []string
}

// Kube runs Kubernetes on the node from the system image: containerd with
// the preloaded images, on a control-plane node the control plane as
// static pods made by kubeadm's phases, and kubelet with the nodeIP
// decision. Run is the bootstrap-and-watch loop; containerd and kubelet
// run as daemons of their own under the agent's supervisor.
type Kube struct {
	Root     string // "/" on a node
	System   string // where system.sqfs is mounted
	Role     string // control-plane or worker
	NodeName string
	// NodeIPs is the nodeIP decision, preferred family first.
	NodeIPs []netip.Addr
	Cluster Cluster
	// ProxyPort is the local API proxy's frontend on 127.0.0.1 that kubelet
	// uses; 0 when no proxy runs (kubelet then uses the cluster endpoint).
	ProxyPort int
	// ClusterDNS and ResolvConf are what pods resolve with.
	ClusterDNS       []netip.Addr
	ResolvConf       string
	KubeletExtraArgs map[string]string

	Log *slog.Logger
	// Output gives the writer for a service's output (containerd, kubelet,
	// kubeadm, ctr); nil discards it.
	Output func(service string) io.Writer
	Reaper *pid1.Reaper
	// StartDaemon runs a daemon under the agent's supervisor.
	StartDaemon func(pid1.Daemon)
	// Since is when the boot started; the status reports times from it.
	Since time.Time
	// Timeline, if set, gets the Kubernetes milestones of the boot.
	Timeline *boottime.Timeline
	// APIServers, if set, gets the apiservers registered in the cluster
	// (host:port) whenever they change: the API proxy's backends.
	APIServers func([]string)
	// EtcdClientPort is where the peers' etcd answers; 0 means 2379.
	EtcdClientPort int

	initOnce sync.Once
	// podNetworkMarked: the boot timeline has the pod network milestone.
	podNetworkMarked bool
	bootstrapReq     chan struct{}

	mu               sync.Mutex
	started          map[string]bool
	imagesRegistered bool
	status           KubeStatus
}

// KubeStatus is the runtime's part of the node status.
type KubeStatus struct {
	Phase string `json:"phase"`
	// Seconds from boot to each milestone; 0 until reached.
	ContainerdReady float64 `json:"containerdReadySeconds,omitempty"`
	ImagesReady     float64 `json:"imagesReadySeconds,omitempty"`
	KubeletStarted  float64 `json:"kubeletStartedSeconds,omitempty"`
	APIServerReady  float64 `json:"apiServerReadySeconds,omitempty"`
	NodeReady       float64 `json:"nodeReadySeconds,omitempty"`
	// ControllersRunning: kube-controller-manager and kube-scheduler healthy.
	ControllersRunning float64  `json:"controllersRunningSeconds,omitempty"`
	Ready              bool     `json:"ready"`
	ReadyMessage       string   `json:"readyMessage,omitempty"`
	NodeAddresses      []string `json:"nodeAddresses,omitempty"`
	PodCIDRs           []string `json:"podCIDRs,omitempty"`
	LastError          string   `json:"lastError,omitempty"`
	// Etcd is this control plane's part in etcd: bootstrapped, learner or member.
	Etcd         string `json:"etcd,omitempty"`
	EtcdMemberID string `json:"etcdMemberID,omitempty"`
}

// Status returns a copy of the current status.
func (k *Kube) Status() KubeStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.status
	s.NodeAddresses = append([]string(nil), s.NodeAddresses...)
	s.PodCIDRs = append([]string(nil), s.PodCIDRs...)
	return s
}

func (k *Kube) update(f func(*KubeStatus)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f(&k.status)
}

func (k *Kube) since() float64 {
	return time.Since(k.Since).Round(100 * time.Millisecond).Seconds()
}

func (k *Kube) path(p string) string { return filepath.Join(k.Root, p) }

func (k *Kube) paths() Paths {
	p := NodePaths(k.System)
	for _, f := range []*string{&p.CNIConfDir, &p.ContainerdDir, &p.StateDir, &p.KubeletDir, &p.ManifestDir, &p.PKIDir} {
		*f = k.path(*f)
	}
	return p
}

func (k *Kube) output(service string) io.Writer {
	if k.Output == nil {
		return io.Discard
	}
	return k.Output(service)
}

// Files the runtime writes besides kubeadm's.
const (
	containerdConfig  = "etc/containerd/config.toml"
	kubeadmConfigFile = "etc/kubernetes/ballast-kubeadm.yaml"
	kubeletKubeconfig = "var/lib/kubelet/kubeconfig"
	cniConfFile       = "10-ballast.conflist"
	bootstrappedMark  = "etc/kubernetes/ballast-bootstrapped"
	// kubernetesState keeps /etc/kubernetes on /var (STATE on disk nodes),
	// so certificates and manifests survive reboots.
	kubernetesState = "var/lib/ballast/kubernetes"
)

// Run brings Kubernetes up and then follows the node's readiness until ctx
// ends. It can be called again after an error (the supervisor does): what
// already runs keeps running.
func (k *Kube) Run(ctx context.Context) error {
	k.init()
	if len(k.NodeIPs) == 0 {
		return k.fail("no node address: the nodeIP decision found none, so kubelet cannot start (see nodectl nodeip --explain)")
	}
	p := k.paths()
	k.update(func(s *KubeStatus) { s.Phase = "preparing host" })
	if err := k.prepareHost(); err != nil {
		return k.fail("prepare host: %v", err)
	}
	// containerd (and the images it serves) and the control plane's
	// files (kubeadm's certificates, kubeconfigs and static pod
	// manifests) do not need each other: they are made side by side, and
	// kubelet starts once both are there.
	containerd := make(chan error, 1)
	go func() { containerd <- k.startContainerd(ctx, p) }()

	controlPlane := k.Role == "control-plane"
	kind, learner := bootstraps, uint64(0)
	if controlPlane {
		var err error
		if kind, err = k.decide(ctx); err != nil {
			<-containerd
			return k.fail("control plane: %v", err)
		}
		if !k.exists("etc/kubernetes/manifests/kube-apiserver.yaml") || (kind == joins && !k.exists(etcdMemberDir)) {
			k.update(func(s *KubeStatus) { s.Phase = "creating control plane" })
			if kind == joins {
				learner, err = k.joinControlPlane(ctx)
			} else {
				err = k.createControlPlane(ctx)
			}
			if err != nil {
				<-containerd
				return k.fail("control plane: %v", err)
			}
		}
		if kind == rejoins && learner == 0 {
			learner = k.unpromotedLearner(ctx)
		}
		k.noteEtcd(kind, learner)
	}
	if err := <-containerd; err != nil {
		return k.fail("%v", err)
	}
	if controlPlane {
		if err := k.holdManifests(); err != nil {
			return k.fail("static pods: %v", err)
		}
	}
	if err := k.writeKubeletFiles(p); err != nil {
		return k.fail("kubelet files: %v", err)
	}
	k.startOnce("kubelet", k.kubeletProcess(p).Run)
	k.milestone("kubelet started", boottime.KubeletStarted, func(s *KubeStatus) { s.KubeletStarted = k.since() })
	if learner != 0 {
		k.update(func(s *KubeStatus) { s.Phase = "waiting for etcd to promote this learner" })
		if err := k.promote(ctx, learner); err != nil {
			return k.fail("etcd: %v", err)
		}
	}

	var node *KubeClient
	var err error
	if controlPlane {
		node, err = LoadKubeconfig(k.path(kubeletKubeconfig), "")
	} else {
		k.update(func(s *KubeStatus) { s.Phase = "waiting for kubelet's TLS bootstrap" })
		node, err = k.waitKubeletKubeconfig(ctx)
	}
	if err != nil {
		return k.fail("kubelet kubeconfig: %v", err)
	}
	// follow watches the node from now on: it writes the CNI config once
	// the node has pod CIDRs and marks Ready, whatever the control plane's
	// remaining steps are doing.
	phase := "waiting for node Ready"
	if controlPlane {
		phase = "waiting for kube-apiserver"
	}
	k.update(func(s *KubeStatus) { s.Phase = phase })
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	followed := make(chan error, 1)
	go func() { followed <- k.follow(fctx, p, node) }()
	if controlPlane {
		if err := k.runControlPlane(fctx, kind, node); err != nil {
			cancel(err)
			<-followed
			return err
		}
	}
	return <-followed
}

// runControlPlane takes a control-plane node from kubelet's start to a
// finished control plane: the bootstrapping node's pod CIDR claim, the held
// manifests released once the local apiserver is ready, and kubeadm's
// phases that need the API.
func (k *Kube) runControlPlane(ctx context.Context, kind controlPlaneKind, node *KubeClient) error {
	claimed := make(chan struct{})
	claimCtx, stopClaim := context.WithCancel(ctx)
	defer func() { stopClaim(); <-claimed }()
	if kind == bootstraps {
		// The apiserver serves its own node's kubelet (Node authorizer) and
		// system:masters well before /readyz passes (RBAC's bootstrap roles
		// take ≈ 45 s under TCG): the claim need not wait for it.
		go func() { defer close(claimed); k.claimPodCIDRs(claimCtx, node) }()
	} else {
		close(claimed)
	}
	if err := k.waitAPIServer(ctx); err != nil {
		return k.fail("kube-apiserver: %v", err)
	}
	k.milestone("kube-apiserver ready", boottime.APIServerHealthy, func(s *KubeStatus) { s.APIServerReady = k.since() })
	k.update(func(s *KubeStatus) {
		if s.Phase == "waiting for kube-apiserver" {
			s.Phase = "waiting for node Ready"
		}
	})
	// The controller manager's allocator must not run beside the claim.
	select {
	case <-claimed:
	case <-time.After(claimWait):
		stopClaim()
		<-claimed
	}
	if err := k.releaseManifests(); err != nil {
		return k.fail("static pods: %v", err)
	}
	wctx, stopWaiting := context.WithCancel(ctx)
	controllers := make(chan struct{})
	go func() { defer close(controllers); k.waitControllers(wctx, controllerHealthz) }()
	err := k.finishControlPlane(ctx)
	if err != nil {
		err = k.fail("control plane: %v", err)
	} else if err = k.grantNodeAgents(ctx); err != nil {
		err = k.fail("RBAC for the node agents (%s): %v", NodeAgentRole, err)
	}
	if err != nil {
		stopWaiting()
	}
	<-controllers
	stopWaiting()
	return err
}

// controllerHealthz are kubeadm's kube-controller-manager and
// kube-scheduler health endpoints (127.0.0.1, self-signed serving certs,
// /healthz open to anonymous requests).
var controllerHealthz = []string{"https://127.0.0.1:10257/healthz", "https://127.0.0.1:10259/healthz"}

// waitControllers marks ControlPlaneRunning once every URL answers 200:
// on the bootstrapping node of a slow machine the node is Ready well before
// pods can be scheduled, and the timeline says when that became possible.
func (k *Kube) waitControllers(ctx context.Context, urls []string) {
	// Loopback health checks of processes on this node: their certificates
	// are made in memory and cannot be verified.
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	healthy := func(u string) bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return false
		}
		resp, err := c.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	pending := slices.Clone(urls)
	for {
		pending = slices.DeleteFunc(pending, healthy)
		if len(pending) == 0 {
			k.milestone("kube-controller-manager and kube-scheduler running", boottime.ControlPlaneRunning,
				func(s *KubeStatus) { s.ControllersRunning = k.since() })
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (k *Kube) init() {
	k.initOnce.Do(func() {
		k.mu.Lock()
		if k.started == nil {
			k.started = map[string]bool{}
		}
		k.mu.Unlock()
		k.bootstrapReq = make(chan struct{}, 1)
	})
}

func (k *Kube) fail(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	k.update(func(s *KubeStatus) { s.LastError = err.Error() })
	return err
}

// milestone records a step of the boot in the status, the log and the
// boot timeline (as mark).
func (k *Kube) milestone(msg, mark string, f func(*KubeStatus)) {
	k.update(f)
	if k.Timeline != nil {
		k.Timeline.Mark(mark)
	}
	k.Log.Info(msg, "sinceBoot", time.Since(k.Since).Round(10*time.Millisecond))
}

func (k *Kube) startOnce(name string, run func(context.Context) error) {
	k.mu.Lock()
	already := k.started[name]
	k.started[name] = true
	k.mu.Unlock()
	if !already {
		k.StartDaemon(pid1.Daemon{Name: name, Run: run})
	}
}

func (k *Kube) payload() (*systemPayload, error) { return readPayload(k.System) }

// pauseImage is the sandbox image the system image preloads.
func (k *Kube) pauseImage() string {
	sp, err := k.payload()
	if err == nil {
		for _, n := range sp.Images {
			if strings.HasPrefix(n, "registry.k8s.io/pause:") {
				return n
			}
		}
	}
	return "registry.k8s.io/pause:3.10"
}

// prepareHost makes what containerd and kubelet expect of a host: a
// persistent /etc/kubernetes, the cgroup controllers delegated, forwarding on.
func (k *Kube) prepareHost() error {
	state, etc := k.path(kubernetesState), k.path("etc/kubernetes")
	if err := os.MkdirAll(state, 0o755); err != nil {
		return err
	}
	if fi, err := os.Lstat(etc); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(etc), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(state, etc); err != nil {
			return err
		}
	} else if err == nil && fi.Mode()&os.ModeSymlink == 0 {
		return fmt.Errorf("%s exists and is not the link to %s", etc, state)
	}
	for _, d := range []string{"var/lib/kubelet", "var/log/pods", "etc/cni/net.d", "var/lib/etcd"} {
		if err := os.MkdirAll(k.path(d), 0o755); err != nil {
			return err
		}
	}
	// kubelet puts pods into child cgroups of the root and needs these there.
	ctl := k.path("sys/fs/cgroup/cgroup.subtree_control")
	for _, c := range []string{"cpuset", "cpu", "io", "memory", "hugetlb", "pids"} {
		if err := os.WriteFile(ctl, []byte("+"+c), 0); err != nil {
			k.Log.Warn("cgroup controller not delegated", "controller", c, "err", err)
		}
	}
	for _, s := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(k.path("proc/sys/"+s), []byte("1"), 0); err != nil {
			k.Log.Warn("sysctl", "key", s, "err", err)
		}
	}
	// kubelet reads its user namespace mappings from /etc/passwd and fails
	// without one; containerd copies /etc/hosts into host-network pods.
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	for _, a := range k.NodeIPs {
		hosts += a.String() + "\t" + k.NodeName + "\n"
	}
	for name, content := range map[string]string{
		"etc/hosts":  hosts,
		"etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
		"etc/group":  "root:x:0:\nnobody:x:65534:\n",
	} {
		if _, err := os.Stat(k.path(name)); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(k.path(name), []byte(content), 0o644); err != nil {
				return err
			}
		}
	}
	if err := ensureMachineID(k.path("etc/machine-id"), k.path("var/lib/ballast/machine-id")); err != nil {
		k.Log.Warn("machine-id", "err", err)
	}
	return nil
}

// ensureMachineID gives the node a stable /etc/machine-id (kubelet
// reports it as the node's machine ID), kept on /var.
func ensureMachineID(etc, kept string) error {
	id, err := os.ReadFile(kept)
	if err != nil || len(bytes.TrimSpace(id)) != 32 {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		id = []byte(fmt.Sprintf("%x\n", b))
		if err := os.MkdirAll(filepath.Dir(kept), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(kept, id, 0o444); err != nil {
			return err
		}
	}
	return os.WriteFile(etc, id, 0o444)
}

// registerImages makes the system image's images containerd's in place
// (initagent/imagestore), once per agent: it must run before containerd
// starts, and a Run retried after an error finds containerd running.
func (k *Kube) registerImages(ctx context.Context, p Paths) error {
	k.mu.Lock()
	done := k.imagesRegistered
	k.mu.Unlock()
	if done {
		return nil
	}
	k.update(func(s *KubeStatus) { s.Phase = "registering images" })
	t := time.Now()
	res, err := imagestore.Register(ctx, imagestore.Options{
		Store: filepath.Join(k.System, systemImages), Root: p.ContainerdDir, Namespace: "k8s.io", Log: k.Log,
	})
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.imagesRegistered = true
	k.mu.Unlock()
	k.Log.Info("images registered", "images", len(res.Images), "added", strings.Join(res.Added, ","),
		"removed", strings.Join(res.Removed, ","), "new_layers", res.Layers, "took", time.Since(t).Round(time.Millisecond))
	k.milestone("images ready", boottime.ImagesReady, func(s *KubeStatus) { s.ImagesReady = k.since() })
	return nil
}

// startContainerd registers the system image's images, starts containerd
// and waits for its socket.
func (k *Kube) startContainerd(ctx context.Context, p Paths) error {
	if err := k.registerImages(ctx, p); err != nil {
		return fmt.Errorf("register images: %v", err)
	}
	k.startOnce("containerd", (&Containerd{Paths: p, ConfigFile: k.path(containerdConfig), PauseImage: k.pauseImage(),
		Output: k.output("containerd"), Reaper: k.Reaper}).Run)
	k.update(func(s *KubeStatus) { s.Phase = "waiting for containerd" })
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	err := WaitSocket(wctx, p.Socket())
	cancel()
	if err != nil {
		return fmt.Errorf("containerd: %v", err)
	}
	k.milestone("containerd ready", boottime.ContainerdReady, func(s *KubeStatus) { s.ContainerdReady = k.since() })
	return nil
}

// run runs a program to completion, its output going to the service's
// log; a failure quotes the output's last lines.
func (k *Kube) run(ctx context.Context, service, path string, args ...string) error {
	// A failure's error carries the program's last lines (pid1.Process).
	p := &pid1.Process{Path: path, Args: args, Env: k.env(), Output: k.output(service), Reaper: k.Reaper}
	if err := p.Run(ctx); err != nil && !errors.Is(err, pid1.ErrExited) {
		return fmt.Errorf("%s %s: %w", filepath.Base(path), strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

func (k *Kube) env() []string {
	return []string{"PATH=" + k.System + "/usr/bin:/usr/bin:/bin:/sbin", "HOME=/root"}
}

// controlPlaneConfig is the kubeadm view of this node.
func (k *Kube) controlPlaneConfig(version string) ControlPlane {
	name := k.Cluster.Name
	if name == "" {
		name = "kubernetes"
	}
	return ControlPlane{
		KubernetesVersion: version, ClusterName: name, DNSDomain: k.domain(), NodeName: k.NodeName,
		NodeIP: k.NodeIPs[0], APIVIPs: k.Cluster.APIVIPs,
		// kubelet and static pods reach the API through the local proxy on 127.0.0.1.
		ExtraSANs: append([]string{"127.0.0.1", "localhost"}, k.Cluster.ExtraSANs...),
		PodCIDRs:  k.Cluster.PodCIDRs, ServiceCIDRs: k.Cluster.ServiceCIDRs,
		CRISocket: "unix://" + k.paths().Socket(), KubeletNodeIP: k.kubeletNodeIP(),
		BootstrapToken: k.Cluster.Token,
	}
}

func (k *Kube) kubeletNodeIP() string {
	s := make([]string, len(k.NodeIPs))
	for i, a := range k.NodeIPs {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// afterAPIServer are the static pods that start only once this node's
// kube-apiserver is ready. kube-controller-manager exits when the API is
// not healthy within 10 s of winning its lease, and on a slow machine the
// apiserver takes far longer (its RBAC bootstrap alone ≈ 45 s under TCG):
// started together with it, the controller manager crashed, backed off and
// started over, and the node got its pod CIDR (and so Ready) only after
// that second start, while both start-ups took CPU from the apiserver's.
var afterAPIServer = []string{"kube-controller-manager.yaml", "kube-scheduler.yaml"}

// heldManifestDir keeps them out of kubelet's static pod directory until then.
const heldManifestDir = "etc/kubernetes/manifests-held"

// holdManifests moves the afterAPIServer manifests out of kubelet's sight.
// A node that stops before releaseManifests finds them held at the next
// boot, which holds and releases them the same way.
func (k *Kube) holdManifests() error {
	if err := os.MkdirAll(k.path(heldManifestDir), 0o700); err != nil {
		return err
	}
	return k.moveManifests("etc/kubernetes/manifests", heldManifestDir)
}

// releaseManifests gives the held manifests back to kubelet.
func (k *Kube) releaseManifests() error {
	if err := k.moveManifests(heldManifestDir, "etc/kubernetes/manifests"); err != nil {
		return err
	}
	k.Log.Info("kube-controller-manager and kube-scheduler released: the local apiserver is ready")
	return nil
}

func (k *Kube) moveManifests(from, to string) error {
	for _, m := range afterAPIServer {
		err := os.Rename(k.path(filepath.Join(from, m)), k.path(filepath.Join(to, m)))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// createControlPlane runs kubeadm's phases that make the certificates,
// kubeconfigs and static pod manifests (first boot of a control-plane node).
func (k *Kube) createControlPlane(ctx context.Context) error {
	sp, err := k.payload()
	if err != nil {
		return err
	}
	if err := k.writeSharedPKI(); err != nil {
		return err
	}
	if !k.exists(etcdBootstrapMark) {
		if err := k.writeMark(etcdBootstrapMark, "bootstrapped"); err != nil {
			return err
		}
	}
	err = k.kubeadmPhases(ctx, k.controlPlaneConfig(sp.Versions.Kubernetes),
		[]string{"certs", "all"}, []string{"kubeconfig", "all"}, []string{"etcd", "local"}, []string{"control-plane", "all"})
	if err == nil {
		k.Log.Info("cluster bootstrapped", "node", k.NodeName, "etcdPeerURL", k.peerURL())
	}
	return err
}

// noteEtcd puts the node's etcd role into the status.
func (k *Kube) noteEtcd(kind controlPlaneKind, learner uint64) {
	k.update(func(s *KubeStatus) {
		switch {
		case learner != 0:
			s.Etcd, s.EtcdMemberID = "learner", fmt.Sprintf("%x", learner)
		case kind == bootstraps || k.exists(etcdBootstrapMark):
			s.Etcd = "bootstrapped"
		default:
			s.Etcd = "member"
		}
	})
}

// finishControlPlane runs the phases that need the API (once per cluster
// node): the cluster's kubeadm and kubelet config, the control-plane label
// and taint, and bootstrap tokens' RBAC so workers can join.
func (k *Kube) finishControlPlane(ctx context.Context) error {
	if _, err := os.Stat(k.path(bootstrappedMark)); err == nil {
		return nil
	}
	for _, phase := range k.finishPhases() {
		t := time.Now()
		args := append(append([]string{"init", "phase"}, phase...), "--config", k.path(kubeadmConfigFile))
		if err := k.run(ctx, "kubeadm", filepath.Join(k.System, "usr/bin/kubeadm"), args...); err != nil {
			return err
		}
		k.Log.Info("kubeadm phase done", "phase", strings.Join(phase, " "), "took", time.Since(t).Round(10*time.Millisecond))
	}
	return os.WriteFile(k.path(bootstrappedMark), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// finishPhases are the kubeadm phases a control plane runs once the API
// answers: the cluster's config, tokens and addons (kube-proxy and CoreDNS,
// from the preloaded images) are the bootstrapping node's.
func (k *Kube) finishPhases() [][]string {
	if k.hasPeers() && !k.exists(etcdBootstrapMark) {
		return [][]string{{"mark-control-plane"}}
	}
	return [][]string{{"upload-config", "all"}, {"mark-control-plane"}, {"bootstrap-token"}, {"addon", "all"}}
}

// writeKubeletFiles writes kubelet's config and its kubeconfig, which
// names the local API proxy when one runs.
func (k *Kube) writeKubeletFiles(p Paths) error {
	conf, err := KubeletConfiguration(p, k.kubelet())
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(p.KubeletDir, "config.yaml"), conf, 0o644); err != nil {
		return err
	}
	if k.Role != "control-plane" {
		// kubelet writes its kubeconfig itself after the TLS bootstrap.
		return k.writeWorkerFiles()
	}
	src, err := os.ReadFile(k.path("etc/kubernetes/kubelet.conf"))
	if err != nil {
		return err
	}
	if k.ProxyPort != 0 {
		if src, err = WithServer(src, "https://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(k.ProxyPort))); err != nil {
			return err
		}
	}
	return os.WriteFile(k.path(kubeletKubeconfig), src, 0o600)
}

func (k *Kube) domain() string {
	if k.Cluster.Domain == "" {
		return DefaultDNSDomain
	}
	return k.Cluster.Domain
}

func (k *Kube) kubelet() Kubelet {
	kl := Kubelet{Hostname: k.NodeName, NodeIP: k.kubeletNodeIP(), ClusterDomain: k.domain(), ClusterDNS: k.ClusterDNS,
		ResolvConf: k.ResolvConf, Kubeconfig: k.path(kubeletKubeconfig), ExtraArgs: k.KubeletExtraArgs}
	if k.Role != "control-plane" {
		kl.BootstrapKubeconfig = k.path(bootstrapKubelet)
	}
	return kl
}

func (k *Kube) kubeletProcess(p Paths) *pid1.Process {
	return &pid1.Process{Path: filepath.Join(p.BinDir, "kubelet"), Args: KubeletArgs(p, k.kubelet()), Env: k.env(),
		Output: k.output("kubelet"), Reaper: k.Reaper, StopTimeout: 30 * time.Second}
}

// waitAPIServer waits for this node's kube-apiserver to answer /readyz.
func (k *Kube) waitAPIServer(ctx context.Context) error {
	server := "https://" + net.JoinHostPort(k.NodeIPs[0].String(), "6443")
	var c *KubeClient
	var last error
	var pending string
	for {
		if c == nil {
			c, last = LoadKubeconfig(k.path("etc/kubernetes/admin.conf"), server)
		}
		if c != nil {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, last = c.Raw(rctx, "GET", "/readyz?verbose", nil)
			cancel()
			if last == nil {
				return nil
			}
			// A slow start explains itself: which readiness checks still fail.
			var apiErr *APIError
			if errors.As(last, &apiErr) {
				if failing := failingChecks(apiErr.Message); failing != pending {
					pending = failing
					k.Log.Info("kube-apiserver not ready yet", "failing", failing, "sinceBoot", k.since())
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(2 * time.Second):
		}
	}
}

// failingChecks returns the names of the failed checks in a verbose
// /readyz or /livez answer ("[-]etcd failed: reason withheld" lines).
func failingChecks(verbose string) string {
	var failed []string
	for _, l := range strings.Split(verbose, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "[-]"); ok {
			name, _, _ := strings.Cut(rest, " ")
			failed = append(failed, name)
		}
	}
	return strings.Join(failed, ",")
}

// waitNode waits until kubelet has registered the node.
func (k *Kube) waitNode(ctx context.Context, c *KubeClient) (*Node, error) {
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := c.GetNode(rctx, k.NodeName)
		cancel()
		if err == nil {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// writeCNI writes the bridge network for the node's pod CIDRs (the
// controller manager's allocation, or on the bootstrapping node its own
// claim). Until the node has some there is no CNI config, so
// kubelet reports the network not ready and no pod lands on a bridge whose
// subnet would change under it (the bridge plugin then refuses every pod).
func (k *Kube) writeCNI(p Paths, n *Node) error {
	var cidrs []netip.Prefix
	for _, c := range n.Spec.PodCIDRs {
		if pfx, err := netip.ParsePrefix(c); err == nil {
			cidrs = append(cidrs, pfx)
		}
	}
	if len(cidrs) == 0 {
		k.Log.Info("node has no podCIDRs yet: the CNI config waits for the controller manager's allocation")
		return nil
	}
	conf, err := CNIConfig(cidrs)
	if err != nil {
		return err
	}
	path := filepath.Join(p.CNIConfDir, cniConfFile)
	if old, err := os.ReadFile(path); err != nil || !bytes.Equal(old, conf) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, conf, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	setCIDRs := func(s *KubeStatus) {
		s.PodCIDRs = nil
		for _, c := range cidrs {
			s.PodCIDRs = append(s.PodCIDRs, c.String())
		}
	}
	if k.podNetworkMarked {
		k.update(setCIDRs)
		return nil
	}
	k.podNetworkMarked = true
	k.milestone("pod network configured", boottime.PodNetwork, setCIDRs)
	return nil
}

// follow logs the node's Ready transitions until ctx ends. The first Ready
// is logged with what it took and the memory in use, and the node's
// addresses are checked against the nodeIP decision.
func (k *Kube) follow(ctx context.Context, p Paths, c *KubeClient) error {
	wasReady, first, seen := false, true, false
	var apiservers []string
	var admin *KubeClient
	defer func() {
		if admin != nil {
			admin.HTTP.CloseIdleConnections()
		}
	}()
	for i := 0; ; i++ {
		if i%5 == 0 {
			apiservers = k.reportAPIServers(ctx, c, &admin, apiservers)
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := c.GetNode(rctx, k.NodeName)
		cancel()
		if err == nil {
			if !seen {
				seen = true
				k.Log.Info("node registered", "node", k.NodeName, "internalIPs", strings.Join(n.InternalIPs(), ","),
					"podCIDRs", strings.Join(n.Spec.PodCIDRs, ","), "sinceBoot", k.since())
			}
			if len(n.Spec.PodCIDRs) > 0 {
				// The pod CIDRs may come after the node registered.
				if err := k.writeCNI(p, n); err != nil {
					k.Log.Error("CNI config", "err", err)
				}
			}
			ready, msg := n.Ready()
			ips := n.InternalIPs()
			k.update(func(s *KubeStatus) {
				s.Ready, s.ReadyMessage, s.NodeAddresses = ready, msg, ips
				if ready {
					s.Phase = "running"
				}
			})
			switch {
			case ready && first:
				first = false
				k.update(func(s *KubeStatus) { s.NodeReady = k.since() })
				if k.Timeline != nil {
					k.Timeline.Mark(boottime.NodeReady)
				}
				rss, used := memory()
				k.Log.Info("kubernetes node ready", "node", k.NodeName, "sinceBoot", time.Since(k.Since).Round(10*time.Millisecond),
					"internalIPs", strings.Join(ips, ","), "agentRSSKiB", rss, "memUsedKiB", used)
				if want := k.kubeletNodeIP(); strings.Join(ips, ",") != want {
					k.Log.Error("node addresses differ from the nodeIP decision", "node", strings.Join(ips, ","), "nodeIP", want)
				}
			case ready && !wasReady:
				k.Log.Info("kubernetes node ready again", "node", k.NodeName)
			case !ready && wasReady:
				k.Log.Warn("kubernetes node not ready", "node", k.NodeName, "reason", msg)
			}
			wasReady = ready
		}
		// Until the first Ready, each second: the pod CIDR the controller
		// manager allocates is what the node waits for (the CNI config).
		poll := 3 * time.Second
		if first {
			poll = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// memory returns this process's resident set and the memory in use on the
// machine (MemTotal - MemAvailable), in KiB.
func memory() (rss, used int64) {
	field := func(path, name string) int64 {
		data, err := os.ReadFile(path)
		if err != nil {
			return 0
		}
		for _, l := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(l, name+":"); ok {
				f := strings.Fields(rest)
				if len(f) > 0 {
					v, _ := strconv.ParseInt(f[0], 10, 64)
					return v
				}
			}
		}
		return 0
	}
	rss = field("/proc/self/status", "VmRSS")
	used = field("/proc/meminfo", "MemTotal") - field("/proc/meminfo", "MemAvailable")
	return rss, used
}
