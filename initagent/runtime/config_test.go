package runtime

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// containerdBinary finds a containerd built by the payload builder.
func containerdBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("BALLAST_CONTAINERD"); p != "" {
		return p
	}
	home, _ := os.UserHomeDir()
	matches, _ := filepath.Glob(filepath.Join(home, ".cache/ballast/payload/containerd-*/containerd"))
	if len(matches) == 0 {
		t.Skip("no containerd binary: build the payload (image/payload) or set BALLAST_CONTAINERD")
	}
	return matches[len(matches)-1]
}

func TestContainerdAcceptsItsConfig(t *testing.T) {
	bin := containerdBinary(t)
	p := NodePaths("/run/ballast/system")
	p.BinDir, p.StateDir = "/opt/test/bin", "/run/test-containerd"
	p.RestrictOOMScoreAdj = true // a container node without CAP_SYS_RESOURCE
	conf := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(conf, []byte(ContainerdConfig(p, "registry.k8s.io/pause:3.10.2")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--config", conf, "config", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, out)
	}
	dump := string(out)
	if strings.Contains(dump, "level=warning") || strings.Contains(dump, "level=error") {
		t.Errorf("containerd complains about the config:\n%s", dump)
	}
	for _, want := range []string{
		"sandbox = 'registry.k8s.io/pause:3.10.2'",
		"BinaryName = '/opt/test/bin/runc'",
		"SystemdCgroup = false",
		"bin_dirs = ['/run/ballast/system/opt/cni/bin']",
		"NoPivotRoot = true",
		"address = '/run/test-containerd/containerd.sock'",
		"address = '/run/test-containerd/containerd.sock.ttrpc'",
		"restrict_oom_score_adj = true",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("effective config lacks %s", want)
		}
	}
}

func TestKubeletFilesAndFlags(t *testing.T) {
	p := NodePaths("/run/ballast/system")
	k := Kubelet{Hostname: "cp-1", NodeIP: "10.0.0.5,2001:db8::5", ClusterDomain: "cluster.local",
		ClusterDNS: []netip.Addr{netip.MustParseAddr("169.254.20.10")}, ResolvConf: "/run/ballast/pod-resolv.conf",
		Kubeconfig: "/etc/kubernetes/kubelet.conf", ExtraArgs: map[string]string{"v": "2", "--max-pods": "50"}}
	data, err := KubeletConfiguration(p, k)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	if c["cgroupDriver"] != "cgroupfs" || c["resolvConf"] != "/run/ballast/pod-resolv.conf" ||
		c["containerRuntimeEndpoint"] != "unix:///run/containerd/containerd.sock" || c["staticPodPath"] != "/etc/kubernetes/manifests" {
		t.Errorf("kubelet config %s", data)
	}
	args := strings.Join(KubeletArgs(p, k), " ")
	want := "--config=/var/lib/kubelet/config.yaml --kubeconfig=/etc/kubernetes/kubelet.conf --hostname-override=cp-1 --node-ip=10.0.0.5,2001:db8::5 --max-pods=50 --v=2"
	if args != want {
		t.Errorf("kubelet args\n got %s\nwant %s", args, want)
	}
	cni, err := CNIConfig([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:10:244::/64")})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"type": "bridge"`, `"subnet": "10.244.0.0/24"`, `"subnet": "fd00:10:244::/64"`, `"dst": "::/0"`} {
		if !strings.Contains(string(cni), want) {
			t.Errorf("CNI config lacks %s:\n%s", want, cni)
		}
	}
}

// TestKubeletConfigFollowsCgroupVersion: kubelet is told to accept cgroup v1
// only where the cgroup directory holds v1 hierarchies. The host's own
// /sys/fs/cgroup is judged against its mount table, read independently.
func TestKubeletConfigFollowsCgroupVersion(t *testing.T) {
	failCgroupV1 := func(dir string) (any, bool) {
		p := NodePaths("/run/ballast/system")
		p.CgroupDir = dir
		data, err := KubeletConfiguration(p, Kubelet{Hostname: "n"})
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		if err := json.Unmarshal(data, &c); err != nil {
			t.Fatal(err)
		}
		v, ok := c["failCgroupV1"]
		return v, ok
	}
	if v, ok := failCgroupV1(t.TempDir()); ok {
		t.Errorf("a directory without cgroup hierarchies got failCgroupV1=%v", v)
	}
	if v, ok := failCgroupV1(""); ok {
		t.Errorf("no cgroup directory got failCgroupV1=%v", v)
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	hostV1 := false
	for _, line := range strings.Split(string(mountinfo), "\n") {
		// mount point is field 5; the fs type follows the " - " separator.
		f := strings.Fields(line)
		_, after, _ := strings.Cut(line, " - ")
		if len(f) > 4 && f[4] == "/sys/fs/cgroup/memory" && strings.HasPrefix(after, "cgroup ") {
			hostV1 = true
		}
	}
	v, ok := failCgroupV1("/sys/fs/cgroup")
	if hostV1 != ok || (ok && v != false) {
		t.Errorf("host has cgroup v1 hierarchies: %v; kubelet config failCgroupV1=%v (present %v)", hostV1, v, ok)
	}
}
