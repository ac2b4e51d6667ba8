package runtime

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/etcdmember/etcdtest"
)

// decodeDocs splits a kubeadm config into its documents.
func decodeDocs(t *testing.T, data []byte) []map[string]any {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for {
		var d map[string]any
		if err := dec.Decode(&d); err != nil {
			return docs
		}
		docs = append(docs, d)
	}
}

// TestKubeadmConfigJoinerAndToken: the bootstrap token lands in the
// InitConfiguration (never expiring, for node bootstrap), and a joiner's
// etcd gets the members it joins with initial-cluster-state=existing.
func TestKubeadmConfigJoinerAndToken(t *testing.T) {
	cp := testControlPlane()
	cp.BootstrapToken = "abcdef.0123456789abcdef"
	cp.EtcdExtraArgs = map[string]string{"initial-cluster": "cp-1=https://10.0.0.5:2380,cp-2=https://10.0.0.6:2380", "initial-cluster-state": "existing"}
	data, err := KubeadmConfig(cp)
	if err != nil {
		t.Fatal(err)
	}
	docs := decodeDocs(t, data)
	tokens, _ := docs[0]["bootstrapTokens"].([]any)
	if len(tokens) != 1 {
		t.Fatalf("bootstrapTokens %v:\n%s", docs[0]["bootstrapTokens"], data)
	}
	tok := tokens[0].(map[string]any)
	if tok["token"] != cp.BootstrapToken || tok["ttl"] != "0s" ||
		!strings.Contains(strings.Join(anyStrings(tok["usages"]), ","), "signing,authentication") ||
		anyStrings(tok["groups"])[0] != "system:bootstrappers:kubeadm:default-node-token" {
		t.Errorf("token %v", tok)
	}
	local := docs[1]["etcd"].(map[string]any)["local"].(map[string]any)
	args := map[string]string{}
	for _, a := range local["extraArgs"].([]any) {
		m := a.(map[string]any)
		args[m["name"].(string)] = m["value"].(string)
	}
	if args["initial-cluster-state"] != "existing" || args["initial-cluster"] != cp.EtcdExtraArgs["initial-cluster"] {
		t.Errorf("etcd extraArgs %v", args)
	}

	plain, _ := KubeadmConfig(testControlPlane())
	if strings.Contains(string(plain), "bootstrapTokens") || strings.Contains(string(plain), "extraArgs:\n            - name: initial-cluster") {
		t.Errorf("a lone control plane's config has a token or etcd args:\n%s", plain)
	}
}

func anyStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// TestWorkerFiles: a worker writes the CA and a bootstrap kubeconfig that
// names the local proxy, and kubelet gets --bootstrap-kubeconfig.
func TestWorkerFiles(t *testing.T) {
	_, caPair, _ := pki.NewAuthority("kubernetes", time.Hour)
	k := testKube(t)
	k.Role, k.ProxyPort = "worker", 7445
	if err := k.writeWorkerFiles(); err == nil || !strings.Contains(err.Error(), "cluster.ca.certificate") {
		t.Errorf("no CA: %v", err)
	}
	k.Cluster.CACert = caPair.CertPEM
	if err := k.writeWorkerFiles(); err == nil || !strings.Contains(err.Error(), "cluster.token") {
		t.Errorf("no token: %v", err)
	}
	k.Cluster.Token = "abcdef.0123456789abcdef"
	if err := k.writeWorkerFiles(); err != nil {
		t.Fatal(err)
	}
	if ca, _ := os.ReadFile(k.path("etc/kubernetes/pki/ca.crt")); !bytes.Equal(ca, caPair.CertPEM) {
		t.Error("pki/ca.crt is not the cluster CA")
	}
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string `yaml:"server"`
				CAData string `yaml:"certificate-authority-data"`
			} `yaml:"cluster"`
		} `yaml:"clusters"`
		Users []struct {
			User struct {
				Token string `yaml:"token"`
			} `yaml:"user"`
		} `yaml:"users"`
		Current string `yaml:"current-context"`
	}
	data, _ := os.ReadFile(k.path(bootstrapKubelet))
	if err := yaml.Unmarshal(data, &kc); err != nil {
		t.Fatal(err)
	}
	ca, _ := base64.StdEncoding.DecodeString(kc.Clusters[0].Cluster.CAData)
	if kc.Clusters[0].Cluster.Server != "https://127.0.0.1:7445" || kc.Users[0].User.Token != k.Cluster.Token ||
		!bytes.Equal(ca, caPair.CertPEM) || kc.Current != "bootstrap" {
		t.Errorf("bootstrap kubeconfig:\n%s", data)
	}
	args := strings.Join(KubeletArgs(k.paths(), k.kubelet()), " ")
	if !strings.Contains(args, "--bootstrap-kubeconfig="+k.path(bootstrapKubelet)) || !strings.Contains(args, "--kubeconfig="+k.path(kubeletKubeconfig)) {
		t.Errorf("kubelet args %s", args)
	}
	k.Role = "control-plane"
	if strings.Contains(strings.Join(KubeletArgs(k.paths(), k.kubelet()), " "), "bootstrap-kubeconfig") {
		t.Error("a control plane's kubelet bootstraps with a token")
	}

	// Without a proxy: the API VIP, else the first apiserver.
	k.ProxyPort = 0
	k.Cluster.APIServers = []string{"10.0.0.11:6443"}
	if s, _ := k.workerServer(); s != "https://10.0.0.11:6443" {
		t.Errorf("server without proxy and VIP %s", s)
	}
	k.Cluster.APIVIPs = []netip.Addr{netip.MustParseAddr("10.0.0.100")}
	if s, _ := k.workerServer(); s != "https://10.0.0.100:6443" {
		t.Errorf("server with a VIP %s", s)
	}
}

