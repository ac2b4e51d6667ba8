package runtime

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/etcdmember"
)

// What a control plane persists on STATE about the one etcd cluster: the
// decision to bootstrap it (written before etcd is created) or to join
// (written before the node becomes a member; holds who answered).
const (
	etcdBootstrapMark = "var/lib/ballast/etcd-bootstrapped"
	etcdJoinedMark    = "var/lib/ballast/etcd-joined"
	etcdMemberDir     = "var/lib/etcd/member"
	bootstrapKubelet  = "etc/kubernetes/bootstrap-kubelet.conf"
	etcdClientPort    = 2379
	etcdPeerPort      = 2380
)

// Phases a control plane with peers shows while it waits.
const PhaseWaitingBootstrap = "waiting for bootstrap or a cluster to join"

// ClusterExistsError refuses a bootstrap: an etcd cluster exists already.
type ClusterExistsError struct{ Msg string }

func (e *ClusterExistsError) Error() string { return e.Msg }

// ErrNoEtcd refuses a bootstrap on a node that runs no etcd.
var ErrNoEtcd = errors.New("this node is a worker: it runs no etcd; bootstrap one control-plane node")

func (k *Kube) exists(p string) bool {
	_, err := os.Stat(k.path(p))
	return err == nil
}

func (k *Kube) hasPeers() bool { return len(k.Cluster.Peers) > 0 }

func (k *Kube) etcdPort() int {
	if k.EtcdClientPort != 0 {
		return k.EtcdClientPort
	}
	return etcdClientPort
}

// etcdClient reaches the peers' etcd with a
// client certificate it signs from the etcd CA: the config's, else the
// one kubeadm made on this node.
func (k *Kube) etcdClient() (*etcdmember.Client, error) {
	var eps []string
	for _, p := range k.Cluster.Peers {
		eps = append(eps, "https://"+net.JoinHostPort(p.String(), strconv.Itoa(k.etcdPort())))
	}
	cert, key := k.Cluster.EtcdCACert, k.Cluster.EtcdCAKey
	if len(cert) == 0 {
		var err error
		if cert, err = os.ReadFile(k.path("etc/kubernetes/pki/etcd/ca.crt")); err != nil {
			return nil, fmt.Errorf("no etcd CA: set cluster.etcdCA (%w)", err)
		}
		if key, err = os.ReadFile(k.path("etc/kubernetes/pki/etcd/ca.key")); err != nil {
			return nil, fmt.Errorf("no etcd CA key: set cluster.etcdCA (%w)", err)
		}
	}
	return etcdmember.ClientFromCA(eps, cert, key, "ballast-agent-"+k.NodeName)
}

// existingCluster asks the peers' etcd for members: the member that
// answered when a cluster exists.
func (k *Kube) existingCluster(ctx context.Context) (string, bool) {
	if !k.hasPeers() {
		return "", false
	}
	c, err := k.etcdClient()
	if err != nil {
		k.Log.Debug("etcd client", "err", err)
		return "", false
	}
	defer c.CloseIdle()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	members, answered, err := c.MemberList(lctx)
	if err != nil || len(members) == 0 {
		return "", false
	}
	var names []string
	for _, m := range members {
		names = append(names, etcdmember.MemberName(m))
	}
	return fmt.Sprintf("%s (members: %s)", answered, strings.Join(names, ", ")), true
}

// BootstrapResult is the answer to a bootstrap request.
type BootstrapResult struct {
	Already bool   `json:"already"`
	Message string `json:"message"`
}

// Bootstrap makes this control plane create the cluster's etcd. It is
// idempotent on the node that bootstrapped, and refused (a
// *ClusterExistsError) when this node joined a cluster or a peer's etcd
// answers with members. The decision is on STATE before etcd exists.
func (k *Kube) Bootstrap(ctx context.Context) (BootstrapResult, error) {
	k.init()
	if k.Role != "control-plane" {
		return BootstrapResult{}, ErrNoEtcd
	}
	if k.exists(etcdBootstrapMark) {
		return BootstrapResult{Already: true, Message: "already bootstrapped: this node created the cluster's etcd"}, nil
	}
	if data, err := os.ReadFile(k.path(etcdJoinedMark)); err == nil {
		return BootstrapResult{}, &ClusterExistsError{Msg: "a cluster exists: this node joined it through " + strings.TrimSpace(string(data))}
	}
	if !k.hasPeers() {
		if k.exists(etcdMemberDir) {
			return BootstrapResult{Already: true, Message: "already bootstrapped: this control plane has no peers and bootstrapped by itself"}, nil
		}
		return BootstrapResult{Message: "this control plane has no peers (cluster.peers): it bootstraps by itself"}, nil
	}
	if who, ok := k.existingCluster(ctx); ok {
		return BootstrapResult{}, &ClusterExistsError{Msg: "a cluster exists: etcd at " + who + " answered; this node joins it instead"}
	}
	if k.exists(etcdMemberDir) {
		return BootstrapResult{}, &ClusterExistsError{Msg: "this node has etcd data (" + k.path(etcdMemberDir) + ") of a cluster it did not bootstrap: it rejoins that cluster"}
	}
	if err := k.writeMark(etcdBootstrapMark, "bootstrap requested"); err != nil {
		return BootstrapResult{}, err
	}
	k.Log.Info("bootstrap requested: this node creates the cluster's etcd")
	select {
	case k.bootstrapReq <- struct{}{}:
	default:
	}
	return BootstrapResult{Message: "bootstrapping: this node creates the cluster's etcd"}, nil
}

