package payload

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/imagestore"
)

// TestPayloadIntegration builds the real payload (cold: tens of minutes on 2
// cores; warm: seconds) and checks the binaries, the images kubeadm expects
// and system.sqfs. Opt in with BALLAST_PAYLOAD_TEST=1; BALLAST_PAYLOAD_CACHE
// overrides the cache (default ~/.cache/ballast/payload).
func TestPayloadIntegration(t *testing.T) {
	if os.Getenv("BALLAST_PAYLOAD_TEST") != "1" {
		t.Skip("set BALLAST_PAYLOAD_TEST=1 to build the real payload")
	}
	needTool(t, "mksquashfs", "squashfs-tools")
	ctx := context.Background()
	b := &Builder{
		CacheDir: os.Getenv("BALLAST_PAYLOAD_CACHE"),
		Log:      slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	bins, err := b.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("Static", func(t *testing.T) {
		for name, path := range bins {
			if name != KubeBinary && slices.Contains(KubeCommands(), name) {
				continue // symlinks
			}
			if err := checkStatic(path); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	})
	t.Run("Versions", func(t *testing.T) {
		k8s := strings.TrimPrefix(KubernetesVersion, "v")
		for _, tc := range []struct {
			bin  string
			args []string
			want string
		}{
			{"kube-apiserver", []string{"--version"}, "Kubernetes v" + k8s},
			{"kube-controller-manager", []string{"--version"}, "Kubernetes v" + k8s},
			{"kube-scheduler", []string{"--version"}, "Kubernetes v" + k8s},
			{"kubelet", []string{"--version"}, "Kubernetes v" + k8s},
			{"kubeadm", []string{"version", "-o", "short"}, "v" + k8s},
			{"etcd", []string{"--version"}, "etcd Version: " + strings.TrimPrefix(EtcdVersion, "v")},
			{"containerd", []string{"--version"}, ContainerdVersion},
			{"containerd-shim-runc-v2", []string{"-v"}, ContainerdVersion},
			{"runc", []string{"--version"}, "runc version " + strings.TrimPrefix(RuncVersion, "v")},
			{"runc", []string{"--version"}, "libseccomp: 2."},
			{"bridge", nil, "CNI bridge plugin " + CNIPluginsVersion},
			{"pause", []string{"-v"}, PauseVersion},
		} {
			out, _ := exec.Command(bins[tc.bin], tc.args...).CombinedOutput()
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("%s %s = %q, want it to contain %q", tc.bin, strings.Join(tc.args, " "), out, tc.want)
			}
		}
		out, err := exec.Command(bins["runc"], "features").Output()
		var features struct {
			Linux struct {
				Seccomp struct{ Enabled bool }
			}
		}
		if err != nil || json.Unmarshal(out, &features) != nil || !features.Linux.Seccomp.Enabled {
			t.Errorf("runc features: seccomp not enabled (%v): %s", err, out)
		}
	})

	sqfs, err := b.System(ctx, RoleControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("ControlPlaneSystem", func(t *testing.T) {
		fi, err := os.Stat(sqfs)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %.1f MB", sqfs, float64(fi.Size())/1e6)
		// Issue 21: at most 100 MB (153 MB when the images were archives).
		if fi.Size() > 100e6 {
			t.Errorf("control-plane system.sqfs is %.1f MB, over the 100 MB budget", float64(fi.Size())/1e6)
		}
		if sizes, err := ReadSizes(sqfs); err != nil || len(sizes.Components) == 0 {
			t.Errorf("size report: %+v, %v", sizes, err)
		}
		listing := unsquashfsList(t, sqfs)
		if root, _ := exec.Command("unsquashfs", "-lln", sqfs).Output(); !strings.HasPrefix(string(root), "drwxr-xr-x 0/0") {
			t.Errorf("system.sqfs root directory: %.60q, want drwxr-xr-x root", root)
		}
		for _, p := range []string{
			"/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2", "/usr/bin/runc", "/usr/bin/kube",
			"/usr/bin/kubelet -> kube", "/usr/bin/kubeadm -> kube", "/usr/bin/mount", "/usr/bin/umount",
			"/opt/cni/bin/bridge", "/opt/cni/bin/host-local", "/opt/cni/bin/loopback", "/opt/cni/bin/portmap",
			SystemImageDir + "/" + ImageStoreIndex, SystemManifestPath,
		} {
			if !strings.Contains(listing, "squashfs-root"+p+"\n") {
				t.Errorf("system.sqfs lacks %s", p)
			}
		}
		// Every name kubeadm pulls, its addons' included, must be in the archives.
		out, err := exec.Command(bins["kubeadm"], "config", "images", "list", "--kubernetes-version", KubernetesVersion).Output()
		if err != nil {
			t.Fatalf("kubeadm config images list: %v", err)
		}
		have := map[string]bool{}
		for _, name := range storeImageNames(t, sqfs) {
			have[name] = true
		}
		for _, want := range strings.Fields(string(out)) {
			if !have[want] {
				t.Errorf("kubeadm wants %s; the archives have %v", want, have)
			}
		}
	})
	t.Run("WorkerSystem", func(t *testing.T) {
		worker, err := b.System(ctx, RoleWorker)
		if err != nil {
			t.Fatal(err)
		}
		listing := unsquashfsList(t, worker)
		if !strings.Contains(listing, "/usr/bin/kubelet -> kube") {
			t.Errorf("worker system.sqfs content wrong:\n%s", listing)
		}
		names := storeImageNames(t, worker)
		for _, want := range []string{"registry.k8s.io/kube-proxy:" + KubernetesVersion, "registry.k8s.io/coredns/coredns:" + CoreDNSVersion} {
			if !slices.Contains(names, want) {
				t.Errorf("worker image store has %v, want %s", names, want)
			}
		}
		if slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, "kube-apiserver") || strings.Contains(n, "etcd") }) {
			t.Errorf("worker image store has control-plane images: %v", names)
		}
	})
	t.Run("ContainerdRegistered", func(t *testing.T) { testContainerdRegistered(t, b, bins, sqfs) })
	t.Run("Cached", func(t *testing.T) {
		again, err := b.System(ctx, RoleControlPlane)
		if err != nil || again != sqfs {
			t.Errorf("second System = %s, %v; want the cached %s", again, err, sqfs)
		}
	})
}