// TestSharedPKI: the shared CAs and the service-account key (with its
// public half) go where kubeadm reuses them.
func TestSharedPKI(t *testing.T) {
	k := testKube(t)
	_, ca, _ := pki.NewAuthority("kubernetes", time.Hour)
	_, etcdCA, _ := pki.NewAuthority("etcd-ca", time.Hour)
	_, fp, _ := pki.NewAuthority("front-proxy-ca", time.Hour)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	k.Cluster.CACert, k.Cluster.CAKey = ca.CertPEM, ca.KeyPEM
	k.Cluster.EtcdCACert, k.Cluster.EtcdCAKey = etcdCA.CertPEM, etcdCA.KeyPEM
	k.Cluster.FrontProxyCACert, k.Cluster.FrontProxyCAKey = fp.CertPEM, fp.KeyPEM
	k.Cluster.ServiceAccountKey = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := k.writeSharedPKI(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"ca.key": ca.KeyPEM, "etcd/ca.crt": etcdCA.CertPEM, "etcd/ca.key": etcdCA.KeyPEM,
		"front-proxy-ca.crt": fp.CertPEM, "sa.key": k.Cluster.ServiceAccountKey} {
		if got, _ := os.ReadFile(filepath.Join(k.path("etc/kubernetes/pki"), name)); !bytes.Equal(got, want) {
			t.Errorf("pki/%s differs", name)
		}
	}
	pub, _ := os.ReadFile(k.path("etc/kubernetes/pki/sa.pub"))
	b, _ := pem.Decode(pub)
	if b == nil {
		t.Fatalf("sa.pub %q", pub)
	}
	got, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil || !key.PublicKey.Equal(got) {
		t.Errorf("sa.pub is not the key's public half: %v", err)
	}
}

// TestBootstrap: idempotent on the node that bootstrapped, refused with
// the answering member on a node whose peer's etcd (real) has members,
// refused on a node that joined, and on workers.
func TestBootstrap(t *testing.T) {
	ctx := context.Background()
	etcdCA := etcdtest.NewCA(t)
	m := etcdtest.NewMember(t, "cp-1")

	node := func() *Kube {
		k := testKube(t)
		k.Cluster.Peers = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
		k.EtcdClientPort = m.ClientPort
		k.Cluster.EtcdCACert, k.Cluster.EtcdCAKey = etcdCA.Pair.CertPEM, etcdCA.Pair.KeyPEM
		k.init()
		return k
	}
	first := node()
	for i := range 2 {
		r, err := first.Bootstrap(ctx)
		if err != nil || r.Already != (i == 1) {
			t.Fatalf("bootstrap #%d: %+v %v", i+1, r, err)
		}
	}
	if _, err := os.Stat(first.path(etcdBootstrapMark)); err != nil {
		t.Fatalf("decision not persisted: %v", err)
	}
	select {
	case <-first.bootstrapReq:
	default:
		t.Error("the waiting Run was not told")
	}
	if kind, err := first.decide(ctx); err != nil || kind != bootstraps {
		t.Errorf("decide after bootstrap: %v %v", kind, err)
	}

	// The cluster exists: a peer's etcd answers with members.
	m.Bootstrap(t, etcdCA)
	second := node()
	_, err := second.Bootstrap(ctx)
	var exists *ClusterExistsError
	if !errors.As(err, &exists) || !strings.Contains(err.Error(), "cp-1") || !strings.Contains(err.Error(), strings.TrimPrefix(m.ClientURL(), "https://")) {
		t.Errorf("bootstrap beside a running cluster: %v, want a refusal naming the member", err)
	}
	if _, err := os.Stat(second.path(etcdBootstrapMark)); err == nil {
		t.Error("a refused bootstrap left the decision behind")
	}
	if kind, err := second.decide(ctx); err != nil || kind != joins {
		t.Errorf("decide beside a running cluster: %v %v, want joins", kind, err)
	}
	if s := second.Status(); s.Phase != PhaseWaitingBootstrap {
		t.Errorf("phase %q", s.Phase)
	}

	joined := node()
	joined.Cluster.Peers = nil
	if err := joined.writeMark(etcdJoinedMark, "https://10.0.0.5:2379"); err != nil {
		t.Fatal(err)
	}
	if _, err := joined.Bootstrap(ctx); !errors.As(err, &exists) {
		t.Errorf("bootstrap on a node that joined: %v", err)
	}
	worker := node()
	worker.Role = "worker"
	if _, err := worker.Bootstrap(ctx); !errors.Is(err, ErrNoEtcd) {
		t.Errorf("bootstrap on a worker: %v", err)
	}
}

