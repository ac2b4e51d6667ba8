package qemutests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/payload"
	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/boottime"
	"github.com/ballast-os/ballast/initagent/runtime"
)

// kubeTimeout bounds a control plane's first start under TCG emulation
// (etcd, kube-apiserver and friends on emulated CPUs); nothing asserts on
// how long it takes.
const kubeTimeout = 30 * time.Minute

// TestKubernetesControlPlane boots the control-plane image with the real
// payload (containerd, runc, kubelet, kubeadm, etcd and the control-plane
// images from system.sqfs, nothing pulled) from its disk: slot A's system
// image and STATE at /var, the machine config from the lab. The node has two
// subnets on its NIC and kubelet.nodeIP.subnets names the one that does not
// hold the default route, so kubelet's own guess would be the wrong one.
// From the lab the test waits for the node to be Ready through the API,
// checks the node's address is the nodeIP decision, runs a pod from a
// preloaded image on the bridge CNI network and reads its logs.
func TestKubernetesControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the payload and boots a control plane under emulation")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*kubeTimeout)
	defer cancel()
	b := &payload.Builder{Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	sys, err := b.System(ctx, payload.RoleControlPlane)
	must(t, err)
	sysInfo, err := os.Stat(sys)
	must(t, err)
	dir := buildKubeImage(t, sys)

	lab := newLab(t)
	must(t, ip("-n", lab.Name, "addr", "add", "198.51.100.1/24", "dev", "br0"))
	ca, caPair, err := pki.NewAuthority("kubernetes", 24*time.Hour)
	must(t, err)
	const nodeIP = "198.51.100.20"
	doc := kubeNodeConfig(t, caPair)
	must(t, lab.Serve(8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, doc) })))
	sum := sha256.Sum256([]byte(doc))

	disk := filepath.Join(t.TempDir(), "disk.raw")
	sparseCopy(t, filepath.Join(dir, image.RawFile("control-plane")), disk, 8<<30)
	nic, err := lab.Tap("52:54:00:00:00:61")
	must(t, err)
	r, err := image.LoadRecipe("control-plane")
	must(t, err)
	// The console port serves the read-only API: the services' logs when something fails.
	sock := filepath.Join(t.TempDir(), "api.sock")
	nic = append(nic, "-device", "virtio-serial-pci", "-chardev", "socket,id=api,path="+sock+",server=on,wait=off",
		"-device", "virtserialport,chardev=api,name="+api.VirtioPortName)
	start := time.Now()
	vm, err := StartVM(VMOptions{
		Kernel: filepath.Join(dir, image.KernelFile), Initrd: filepath.Join(dir, image.InitramfsFile),
		Cmdline: append(append([]string{}, r.Cmdline...), "ballast.slot=a",
			"ballast.config=http://192.0.2.1:8080/node.yaml", "ballast.config.sha256="+hex.EncodeToString(sum[:])),
		MemoryMiB: 4096, CPUs: 2, Accel: *accelFlag, Netns: lab.Name,
		// TCG's default CPU model lacks the vector and hash instructions Go's
		// crypto/sha256 and zstd use.
		Args: append(nic, "-cpu", "max", "-drive", "if=virtio,format=raw,file="+disk),
	})
	must(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			for _, service := range []string{"kubelet", "containerd", "kubeadm"} {
				resp, err := apiClient(sock).Get("http://node/v1/logs?service=" + service + "&lines=60")
				if err != nil {
					t.Logf("%s log: %v", service, err)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Logf("last %s lines:\n%s", service, body)
			}
			t.Logf("last 300 console lines:\n%s", vm.Tail(300))
		}
		vm.Kill()
	})

	since := func() time.Duration { return time.Since(start).Round(100 * time.Millisecond) }
	bootCtx, bootCancel := context.WithTimeout(ctx, kubeTimeout)
	defer bootCancel()
	m, i := expectLine(t, vm, bootCtx, `msg="nodeip decided" kubelet=(\S+)`, 0)
	if m[1] != nodeIP {
		t.Fatalf("nodeIP decision %s, want %s (kubelet.nodeIP.subnets)", m[1], nodeIP)
	}
	// Issue 21: the images are registered in place before containerd starts, nothing imported.
	m, i = expectLine(t, vm, bootCtx, `msg="images registered" part=kube images=(\d+) added=(\S+) removed=\S* new_layers=(\d+) took=(\S+)`, i)
	if m[1] != "7" || m[3] != "5" {
		t.Errorf("first boot registered %s images with %s new layers, want 7 and 5 (images: pause, 4 kube, CoreDNS, etcd; snapshots: the shared kube layer, kube-proxy's nft layer on it, pause, CoreDNS, etcd)", m[1], m[3])
	}
	imagesTook := m[4]
	_, i = expectLine(t, vm, bootCtx, `msg="containerd ready" part=kube`, i)
	containerdReady := since()
	_, i = expectLine(t, vm, bootCtx, `msg="kubelet started" part=kube`, i)
	kubeletStarted := since()

	admin, err := ca.Issue(pki.Request{CommonName: "ballast-test", Organization: []string{"system:masters"}, Client: true})
	must(t, err)
	kc, err := runtime.NewKubeClient("https://"+net.JoinHostPort(nodeIP, "6443"), caPair.CertPEM, admin.CertPEM, admin.KeyPEM)
	must(t, err)
	kc.HTTP.Transport.(*http.Transport).DialContext = lab.DialContext

	var node *runtime.Node
	for {
		n, err := kc.GetNode(bootCtx, "ballast-cp")
		if err == nil {
			if ready, _ := n.Ready(); ready {
				node = n
				break
			}
		}
		if bootCtx.Err() != nil {
			t.Fatalf("node never Ready: last %v %+v", err, n)
		}
		time.Sleep(2 * time.Second)
	}
	nodeReady := since()
	if ips := node.InternalIPs(); len(ips) != 1 || ips[0] != nodeIP {
		t.Errorf("node InternalIPs %v, want exactly [%s] (the nodeIP decision)", ips, nodeIP)
	}
	m, _ = expectLine(t, vm, bootCtx, `msg="kubernetes node ready" part=kube node=ballast-cp sinceBoot=\S+ internalIPs=(\S+) agentRSSKiB=(\d+) memUsedKiB=(\d+)`, i)
	if m[1] != nodeIP {
		t.Errorf("agent saw node addresses %s, want %s", m[1], nodeIP)
	}

	runPod(t, bootCtx, kc)
	podDone := since()
	if console := vm.Tail(vm.Lines()); strings.Contains(console, "images import") || strings.Contains(console, "unpacking") {
		t.Errorf("the console shows an image import or unpack")
	}

	var status struct {
		Sections struct {
			Boot []boottime.Mark `json:"boot"`
		} `json:"sections"`
	}
	if resp, err := apiClient(sock).Get("http://node/v1/status"); err == nil {
		json.NewDecoder(resp.Body).Decode(&status)
		resp.Body.Close()
	}
	t.Logf("figures: boot timeline (seconds since the kernel started) %v", status.Sections.Boot)
	t.Logf("figures: QEMU start → containerd ready %v, → kubelet started %v, → node Ready %v, → first pod completed %v; "+
		"images registered in %s; initagent RSS %s KiB; memory used at Ready %s KiB; system.sqfs %.1f MB", containerdReady,
		kubeletStarted, nodeReady, podDone, imagesTook, m[2], m[3], float64(sysInfo.Size())/1e6)
}

