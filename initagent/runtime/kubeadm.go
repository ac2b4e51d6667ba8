package runtime

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ControlPlane describes the control plane a node bootstraps with kubeadm's
// phases: a single node creates it; the VIP (when set) is the endpoint
// every kubeconfig names.
type ControlPlane struct {
	KubernetesVersion string
	ClusterName       string
	DNSDomain         string // cluster.local
	NodeName          string
	NodeIP            netip.Addr   // advertise and bind address of this apiserver
	APIVIPs           []netip.Addr // controlPlaneEndpoint is the first, else NodeIP
	ExtraSANs         []string     // e.g. api.<cluster>.<domain>
	PodCIDRs          []netip.Prefix
	ServiceCIDRs      []netip.Prefix
	CRISocket         string // unix:///run/containerd/containerd.sock
	KubeletNodeIP     string // kubelet --node-ip (both families)
	// BootstrapToken, when set, is created by the bootstrapping control
	// plane (never expires) so workers can join with it.
	BootstrapToken string
	// EtcdExtraArgs go to the local etcd: a joining member's
	// initial-cluster and initial-cluster-state=existing.
	EtcdExtraArgs map[string]string
}

// apiServerPort is where kube-apiserver listens on the node address.
const apiServerPort = 6443

// KubeadmConfig renders the InitConfiguration and ClusterConfiguration
// (kubeadm.k8s.io/v1beta4) for cp. Images are preloaded, never pulled; the
// apiserver binds the node address only, because the API proxy holds
// VIP:6443 on the same node.
func KubeadmConfig(cp ControlPlane) ([]byte, error) {
	if !cp.NodeIP.IsValid() {
		return nil, fmt.Errorf("kubeadm: no node address: the nodeIP decision must exist before the control plane starts")
	}
	endpoint := cp.NodeIP
	if len(cp.APIVIPs) > 0 {
		endpoint = cp.APIVIPs[0]
	}
	sans := []string{cp.NodeIP.String()}
	for _, v := range cp.APIVIPs {
		sans = append(sans, v.String())
	}
	sans = append(sans, cp.ExtraSANs...)
	arg := func(name, value string) map[string]string { return map[string]string{"name": name, "value": value} }
	kubeletArgs := []map[string]string{}
	if cp.KubeletNodeIP != "" {
		kubeletArgs = append(kubeletArgs, arg("node-ip", cp.KubeletNodeIP))
	}
	init := map[string]any{
		"apiVersion": "kubeadm.k8s.io/v1beta4",
		"kind":       "InitConfiguration",
		"nodeRegistration": map[string]any{
			"name":             cp.NodeName,
			"criSocket":        cp.CRISocket,
			"imagePullPolicy":  "Never",
			"kubeletExtraArgs": kubeletArgs,
		},
		"localAPIEndpoint": map[string]any{"advertiseAddress": cp.NodeIP.String(), "bindPort": apiServerPort},
		// Under emulation or on a slow disk the first start takes minutes.
		"timeouts": map[string]string{"controlPlaneComponentHealthCheck": "15m0s", "kubeletHealthCheck": "15m0s"},
	}
	if cp.BootstrapToken != "" {
		init["bootstrapTokens"] = []map[string]any{{
			"token": cp.BootstrapToken, "ttl": "0s", "usages": []string{"signing", "authentication"},
			"groups":      []string{"system:bootstrappers:kubeadm:default-node-token"},
			"description": "ballast: workers join with cluster.token",
		}}
	}
	etcdLocal := map[string]any{"dataDir": "/var/lib/etcd"}
	if len(cp.EtcdExtraArgs) > 0 {
		var names []string
		for n := range cp.EtcdExtraArgs {
			names = append(names, n)
		}
		sortStrings(names)
		var args []map[string]string
		for _, n := range names {
			args = append(args, arg(n, cp.EtcdExtraArgs[n]))
		}
		etcdLocal["extraArgs"] = args
	}
	cluster := map[string]any{
		"apiVersion":           "kubeadm.k8s.io/v1beta4",
		"kind":                 "ClusterConfiguration",
		"kubernetesVersion":    cp.KubernetesVersion,
		"clusterName":          cp.ClusterName,
		"controlPlaneEndpoint": net.JoinHostPort(endpoint.String(), strconv.Itoa(apiServerPort)),
		"imageRepository":      "registry.k8s.io",
		"networking": map[string]string{
			"dnsDomain":     cp.DNSDomain,
			"podSubnet":     joinPrefixes(cp.PodCIDRs),
			"serviceSubnet": joinPrefixes(cp.ServiceCIDRs),
		},
		"apiServer": map[string]any{
			"certSANs":  sans,
			"extraArgs": []map[string]string{arg("bind-address", cp.NodeIP.String())},
		},
		"etcd": map[string]any{"local": etcdLocal},
		// ECDSA P-256 for the keys kubeadm makes (certificates, kubeconfigs,
		// the service-account key), like the node API's PKI: an RSA-2048 key
		// costs ~50 ms of CPU, and a first control plane makes 16 of them
		// (measured: certs + kubeconfig phases 1.15 s with RSA, 0.35 s with
		// ECDSA on this machine; ~10x that under emulation).
		"encryptionAlgorithm": "ECDSA-P256",
	}
	// kube-proxy (kubeadm's addon phase deploys it as a DaemonSet from the
	// preloaded image) programs Services with nftables. maxPerCore 0 keeps
	// the kernel's nf_conntrack_max: that sysctl is global, and a container
	// node cannot set it.
	proxy := map[string]any{
		"apiVersion":  "kubeproxy.config.k8s.io/v1alpha1",
		"kind":        "KubeProxyConfiguration",
		"mode":        "nftables",
		"clusterCIDR": joinPrefixes(cp.PodCIDRs),
		"conntrack":   map[string]any{"maxPerCore": 0},
	}
	var b strings.Builder
	for i, doc := range []any{init, cluster, proxy} {
		if i > 0 {
			b.WriteString("---\n")
		}
		data, err := yaml.Marshal(doc)
		if err != nil {
			return nil, err
		}
		b.Write(data)
	}
	return []byte(b.String()), nil
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Masked().String()
	}
	return strings.Join(s, ",")
}
