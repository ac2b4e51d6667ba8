package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/initagent/agent"
	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/runtime"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// TestGenClusterSecrets: the fragment nodectl writes is a valid cluster
// section for a control plane with peers, and its ca.certificate and
// token for a worker.
func TestGenClusterSecrets(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"gen", "cluster-secrets"}, &out); err != nil {
		t.Fatal(err)
	}
	var frag struct {
		Cluster map[string]any `yaml:"cluster"`
	}
	if err := yaml.Unmarshal(out.Bytes(), &frag); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	cp := frag.Cluster
	cp["role"], cp["peers"] = "control-plane", []string{"10.0.0.6"}
	doc, _ := yaml.Marshal(map[string]any{"apiVersion": config.APIVersion, "kind": "MachineConfig", "cluster": cp})
	cfg, _, err := config.Parse(doc)
	if err != nil {
		t.Fatalf("control plane with the generated secrets: %v", err)
	}
	if !config.TokenRE.MatchString(cfg.Cluster.Token) {
		t.Errorf("token %q", cfg.Cluster.Token)
	}
	worker := map[string]any{"role": "worker", "token": cp["token"], "ca": map[string]any{"certificate": cfg.Cluster.CA.Certificate}}
	doc, _ = yaml.Marshal(map[string]any{"apiVersion": config.APIVersion, "kind": "MachineConfig", "cluster": worker})
	if _, _, err := config.Parse(doc); err != nil {
		t.Errorf("worker with the generated CA certificate and token: %v", err)
	}
	var again bytes.Buffer
	_ = run([]string{"gen", "cluster-secrets"}, &again)
	if bytes.Equal(again.Bytes(), out.Bytes()) {
		t.Error("two runs made the same secrets")
	}
}

