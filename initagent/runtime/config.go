// Package runtime runs Kubernetes on the node: containerd (with runc and
// the CNI plugins from the system image), the preloaded images, and
// kubelet with the nodeIP decision, the local DNS and the local API proxy.
package runtime

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths are where the runtime's pieces live on a node.
type Paths struct {
	BinDir        string // containerd, shim, runc, kubelet (the system image)
	CNIBinDir     string // bridge, host-local, loopback, portmap
	CNIConfDir    string // /etc/cni/net.d
	ContainerdDir string // containerd's root, /var/lib/containerd
	StateDir      string // /run/containerd
	KubeletDir    string // /var/lib/kubelet
	ManifestDir   string // static pods, /etc/kubernetes/manifests
	PKIDir        string // /etc/kubernetes/pki
	// CgroupDir is where the cgroup hierarchies are mounted; kubelet's
	// config follows what it finds there (see CgroupV1).
	CgroupDir string // /sys/fs/cgroup
	// RestrictOOMScoreAdj keeps containers' oom_score_adj at or above
	// containerd's: set where lowering it is refused (no CAP_SYS_RESOURCE,
	// as in a container node made without it).
	RestrictOOMScoreAdj bool
}

// NodePaths are the paths on a node whose system image is mounted at system.
func NodePaths(system string) Paths {
	return Paths{
		BinDir:        system + "/usr/bin",
		CNIBinDir:     system + "/opt/cni/bin",
		CNIConfDir:    "/etc/cni/net.d",
		ContainerdDir: "/var/lib/containerd",
		StateDir:      "/run/containerd",
		KubeletDir:    "/var/lib/kubelet",
		ManifestDir:   "/etc/kubernetes/manifests",
		PKIDir:        "/etc/kubernetes/pki",
		CgroupDir:     "/sys/fs/cgroup",
		// kubelet gives pause and critical pods negative scores.
		RestrictOOMScoreAdj: !hasCapability(capSysResource),
	}
}

// Socket is containerd's gRPC socket.
func (p Paths) Socket() string { return p.StateDir + "/containerd.sock" }

// ContainerdConfig is containerd 2.4's config (version 4): cgroupfs (no
// systemd on the node), runc from the system image, CNI from the system
// image's plugins, and the preloaded pause image as sandbox, never pulled.
func ContainerdConfig(p Paths, pauseImage string) string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "version = 4\nroot = %s\nstate = %s\n\n", q(p.ContainerdDir), q(p.StateDir))
	fmt.Fprintf(&b, "[plugins.'io.containerd.server.v1.grpc']\n  address = %s\n\n", q(p.Socket()))
	fmt.Fprintf(&b, "[plugins.'io.containerd.server.v1.ttrpc']\n  address = %s\n\n", q(p.Socket()+".ttrpc"))
	fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n\n")
	fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = %s\n\n", q(pauseImage))
	if p.RestrictOOMScoreAdj {
		fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n\n")
	}
	fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.runtime'.containerd]\n  default_runtime_name = 'runc'\n\n")
	fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n\n")
	// The node's root is the initramfs (rootfs), where pivot_root(2) is refused.
	fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  BinaryName = %s\n  SystemdCgroup = false\n  NoPivotRoot = true\n\n",
		q(p.BinDir+"/runc"))
	fmt.Fprintf(&b, "[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [%s]\n  conf_dir = %s\n\n", q(p.CNIBinDir), q(p.CNIConfDir))
	fmt.Fprintf(&b, "[plugins.'io.containerd.grpc.v1.cri']\n  disable_tcp_service = true\n  stream_server_address = '127.0.0.1'\n")
	return b.String()
}

// Kubelet describes this node's kubelet.
type Kubelet struct {
	Hostname      string
	NodeIP        string // --node-ip, from the nodeIP decision ("v4,v6")
	ClusterDomain string // e.g. cluster.local
	ClusterDNS    []netip.Addr
	ResolvConf    string // the pods' resolv.conf (the node-local DNS)
	Kubeconfig    string // reaches the API through the local proxy
	// BootstrapKubeconfig, on a worker, holds the bootstrap token kubelet
	// gets its client certificate with (TLS bootstrap).
	BootstrapKubeconfig string
	ExtraArgs           map[string]string
}