// checkStatic fails for a dynamically linked ELF (program interpreter or needed libraries).
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("dynamically linked (has a program interpreter)")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return fmt.Errorf("needs %v", libs)
	}
	return nil
}

// unsquashfsList returns `unsquashfs -lc`-style paths, one per line, symlinks as "a -> b".
func unsquashfsList(t *testing.T, sqfs string) string {
	t.Helper()
	out, err := exec.Command("unsquashfs", "-lln", sqfs).Output()
	if err != nil {
		t.Fatalf("unsquashfs -lln %s: %v", sqfs, err)
	}
	var b strings.Builder
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, "squashfs-root"); i >= 0 {
			b.WriteString(line[i:] + "\n")
		}
	}
	return b.String()
}

// storeImageNames reads the image store's index out of the squashfs and returns its image names.
func storeImageNames(t *testing.T, sqfs string) []string {
	t.Helper()
	path := strings.TrimPrefix(SystemImageDir, "/") + "/" + ImageStoreIndex
	data, err := exec.Command("unsquashfs", "-cat", sqfs, path).Output()
	if err != nil {
		t.Fatalf("unsquashfs -cat %s: %v", path, err)
	}
	var index Index
	if err := json.Unmarshal(data, &index); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var names []string
	for _, m := range index.Manifests {
		names = append(names, m.Annotations[AnnotationImageName])
	}
	return names
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// testContainerdRegistered mounts system.sqfs, registers its images with
// containerd's root the way a node does (initagent/imagestore), starts the
// built containerd (runc and the shim on its PATH) and runs the
// kube-apiserver and etcd images by the command names kubeadm's static
// pods use.
func testContainerdRegistered(t *testing.T, b *Builder, bins map[string]string, sqfs string) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd")
	}
	ctx := context.Background()
	ctrBins, err := b.Build(ctx, Ctr)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ballast-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf("version = 3\nroot = %q\nstate = %q\n"+
		"disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \"io.containerd.cri.v1.runtime\"]\n"+
		"[grpc]\n  address = %q\n", filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	system := filepath.Join(dir, "system")
	if err := os.Mkdir(system, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "squashfs", "-o", "loop,ro", sqfs, system).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v\n%s", sqfs, err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", system).Run() })
	if _, err := imagestore.Register(ctx, imagestore.Options{Store: filepath.Join(system, SystemImageDir), Root: filepath.Join(dir, "root"), Namespace: "k8s.io"}); err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command(bins["containerd"], "--config", filepath.Join(dir, "config.toml"))
	daemon.Env = append(os.Environ(), "PATH="+filepath.Dir(bins["containerd"])+":"+filepath.Dir(bins["runc"])+":"+os.Getenv("PATH"))
	daemon.Stdout, daemon.Stderr = logFile, logFile
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		daemon.Process.Signal(syscall.SIGTERM)
		daemon.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(logFile.Name())
			t.Logf("containerd log:\n%s", log)
		}
	})
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command(ctrBins["ctr"], append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if _, err := ctr("version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not answer within 2 minutes")
		}
	}
	etcdTag, pauseTag, err := b.KubeadmImageTags(ctx)
	if err != nil {
		t.Fatal(err)
	}
	list, err := ctr("images", "ls", "-q") // stderr may add a cgroup v1 warning; the names are still fields
	if err != nil {
		t.Fatal(err)
	}
	apiserver := "registry.k8s.io/kube-apiserver:" + KubernetesVersion
	etcd := "registry.k8s.io/etcd:" + etcdTag
	proxy := "registry.k8s.io/kube-proxy:" + KubernetesVersion
	coreDNS := "registry.k8s.io/coredns/coredns:" + CoreDNSVersion
	for _, want := range []string{apiserver, proxy, coreDNS, "registry.k8s.io/kube-controller-manager:" + KubernetesVersion,
		"registry.k8s.io/kube-scheduler:" + KubernetesVersion, etcd, "registry.k8s.io/pause:" + pauseTag} {
		if !slices.Contains(strings.Fields(list), want) {
			t.Errorf("containerd lacks image %s after registration; has:\n%s", want, list)
		}
	}
	for i, run := range []struct {
		image, want string
		args        []string
	}{
		{apiserver, "Kubernetes " + KubernetesVersion, []string{"kube-apiserver", "--version"}},
		{etcd, "etcd Version: " + strings.TrimPrefix(EtcdVersion, "v"), []string{"etcd", "--version"}},
		{proxy, "Kubernetes " + KubernetesVersion, []string{"kube-proxy", "--version"}},
		// kube-proxy's nftables mode execs nft: the layer must carry its whole library closure.
		{proxy, "nftables v1.0.6", []string{"nft", "--version"}},
		{coreDNS, "CoreDNS-" + strings.TrimPrefix(CoreDNSVersion, "v"), []string{"/coredns", "-version"}},
	} {
		out, err := ctr(append([]string{"run", "--rm", run.image, fmt.Sprintf("payload-test-%d", i)}, run.args...)...)
		if err != nil || !strings.Contains(out, run.want) {
			t.Errorf("ctr run %s %v = %q, %v; want %q", run.image, run.args, out, err, run.want)
		}
	}
}