// serveTLS serves srv's mTLS API with the node certificate of pki init.
func serveTLS(t *testing.T, srv *api.Server, pkiDir string) string {
	t.Helper()
	read := func(n string) string {
		b, err := os.ReadFile(filepath.Join(pkiDir, n))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	conf, err := api.TLSConfig(config.APITLS{Certificate: read("node-node-1.crt"), Key: read("node-node-1.key"), ClientCA: read("ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	var tl api.TLSListener
	tl.Set(conf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLSListener(ctx, ln, &tl) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// TestBootstrapAndKubeconfigThroughNodectl drives a control plane's and a
// worker's API (real runtime.Kube on temp roots) with nodectl over mTLS
// and the local socket.
func TestBootstrapAndKubeconfigThroughNodectl(t *testing.T) {
	dir := t.TempDir()
	pkiDir := filepath.Join(dir, "pki")
	var out bytes.Buffer
	if err := run([]string{"pki", "init", "--dir", pkiDir, "--node", "node-1", "--ip", "127.0.0.1"}, &out); err != nil {
		t.Fatal(err)
	}
	secrets, err := pki.NewClusterSecrets(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	noEtcd, _ := net.Listen("tcp", "127.0.0.1:0") // a peer address where no etcd answers
	noEtcd.Close()
	kube := func(role string) *runtime.Kube {
		root := t.TempDir()
		return &runtime.Kube{Root: root, System: filepath.Join(root, "system"), Role: role, NodeName: "cp-1",
			NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.5")},
			Cluster: runtime.Cluster{Name: "prod", APIVIPs: []netip.Addr{netip.MustParseAddr("10.0.0.100")},
				Peers:      []netip.Addr{netip.MustParseAddr("127.0.0.1")},
				EtcdCACert: []byte(secrets.EtcdCA.Certificate), EtcdCAKey: []byte(secrets.EtcdCA.Key)},
			EtcdClientPort: noEtcd.Addr().(*net.TCPAddr).Port, Log: slog.New(slog.DiscardHandler)}
	}
	cp, worker, joined := kube("control-plane"), kube("worker"), kube("control-plane")
	// The cluster CA as kubeadm's certs phase leaves it.
	pkiKube := filepath.Join(cp.Root, "etc/kubernetes/pki")
	if err := os.MkdirAll(pkiKube, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(pkiKube, "ca.crt"), []byte(secrets.CA.Certificate), 0o644)
	os.WriteFile(filepath.Join(pkiKube, "ca.key"), []byte(secrets.CA.Key), 0o600)
	if err := os.MkdirAll(filepath.Join(joined.Root, "var/lib/ballast"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(joined.Root, "var/lib/ballast/etcd-joined"), []byte("https://10.0.0.6:2379 (members: cp-2)\n"), 0o644)

	nc, err := loadNodeConfig(filepath.Join(pkiDir, "nodeconfig.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]*runtime.Kube{"cp": cp, "worker": worker, "joined": joined}
	base := nc.Nodes[0]
	nc.Nodes = nil
	for name, k := range nodes {
		store, err := slot.NewDir(filepath.Join(t.TempDir(), "slots"))
		if err != nil {
			t.Fatal(err)
		}
		srv := &api.Server{Log: slog.New(slog.DiscardHandler), Txn: &txn.Manager{Store: store, Network: hostless{}}, Hostname: name,
			Cluster: agent.ClusterCalls(k), ConsoleAccess: api.Full}
		n := base
		n.Name, n.Endpoint = name, serveTLS(t, srv, pkiDir)
		nc.Nodes = append(nc.Nodes, n)
		if name == "cp" {
			sock := filepath.Join(dir, "cp.sock")
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.ServeLocal(ctx, sock) }()
			t.Cleanup(func() { cancel(); <-done })
			for i := 0; ; i++ {
				if _, err := os.Stat(sock); err == nil {
					break
				} else if i == 100 {
					t.Fatal("socket never appeared")
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	ncPath := filepath.Join(pkiDir, "nodeconfig.yaml")
	writeNodeConfig(t, ncPath, nc)
	nodectl := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(append([]string{"--nodeconfig", ncPath}, args...), &out)
		return out.String(), err
	}

	if o, err := nodectl("--node", "cp", "bootstrap"); err != nil || !strings.Contains(o, "bootstrapping") {
		t.Fatalf("bootstrap: %v %s", err, o)
	}
	if o, err := nodectl("--node", "cp", "bootstrap"); err != nil || !strings.Contains(o, "already bootstrapped") {
		t.Errorf("second bootstrap: %v %s", err, o)
	}
	if _, err := nodectl("--node", "joined", "bootstrap"); err == nil || !strings.Contains(err.Error(), "a cluster exists") ||
		!strings.Contains(err.Error(), "cp-2") {
		t.Errorf("bootstrap on a node that joined: %v", err)
	}
	if _, err := nodectl("--node", "worker", "bootstrap"); err == nil || !strings.Contains(err.Error(), "worker") {
		t.Errorf("bootstrap on a worker: %v", err)
	}
	// The refusals answer 409 Conflict.
	for _, name := range []string{"joined", "worker"} {
		n, _ := nc.node(name)
		c, err := nc.tlsClient(n, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Post("https://"+n.Endpoint+"/v1/bootstrap", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusConflict {
			t.Errorf("bootstrap on %s answered %d, want 409", name, resp.StatusCode)
		}
	}

	kc := filepath.Join(dir, "kubeconfig")
	if o, err := nodectl("--node", "cp", "kubeconfig", "-o", kc); err != nil || !strings.Contains(o, "wrote "+kc) {
		t.Fatalf("kubeconfig: %v %s", err, o)
	}
	client, err := runtime.LoadKubeconfig(kc, "")
	if err != nil {
		t.Fatal(err)
	}
	if client.Server != "https://10.0.0.100:6443" {
		t.Errorf("kubeconfig server %s, want the API VIP", client.Server)
	}
	var user struct {
		Users []struct {
			User struct {
				Cert string `yaml:"client-certificate-data"`
			} `yaml:"user"`
		} `yaml:"users"`
	}
	data, _ := os.ReadFile(kc)
	_ = yaml.Unmarshal(data, &user)
	certPEM, _ := base64.StdEncoding.DecodeString(user.Users[0].User.Cert)
	cert, err := pki.ParseCertificate(certPEM)
	if err != nil {
		t.Fatalf("client certificate: %v\n%s", err, data)
	}
	caCert, _ := pki.ParseCertificate([]byte(secrets.CA.Certificate))
	if err := cert.CheckSignatureFrom(caCert); err != nil {
		t.Errorf("client certificate not signed by the cluster CA: %v", err)
	}
	if cert.Subject.CommonName != "admin" || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "system:masters" ||
		cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || cert.NotAfter.After(time.Now().Add(366*24*time.Hour)) {
		t.Errorf("client certificate %v, usages %v, until %s", cert.Subject, cert.ExtKeyUsage, cert.NotAfter)
	}
	if _, err := nodectl("--node", "worker", "kubeconfig"); err == nil || !strings.Contains(err.Error(), "worker") {
		t.Errorf("kubeconfig from a worker: %v", err)
	}
	var sockOut bytes.Buffer
	if err := run([]string{"--socket", filepath.Join(dir, "cp.sock"), "kubeconfig"}, &sockOut); err == nil || !strings.Contains(err.Error(), "client certificate") {
		t.Errorf("kubeconfig without a client certificate: %v", err)
	}
}