// KubeletConfiguration renders kubelet's config file (JSON is YAML).
func KubeletConfiguration(p Paths, k Kubelet) ([]byte, error) {
	dns := make([]string, 0, len(k.ClusterDNS))
	for _, a := range k.ClusterDNS {
		dns = append(dns, a.String())
	}
	c := map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"cgroupDriver":             "cgroupfs",
		"containerRuntimeEndpoint": "unix://" + p.Socket(),
		"staticPodPath":            p.ManifestDir,
		"resolvConf":               k.ResolvConf,
		"clusterDomain":            k.ClusterDomain,
		"clusterDNS":               dns,
		"failSwapOn":               false,
		"rotateCertificates":       true,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": p.PKIDir + "/ca.crt"},
		},
		"authorization": map[string]any{"mode": "Webhook"},
		// No systemd: kubelet must not look for its units' cgroups.
		"cgroupsPerQOS": true,
	}
	if p.CgroupDir != "" && CgroupV1(p.CgroupDir) {
		// A container node on a host with cgroup v1 hierarchies (its own
		// subtree of each, through a cgroup namespace): kubelet 1.35+
		// refuses v1 unless told otherwise. Nodes booted by ballast's
		// kernel have cgroup2 and never get here.
		c["failCgroupV1"] = false
	}
	return json.MarshalIndent(c, "", "  ")
}

// KubeletArgs are the command-line flags next to the config file.
func KubeletArgs(p Paths, k Kubelet) []string {
	args := []string{
		"--config=" + p.KubeletDir + "/config.yaml",
		"--kubeconfig=" + k.Kubeconfig,
		"--hostname-override=" + k.Hostname,
	}
	if k.NodeIP != "" {
		args = append(args, "--node-ip="+k.NodeIP)
	}
	if k.BootstrapKubeconfig != "" {
		args = append(args, "--bootstrap-kubeconfig="+k.BootstrapKubeconfig)
	}
	keys := make([]string, 0, len(k.ExtraArgs))
	for key := range k.ExtraArgs {
		keys = append(keys, key)
	}
	sortStrings(keys)
	for _, key := range keys {
		args = append(args, "--"+strings.TrimPrefix(key, "--")+"="+k.ExtraArgs[key])
	}
	return args
}

// CNIConfig is a bridge + host-local network for the node's pod CIDRs,
// enough for a node to become Ready and pods to talk to each other and the
// node without a network add-on. No masquerading and no portmap: both need
// iptables or nft binaries the node does not carry.
func CNIConfig(podCIDRs []netip.Prefix) ([]byte, error) {
	var ranges [][]map[string]string
	for _, c := range podCIDRs {
		ranges = append(ranges, []map[string]string{{"subnet": c.Masked().String()}})
	}
	routes := []map[string]string{}
	for _, c := range podCIDRs {
		if c.Addr().Is4() {
			routes = append(routes, map[string]string{"dst": "0.0.0.0/0"})
		} else {
			routes = append(routes, map[string]string{"dst": "::/0"})
		}
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "ballast",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true,
				"ipam": map[string]any{"type": "host-local", "ranges": ranges, "routes": routes},
			},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

func sortStrings(s []string) { sort.Strings(s) }

const capSysResource = 24 // CAP_SYS_RESOURCE

// hasCapability reports whether this process has capability number c in
// its effective set; true when that cannot be read (assume a machine).
func hasCapability(c uint) bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || mask&(1<<c) != 0
		}
	}
	return true
}

// CgroupV1 reports whether dir holds cgroup v1 hierarchies (a tmpfs with
// one cgroup mount per controller) rather than the unified cgroup2 mount.
func CgroupV1(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type == unix.CGROUP2_SUPER_MAGIC {
		return false
	}
	for _, controller := range []string{"memory", "cpu"} {
		if err := unix.Statfs(filepath.Join(dir, controller), &st); err == nil && st.Type == unix.CGROUP_SUPER_MAGIC {
			return true
		}
	}
	return false
}