func (k *Kube) writeMark(p, content string) error {
	if err := os.MkdirAll(filepath.Dir(k.path(p)), 0o755); err != nil {
		return err
	}
	return os.WriteFile(k.path(p), []byte(time.Now().UTC().Format(time.RFC3339)+" "+content+"\n"), 0o644)
}

// controlPlaneKind says how this control plane enters the cluster.
type controlPlaneKind int

const (
	bootstraps controlPlaneKind = iota // creates etcd (alone, or bootstrapped)
	joins                              // becomes a learner of the existing etcd
	rejoins                            // has etcd data: starts as the same member
)

// decide waits, on a control plane with peers and no etcd data, until an
// operator bootstraps it or a peer's etcd answers.
func (k *Kube) decide(ctx context.Context) (controlPlaneKind, error) {
	switch {
	case !k.hasPeers():
		return bootstraps, nil
	case k.exists(etcdMemberDir):
		return rejoins, nil
	case k.exists(etcdBootstrapMark):
		return bootstraps, nil
	}
	k.update(func(s *KubeStatus) { s.Phase = PhaseWaitingBootstrap })
	k.Log.Info(PhaseWaitingBootstrap, "peers", fmt.Sprint(k.Cluster.Peers))
	for {
		if k.exists(etcdBootstrapMark) {
			return bootstraps, nil
		}
		if who, ok := k.existingCluster(ctx); ok {
			k.Log.Info("etcd cluster found", "answered", who)
			return joins, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-k.bootstrapReq:
		case <-time.After(3 * time.Second):
		}
	}
}

