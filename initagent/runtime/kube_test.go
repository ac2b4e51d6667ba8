package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/boottime"
)

func testKube(t *testing.T) *Kube {
	root := t.TempDir()
	return &Kube{Root: root, System: filepath.Join(root, "run/ballast/system"), Role: "control-plane", NodeName: "cp-1",
		NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("2001:db8::5")},
		Cluster: Cluster{Name: "prod", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
			ExtraSANs: []string{"api.prod.example.com"}},
		Log: slog.New(slog.DiscardHandler)}
}

// TestPrepareHost: /etc/kubernetes becomes a link onto /var (so the PKI and
// manifests survive reboots), kubelet finds /etc/passwd, and the machine ID
// stays the same across boots.
func TestPrepareHost(t *testing.T) {
	k := testKube(t)
	if err := k.prepareHost(); err != nil {
		t.Fatal(err)
	}
	target, err := os.Readlink(k.path("etc/kubernetes"))
	if err != nil || target != k.path(kubernetesState) {
		t.Fatalf("/etc/kubernetes → %q, %v", target, err)
	}
	if data, err := os.ReadFile(k.path("etc/passwd")); err != nil || !strings.HasPrefix(string(data), "root:x:0:0:") {
		t.Errorf("/etc/passwd: %q %v", data, err)
	}
	if data, err := os.ReadFile(k.path("etc/hosts")); err != nil || !strings.Contains(string(data), "10.0.0.5\tcp-1\n") {
		t.Errorf("/etc/hosts: %q %v", data, err)
	}
	id1, _ := os.ReadFile(k.path("etc/machine-id"))
	os.Remove(k.path("etc/machine-id")) // a reboot: / is in memory, /var is not
	if err := k.prepareHost(); err != nil {
		t.Fatal(err)
	}
	id2, _ := os.ReadFile(k.path("etc/machine-id"))
	if len(id1) != 33 || string(id1) != string(id2) {
		t.Errorf("machine-id %q then %q", id1, id2)
	}

	k2 := testKube(t)
	if err := os.MkdirAll(k2.path("etc/kubernetes"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := k2.prepareHost(); err == nil || !strings.Contains(err.Error(), "is not the link") {
		t.Errorf("a real /etc/kubernetes directory: %v", err)
	}
}

// TestControlPlaneConfigFromNode: kubeadm gets the nodeIP decision as
// advertise address and kubelet --node-ip (both families), and the
// apiserver certificate covers the local proxy's 127.0.0.1.
func TestControlPlaneConfigFromNode(t *testing.T) {
	k := testKube(t)
	cp := k.controlPlaneConfig("v1.37.2")
	data, err := KubeadmConfig(cp)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"advertiseAddress: 10.0.0.5", "value: 10.0.0.5,2001:db8::5", "- 127.0.0.1", "- api.prod.example.com",
		"dnsDomain: cluster.local", "clusterName: prod", "criSocket: unix://" + k.path("run/containerd/containerd.sock")} {
		if !strings.Contains(string(data), want) {
			t.Errorf("kubeadm config lacks %q:\n%s", want, data)
		}
	}
	args := strings.Join(KubeletArgs(k.paths(), k.kubelet()), " ")
	if !strings.Contains(args, "--node-ip=10.0.0.5,2001:db8::5") || !strings.Contains(args, "--hostname-override=cp-1") {
		t.Errorf("kubelet args: %s", args)
	}
}

// TestCNIFollowsNodePodCIDRs: the bridge network takes the pod CIDR the
// controller manager gave the node, and there is none before it gives one.
func TestCNIFollowsNodePodCIDRs(t *testing.T) {
	k := testKube(t)
	p := k.paths()
	if err := os.MkdirAll(p.CNIConfDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var n Node
	n.Spec.PodCIDRs = []string{"10.244.3.0/24"}
	if err := k.writeCNI(p, &n); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(p.CNIConfDir, cniConfFile))
	if !strings.Contains(string(data), `"subnet": "10.244.3.0/24"`) {
		t.Errorf("CNI config:\n%s", data)
	}
	k2 := testKube(t)
	p2 := k2.paths()
	if err := os.MkdirAll(p2.CNIConfDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := k2.writeCNI(p2, &Node{}); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(p2.CNIConfDir, cniConfFile)); err == nil {
		t.Errorf("a CNI config before the node has podCIDRs:\n%s", data)
	}
}

// TestFailingChecks reads the failed checks out of kube-apiserver's
// verbose /readyz answer (the text it sends with status 500).
func TestFailingChecks(t *testing.T) {
	body := "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]etcd-readiness ok\n" +
		"[+]poststarthook/start-apiserver-admission-initializer ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\n" +
		"[-]poststarthook/apiservice-registration-controller failed: reason withheld\n[+]shutdown ok\nreadyz check failed"
	if got, want := failingChecks(body), "etcd,poststarthook/rbac/bootstrap-roles,poststarthook/apiservice-registration-controller"; got != want {
		t.Errorf("failingChecks = %q, want %q", got, want)
	}
	if got := failingChecks("Unauthorized"); got != "" {
		t.Errorf("failingChecks of a non-verbose answer = %q, want empty", got)
	}
}

// TestHoldManifests: the controller manager's and scheduler's manifests
// leave kubelet's static pod directory until the apiserver is ready and
// come back unchanged; the apiserver's and etcd's stay. A boot that stopped
// while they were held holds and releases them again.
func TestHoldManifests(t *testing.T) {
	k := testKube(t)
	dir := k.path("etc/kubernetes/manifests")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	all := []string{"etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml"}
	for _, m := range all {
		if err := os.WriteFile(filepath.Join(dir, m), []byte("# "+m+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	present := func() []string {
		var names []string
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	for round := range 2 {
		if err := k.holdManifests(); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(present(), ","); got != "etcd.yaml,kube-apiserver.yaml" {
			t.Fatalf("round %d: kubelet sees %s while the apiserver starts, want only etcd and kube-apiserver", round, got)
		}
		if round == 0 {
			continue // the node stopped here: the next boot holds again
		}
		if err := k.releaseManifests(); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(present(), ","); got != strings.Join(all, ",") {
		t.Fatalf("after the release kubelet sees %s, want %s", got, strings.Join(all, ","))
	}
	for _, m := range all {
		if data, err := os.ReadFile(filepath.Join(dir, m)); err != nil || string(data) != "# "+m+"\n" {
			t.Errorf("%s: %q %v", m, data, err)
		}
	}
}

// TestWaitControllers: the control-plane-running milestone comes once every
// health endpoint answers 200 (TLS with certificates nobody can verify, as
// the controller manager's and scheduler's own), not before; a boot that
// ends first leaves it unmarked.
func TestWaitControllers(t *testing.T) {
	var asked atomic.Int32
	slow := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if asked.Add(1) < 3 {
			http.Error(w, "[-]informer-sync failed", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	defer slow.Close()
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	defer up.Close()
	down := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not yet", http.StatusServiceUnavailable)
	}))
	defer down.Close()

	k := testKube(t)
	k.Since, k.Timeline = time.Now(), boottime.New(false)
	k.waitControllers(context.Background(), []string{up.URL + "/healthz", slow.URL + "/healthz"})
	if n := asked.Load(); n != 3 {
		t.Errorf("the slow endpoint was asked %d times, want 3 (healthy at the third)", n)
	}
	marks := k.Timeline.Marks()
	if len(marks) != 1 || marks[0].Name != boottime.ControlPlaneRunning || k.Status().ControllersRunning <= 0 {
		t.Errorf("timeline %v, status %+v: want %q marked", marks, k.Status(), boottime.ControlPlaneRunning)
	}

	k = testKube(t)
	k.Since, k.Timeline = time.Now(), boottime.New(false)
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	k.waitControllers(ctx, []string{up.URL + "/healthz", down.URL + "/healthz"})
	if marks := k.Timeline.Marks(); len(marks) != 0 || k.Status().ControllersRunning != 0 {
		t.Errorf("with one endpoint never healthy: timeline %v, status %+v; want nothing marked", marks, k.Status())
	}
}