// buildKubeImage builds the control-plane recipe with the payload's system image.
func buildKubeImage(t *testing.T, sys string) string {
	t.Helper()
	r, err := image.LoadRecipe("control-plane")
	must(t, err)
	src, err := image.FindSourceDir(".")
	must(t, err)
	out := filepath.Join(t.TempDir(), "out")
	_, err = image.Build(context.Background(), image.Options{
		Recipe: r, OutDir: out, SourceDir: src, SystemImage: sys, Progress: testWriter{t}, Log: slog.New(slog.DiscardHandler),
	})
	must(t, err)
	return filepath.Join(out, r.Name)
}

func kubeNodeConfig(t *testing.T, caPair pki.Pair) string {
	t.Helper()
	cfg := map[string]any{
		"apiVersion": "ballast.dev/v1alpha1",
		"kind":       "MachineConfig",
		"network": map[string]any{
			"interfaces": []any{map[string]any{
				"name":      "eth0",
				"addresses": []string{"192.0.2.20/24", "198.51.100.20/24"},
				"routes":    []any{map[string]string{"to": "default", "via": "192.0.2.1"}},
			}},
			"dns": map[string]any{"servers": []string{"192.0.2.1"}, "search": []string{"lab.test"}},
		},
		"cluster": map[string]any{
			"name": "lab", "domain": "example", "role": "control-plane",
			"podCIDRs": []string{"10.244.0.0/16"}, "serviceCIDRs": []string{"10.96.0.0/12"},
			"ca": map[string]string{"certificate": string(caPair.CertPEM), "key": string(caPair.KeyPEM)},
		},
		"kubelet": map[string]any{"nodeIP": map[string]any{"subnets": []string{"198.51.100.0/24"}}},
	}
	data, err := yaml.Marshal(cfg)
	must(t, err)
	return string(data)
}

// runPod runs `etcd --version` from the preloaded etcd image as a pod on
// the pod network and reads its log through the API (apiserver → kubelet).
func runPod(t *testing.T, ctx context.Context, kc *runtime.KubeClient) {
	t.Helper()
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": "hello", "namespace": "default"},
		"spec": map[string]any{
			"restartPolicy": "Never",
			// The service-account token volume is mounted: kubelet runs the
			// system image's mount (u-root's) for it.
			"tolerations": []any{map[string]string{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}},
			"containers": []any{map[string]any{
				"name": "hello", "image": "registry.k8s.io/etcd:" + etcdTag(t), "imagePullPolicy": "Never",
				"command": []string{"etcd", "--version"},
			}},
		},
	}
	// The default service account appears once the controller manager runs.
	for {
		err := kc.Do(ctx, http.MethodPost, "/api/v1/namespaces/default/pods", pod, nil)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("create pod: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
	var phase string
	for {
		var p struct {
			Status struct {
				Phase  string `json:"phase"`
				PodIPs []struct {
					IP string `json:"ip"`
				} `json:"podIPs"`
			} `json:"status"`
		}
		if err := kc.Do(ctx, http.MethodGet, "/api/v1/namespaces/default/pods/hello", nil, &p); err == nil {
			phase = p.Status.Phase
			if phase == "Succeeded" || phase == "Failed" {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("pod never finished; phase %q", phase)
		}
		time.Sleep(2 * time.Second)
	}
	if phase != "Succeeded" {
		t.Errorf("pod phase %s", phase)
	}
	log, err := kc.Raw(ctx, http.MethodGet, "/api/v1/namespaces/default/pods/hello/log", nil)
	must(t, err)
	if !regexp.MustCompile(`etcd Version: 3\.7\.`).Match(log) {
		t.Errorf("pod log:\n%s", log)
	}
	t.Logf("pod log: %s", strings.TrimSpace(string(log)))
}

// etcdTag is the etcd image tag the pinned kubeadm expects (and the system image holds).
func etcdTag(t *testing.T) string {
	tag, _, err := (&payload.Builder{}).KubeadmImageTags(context.Background())
	must(t, err)
	return tag
}