// writeSharedPKI puts the cluster's shared CAs and service-account key
// where kubeadm's certs phase finds (and reuses) them.
func (k *Kube) writeSharedPKI() error {
	pkiDir := k.path("etc/kubernetes/pki")
	if err := os.MkdirAll(filepath.Join(pkiDir, "etcd"), 0o700); err != nil {
		return err
	}
	c := k.Cluster
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"ca.crt", c.CACert, 0o644}, {"ca.key", c.CAKey, 0o600},
		{"etcd/ca.crt", c.EtcdCACert, 0o644}, {"etcd/ca.key", c.EtcdCAKey, 0o600},
		{"front-proxy-ca.crt", c.FrontProxyCACert, 0o644}, {"front-proxy-ca.key", c.FrontProxyCAKey, 0o600},
		{"sa.key", c.ServiceAccountKey, 0o600},
	}
	if len(c.ServiceAccountKey) > 0 {
		pub, err := publicKeyPEM(c.ServiceAccountKey)
		if err != nil {
			return fmt.Errorf("cluster.serviceAccountKey: %w", err)
		}
		files = append(files, struct {
			name string
			data []byte
			mode os.FileMode
		}{"sa.pub", pub, 0o644})
	}
	for _, f := range files {
		if len(f.data) == 0 {
			continue
		}
		if err := os.WriteFile(filepath.Join(pkiDir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func publicKeyPEM(keyPEM []byte) ([]byte, error) {
	key, err := pki.ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

func (k *Kube) peerURL() string {
	return "https://" + net.JoinHostPort(k.NodeIPs[0].String(), strconv.Itoa(etcdPeerPort))
}

// kubeadmPhases runs kubeadm init phases with the config written from cp.
func (k *Kube) kubeadmPhases(ctx context.Context, cp ControlPlane, phases ...[]string) error {
	cfg, err := KubeadmConfig(cp)
	if err != nil {
		return err
	}
	if err := os.WriteFile(k.path(kubeadmConfigFile), cfg, 0o600); err != nil {
		return err
	}
	for _, phase := range phases {
		t := time.Now()
		args := append(append([]string{"init", "phase"}, phase...), "--config", k.path(kubeadmConfigFile))
		if err := k.run(ctx, "kubeadm", filepath.Join(k.System, "usr/bin/kubeadm"), args...); err != nil {
			return err
		}
		k.Log.Info("kubeadm phase done", "phase", strings.Join(phase, " "), "took", time.Since(t).Round(10*time.Millisecond))
	}
	return nil
}

// joinControlPlane makes this node's certificates from the shared CAs,
// enters etcd as a learner (removing its stale member after a wipe) and
// renders etcd with the members it joins. It returns the learner's ID to
// promote once kubelet runs it.
func (k *Kube) joinControlPlane(ctx context.Context) (uint64, error) {
	sp, err := k.payload()
	if err != nil {
		return 0, err
	}
	cp := k.controlPlaneConfig(sp.Versions.Kubernetes)
	if err := k.writeSharedPKI(); err != nil {
		return 0, err
	}
	if err := k.kubeadmPhases(ctx, cp, []string{"certs", "all"}, []string{"kubeconfig", "all"}, []string{"control-plane", "all"}); err != nil {
		return 0, err
	}
	client, err := k.etcdClient()
	if err != nil {
		return 0, err
	}
	defer client.CloseIdle()
	who, _ := k.existingCluster(ctx)
	if err := k.writeMark(etcdJoinedMark, who); err != nil {
		return 0, err
	}
	j := &etcdmember.Joiner{Client: client, Name: k.NodeName, PeerURL: k.peerURL(), Log: k.Log}
	var self etcdmember.Member
	var initial string
	for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
		if self, initial, err = j.Join(ctx); err == nil {
			break
		}
		k.Log.Warn("etcd join", "err", err)
		k.update(func(s *KubeStatus) { s.LastError = err.Error() })
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(wait):
		}
	}
	k.update(func(s *KubeStatus) { s.Etcd, s.EtcdMemberID = "learner", fmt.Sprintf("%x", self.ID) })
	cp.EtcdExtraArgs = map[string]string{"initial-cluster": initial, "initial-cluster-state": "existing"}
	return self.ID, k.kubeadmPhases(ctx, cp, []string{"etcd", "local"})
}

// unpromotedLearner is this node's member ID when it is still a learner
// (a restart between joining and promotion); 0 otherwise.
func (k *Kube) unpromotedLearner(ctx context.Context) uint64 {
	if !k.exists(etcdJoinedMark) {
		return 0
	}
	c, err := k.etcdClient()
	if err != nil {
		return 0
	}
	defer c.CloseIdle()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	members, _, err := c.MemberList(lctx)
	if err != nil {
		return 0
	}
	for _, m := range members {
		if m.IsLearner && (m.Name == k.NodeName || slices.Contains(m.PeerURLs, k.peerURL())) {
			return m.ID
		}
	}
	return 0
}

// promote promotes this node's learner once it has caught up.
func (k *Kube) promote(ctx context.Context, id uint64) error {
	// The peers only: this node's etcd is the learner, which refuses member calls.
	client, err := k.etcdClient()
	if err != nil {
		return err
	}
	defer client.CloseIdle()
	j := &etcdmember.Joiner{Client: client, Name: k.NodeName, PeerURL: k.peerURL(), Log: k.Log, Backoff: 2 * time.Second}
	if err := j.Promote(ctx, id); err != nil {
		return err
	}
	k.update(func(s *KubeStatus) { s.Etcd = "member" })
	return nil
}

// workerServer is where a worker's kubelet reaches the API: the local
// proxy when it runs, else the API VIP, else the first apiserver.
func (k *Kube) workerServer() (string, error) {
	switch {
	case k.ProxyPort != 0:
		return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(k.ProxyPort)), nil
	case len(k.Cluster.APIVIPs) > 0:
		return "https://" + net.JoinHostPort(k.Cluster.APIVIPs[0].String(), strconv.Itoa(apiServerPort)), nil
	case len(k.Cluster.APIServers) > 0:
		return "https://" + k.Cluster.APIServers[0], nil
	}
	return "", errors.New("no API endpoint: set cluster.apiServers (the proxy's backends) or cluster.apiVIPs")
}

// BootstrapKubeconfig is a kubelet bootstrap kubeconfig: the cluster CA
// and a bootstrap token, for TLS bootstrap.
func BootstrapKubeconfig(server string, caPEM []byte, token string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: kubelet-bootstrap
  user:
    token: %s
contexts:
- name: bootstrap
  context: {cluster: cluster, user: kubelet-bootstrap}
current-context: bootstrap
`, server, base64.StdEncoding.EncodeToString(caPEM), token))
}

// writeWorkerFiles writes the cluster CA and the bootstrap kubeconfig
// kubelet joins with.
func (k *Kube) writeWorkerFiles() error {
	if len(k.Cluster.CACert) == 0 {
		return errors.New("cluster.ca.certificate is missing: a worker trusts the apiservers through it")
	}
	if k.Cluster.Token == "" {
		return errors.New("cluster.token is missing: a worker joins with the cluster's bootstrap token")
	}
	server, err := k.workerServer()
	if err != nil {
		return err
	}
	pkiDir := k.path("etc/kubernetes/pki")
	if err := os.MkdirAll(pkiDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(pkiDir, "ca.crt"), k.Cluster.CACert, 0o644); err != nil {
		return err
	}
	return os.WriteFile(k.path(bootstrapKubelet), BootstrapKubeconfig(server, k.Cluster.CACert, k.Cluster.Token), 0o600)
}

// waitKubeletKubeconfig waits for kubelet's TLS bootstrap to write its
// kubeconfig and loads it.
func (k *Kube) waitKubeletKubeconfig(ctx context.Context) (*KubeClient, error) {
	var last error
	for {
		c, err := LoadKubeconfig(k.path(kubeletKubeconfig), "")
		if err == nil {
			return c, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("kubelet's TLS bootstrap: %w (last: %v)", ctx.Err(), last)
		case <-time.After(2 * time.Second):
		}
	}
}
