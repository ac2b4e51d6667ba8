package runtime

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func testControlPlane() ControlPlane {
	return ControlPlane{KubernetesVersion: "v1.37.2", ClusterName: "prod", DNSDomain: "cluster.local", NodeName: "cp-1",
		NodeIP: netip.MustParseAddr("10.0.0.5"), APIVIPs: []netip.Addr{netip.MustParseAddr("10.0.0.100")},
		ExtraSANs:    []string{"api.prod.example.com"},
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
		CRISocket:    "unix:///run/containerd/containerd.sock", KubeletNodeIP: "10.0.0.5"}
}

func TestKubeadmConfig(t *testing.T) {
	data, err := KubeadmConfig(testControlPlane())
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for {
		var d map[string]any
		if err := dec.Decode(&d); err != nil {
			break
		}
		docs = append(docs, d)
	}
	if len(docs) != 3 || docs[0]["kind"] != "InitConfiguration" || docs[1]["kind"] != "ClusterConfiguration" ||
		docs[2]["kind"] != "KubeProxyConfiguration" || docs[2]["mode"] != "nftables" {
		t.Fatalf("documents: %s", data)
	}
	text := string(data)
	for _, want := range []string{"controlPlaneEndpoint: 10.0.0.100:6443", "advertiseAddress: 10.0.0.5", "imagePullPolicy: Never",
		"name: bind-address", "value: 10.0.0.5", "- api.prod.example.com", "podSubnet: 10.244.0.0/16", "dataDir: /var/lib/etcd",
		"clusterCIDR: 10.244.0.0/16", "maxPerCore: 0"} {
		if !strings.Contains(text, want) {
			t.Errorf("config lacks %q:\n%s", want, text)
		}
	}
	cp := testControlPlane()
	cp.NodeIP = netip.Addr{}
	if _, err := KubeadmConfig(cp); err == nil {
		t.Error("no node address accepted")
	}
}

// TestKubeadmAcceptsItsConfig asks the real kubeadm, when the payload has
// been built, to validate the config.
func TestKubeadmAcceptsItsConfig(t *testing.T) {
	bin := os.Getenv("BALLAST_KUBEADM")
	if bin == "" {
		home, _ := os.UserHomeDir()
		m, _ := filepath.Glob(filepath.Join(home, ".cache/ballast/payload/*/kubeadm"))
		if len(m) == 0 {
			t.Skip("no kubeadm binary: build the payload (image/payload) or set BALLAST_KUBEADM")
		}
		bin = m[len(m)-1]
	}
	cp := testControlPlane()
	// A joiner's config, with everything this package may set.
	cp.BootstrapToken = "abcdef.0123456789abcdef"
	cp.EtcdExtraArgs = map[string]string{"initial-cluster": "cp-1=https://10.0.0.5:2380,cp-2=https://10.0.0.6:2380", "initial-cluster-state": "existing"}
	data, err := KubeadmConfig(cp)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "kubeadm.yaml")
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "config", "validate", "--config", f).CombinedOutput()
	if err != nil {
		t.Fatalf("kubeadm config validate: %v\n%s\n%s", err, out, data)
	}
}

// TestKubeadmRendersJoinerEtcd asks the real kubeadm (chrooted into a
// temporary root with --rootfs) to render a joining control plane's etcd:
// the members it joins and initial-cluster-state=existing replace
// kubeadm's single-member defaults, and etcd listens for the agent's
// gateway calls on the node address.
func TestKubeadmRendersJoinerEtcd(t *testing.T) {
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
	cp := testControlPlane()
	cp.NodeName, cp.NodeIP = "cp-2", netip.MustParseAddr("10.0.0.6")
	initial := "cp-1=https://10.0.0.5:2380,cp-2=https://10.0.0.6:2380"
	cp.EtcdExtraArgs = map[string]string{"initial-cluster": initial, "initial-cluster-state": "existing"}
	data, err := KubeadmConfig(cp)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "kubeadm.yaml"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "init", "phase", "etcd", "local", "--config", "/kubeadm.yaml", "--rootfs", root).CombinedOutput()
	if err != nil {
		t.Fatalf("kubeadm: %v\n%s", err, out)
	}
	manifest, err := os.ReadFile(filepath.Join(root, "etc/kubernetes/manifests/etcd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := string(manifest)
	for _, want := range []string{"- --initial-cluster=" + initial + "\n", "- --initial-cluster-state=existing\n", "- --name=cp-2\n",
		"- --initial-advertise-peer-urls=https://10.0.0.6:2380\n", "- --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.6:2379\n"} {
		if !strings.Contains(m, want) {
			t.Errorf("etcd manifest lacks %q:\n%s", want, m)
		}
	}
	if strings.Count(m, "--initial-cluster=") != 1 || strings.Contains(m, "enable-grpc-gateway=false") {
		t.Errorf("etcd manifest:\n%s", m)
	}
}
