package payload

// The pins: every upstream version the payload is built from lives here.
// Bump one, rebuild, and the cache key (component-version) changes with it.
const (
	KubernetesVersion = "v1.37.2" // k8s.io/kubernetes: kubelet, kubeadm, kube-apiserver, -controller-manager, -scheduler
	ContainerdVersion = "v2.4.2"  // github.com/containerd/containerd/v2
	RuncVersion       = "v1.5.2"  // github.com/opencontainers/runc
	CNIPluginsVersion = "v1.10.0" // github.com/containernetworking/plugins
	EtcdVersion       = "v3.7.3"  // go.etcd.io/etcd/server/v3
	PauseVersion      = "3.10.2"  // our pause binary answers to this version; equals kubeadm's constants.PauseVersion
	URootVersion      = "v0.16.0" // github.com/u-root/u-root: mount and umount, which kubelet runs for pod volumes
	CoreDNSVersion    = "v1.14.6" // github.com/coredns/coredns; equals kubeadm's constants.CoreDNSVersion (its image tag)
)

// Versions are the upstream versions one payload is built from.
type Versions struct {
	Kubernetes string
	Containerd string
	Runc       string
	CNIPlugins string
	Etcd       string
	Pause      string
	URoot      string
	CoreDNS    string
}

// Pinned returns the versions from the constants above.
func Pinned() Versions {
	return Versions{
		Kubernetes: KubernetesVersion,
		Containerd: ContainerdVersion,
		Runc:       RuncVersion,
		CNIPlugins: CNIPluginsVersion,
		Etcd:       EtcdVersion,
		Pause:      PauseVersion,
		URoot:      URootVersion,
		CoreDNS:    CoreDNSVersion,
	}
}