// TestFinishPhases: the bootstrapping control plane (alone, or the one an
// operator bootstrapped) uploads the cluster config and creates the
// token and deploys the addons; a joiner only marks itself.
func TestFinishPhases(t *testing.T) {
	k := testKube(t)
	if got := fmt.Sprint(k.finishPhases()); got != "[[upload-config all] [mark-control-plane] [bootstrap-token] [addon all]]" {
		t.Errorf("lone control plane: %s", got)
	}
	k.Cluster.Peers = []netip.Addr{netip.MustParseAddr("10.0.0.6")}
	if got := fmt.Sprint(k.finishPhases()); got != "[[mark-control-plane]]" {
		t.Errorf("joiner: %s", got)
	}
	if err := k.writeMark(etcdBootstrapMark, "test"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(k.finishPhases()); !strings.Contains(got, "bootstrap-token") {
		t.Errorf("bootstrapped node with peers: %s", got)
	}
}

// TestKubeadmReusesSharedPKI: on a joiner's temporary root, the real
// kubeadm's certs phase keeps the shared CAs and service-account key the
// runtime wrote (ECDSA CAs as nodectl gen cluster-secrets makes them) and
// signs this node's certificates with them.
func TestKubeadmReusesSharedPKI(t *testing.T) {
	bin := os.Getenv("BALLAST_KUBEADM")
	if bin == "" {
		home, _ := os.UserHomeDir()
		m, _ := filepath.Glob(filepath.Join(home, ".cache/ballast/payload/*/kubeadm"))
		if len(m) == 0 {
			t.Fatal("no kubeadm binary: build the payload (make payload) or set BALLAST_KUBEADM")
		}
		bin = m[len(m)-1]
	}
	if os.Geteuid() != 0 {
		t.Fatal("kubeadm --rootfs chroots: run as root, as CI does")
	}
	k := testKube(t)
	_, ca, _ := pki.NewAuthority("kubernetes", time.Hour)
	_, etcdCA, _ := pki.NewAuthority("etcd-ca", time.Hour)
	_, fp, _ := pki.NewAuthority("front-proxy-ca", time.Hour)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	k.Cluster.CACert, k.Cluster.CAKey = ca.CertPEM, ca.KeyPEM
	k.Cluster.EtcdCACert, k.Cluster.EtcdCAKey = etcdCA.CertPEM, etcdCA.KeyPEM
	k.Cluster.FrontProxyCACert, k.Cluster.FrontProxyCAKey = fp.CertPEM, fp.KeyPEM
	k.Cluster.ServiceAccountKey = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	// The runtime's /etc/kubernetes is a link onto /var; relative here, so it resolves inside and outside the chroot.
	if err := os.MkdirAll(k.path("etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(k.path(kubernetesState), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../"+kubernetesState, k.path("etc/kubernetes")); err != nil {
		t.Fatal(err)
	}
	if err := k.writeSharedPKI(); err != nil {
		t.Fatal(err)
	}
	cfg, err := KubeadmConfig(k.controlPlaneConfig("v1.37.2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.path("kubeadm.yaml"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "init", "phase", "certs", "all", "--config", "/kubeadm.yaml", "--rootfs", k.Root).CombinedOutput()
	if err != nil {
		t.Fatalf("kubeadm: %v\n%s", err, out)
	}
	dir := k.path(kubernetesState + "/pki")
	for name, want := range map[string][]byte{"ca.crt": ca.CertPEM, "etcd/ca.crt": etcdCA.CertPEM, "front-proxy-ca.crt": fp.CertPEM,
		"sa.key": k.Cluster.ServiceAccountKey} {
		if got, _ := os.ReadFile(filepath.Join(dir, name)); !bytes.Equal(got, want) {
			t.Errorf("kubeadm replaced %s", name)
		}
	}
	for leaf, issuer := range map[string][]byte{"apiserver.crt": ca.CertPEM, "etcd/server.crt": etcdCA.CertPEM, "etcd/peer.crt": etcdCA.CertPEM,
		"apiserver-etcd-client.crt": etcdCA.CertPEM, "front-proxy-client.crt": fp.CertPEM} {
		data, err := os.ReadFile(filepath.Join(dir, leaf))
		if err != nil {
			t.Errorf("%s: %v", leaf, err)
			continue
		}
		c, _ := pki.ParseCertificate(data)
		i, _ := pki.ParseCertificate(issuer)
		if c == nil || c.CheckSignatureFrom(i) != nil {
			t.Errorf("%s is not signed by the shared CA", leaf)
		}
	}
}
