package runtime

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Node subnet sizes kube-controller-manager gives when no
// --node-cidr-mask-size flag is set (kubeadm sets none).
const (
	nodeMaskIPv4 = 24
	nodeMaskIPv6 = 64
)

// claimWait bounds how long the controller manager's manifest stays held,
// once the local apiserver is ready, for a claim still waiting for kubelet
// to register the node; then the controller manager allocates instead.
const claimWait = 30 * time.Second

// claimPodCIDRs gives the node that bootstraps the cluster its pod subnets
// itself, the ones kube-controller-manager's range allocator would give it
// (the lowest free subnet of each cluster pod CIDR, node masks /24 and
// /64), as soon as kubelet has registered the node. It runs while the
// controller manager's manifest is still held, so no allocator runs beside
// it: when the controller manager starts, it reads every node's podCIDRs
// and marks them taken. Without it, the node's CNI config (and so node
// Ready) waits for the apiserver's /readyz and then for the controller
// manager to start, win its lease and run its node IPAM controller: well
// over a minute on a slow machine. A cluster whose controller manager has
// ever held its lease allocates alone; so does a node whose registration
// comes later than claimWait after the apiserver is ready (ctx ends).
func (k *Kube) claimPodCIDRs(ctx context.Context, node *KubeClient) {
	admin, err := LoadKubeconfig(k.path("etc/kubernetes/super-admin.conf"), "https://"+net.JoinHostPort(k.NodeIPs[0].String(), strconv.Itoa(apiServerPort)))
	if err != nil {
		// kubeadm's admin.conf gets its rights only in the first phase
		// that needs the API; super-admin.conf is the bootstrapping node's.
		k.Log.Info("pod CIDRs left to the controller manager", "reason", err)
		return
	}
	defer admin.HTTP.CloseIdleConnections()
	cidrs, err := k.claim(ctx, admin, node)
	if err != nil {
		k.Log.Info("pod CIDRs left to the controller manager", "reason", err)
		return
	}
	if cidrs != nil {
		k.Log.Info("pod CIDRs claimed for the bootstrapping node", "node", k.NodeName, "podCIDRs", joinPrefixes(cidrs),
			"sinceBoot", k.since())
	}
}

var errControllerManagerRan = errors.New("a kube-controller-manager has held its lease: it allocates")

func (k *Kube) claim(ctx context.Context, admin, node *KubeClient) ([]netip.Prefix, error) {
	n, err := k.waitNode(ctx, node)
	if err != nil {
		return nil, err
	}
	if len(n.Spec.PodCIDRs) > 0 {
		return nil, nil
	}
	err = admin.Do(ctx, http.MethodGet, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager", nil, nil)
	switch {
	case err == nil:
		return nil, errControllerManagerRan
	case !IsNotFound(err):
		return nil, err
	}
	nodes, err := admin.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	var taken []string
	for _, o := range nodes.Items {
		taken = append(taken, o.Spec.PodCIDRs...)
	}
	cidrs, err := nextPodCIDRs(k.Cluster.PodCIDRs, k.Cluster.ServiceCIDRs, taken)
	if err != nil {
		return nil, err
	}
	var strs []string
	for _, c := range cidrs {
		strs = append(strs, c.String())
	}
	// No resourceVersion precondition: kubelet patches its node's status
	// several times a second while it starts, and the apiserver refuses to
	// change a podCIDR once set, so a node the controller manager got to
	// first keeps its allocation (the patch fails).
	patch := map[string]any{"spec": map[string]any{"podCIDR": strs[0], "podCIDRs": strs}}
	if err := admin.Do(ctx, http.MethodPatch, "/api/v1/nodes/"+k.NodeName, patch, nil); err != nil {
		return nil, fmt.Errorf("patch node %s podCIDRs %s: %w", k.NodeName, strings.Join(strs, ","), err)
	}
	return cidrs, nil
}

// nextPodCIDRs picks, in each cluster pod CIDR, the lowest node subnet that
// no node holds and that does not overlap a service CIDR (the controller
// manager keeps those out too).
func nextPodCIDRs(clusters, services []netip.Prefix, taken []string) ([]netip.Prefix, error) {
	var used []netip.Prefix
	for _, s := range taken {
		if p, err := netip.ParsePrefix(s); err == nil {
			used = append(used, p.Masked())
		}
	}
	used = append(used, services...)
	var out []netip.Prefix
	for _, cluster := range clusters {
		mask := nodeMaskIPv4
		if cluster.Addr().Is6() {
			mask = nodeMaskIPv6
		}
		if cluster.Bits() > mask {
			return nil, fmt.Errorf("pod CIDR %s is smaller than a node's /%d", cluster, mask)
		}
		// The controller manager refuses more than 2^16 node subnets.
		if mask-cluster.Bits() > 16 {
			return nil, fmt.Errorf("pod CIDR %s holds more than 65536 node subnets of /%d", cluster, mask)
		}
		pick, ok := lowestFree(cluster.Masked(), mask, used)
		if !ok {
			return nil, fmt.Errorf("pod CIDR %s has no free /%d left", cluster, mask)
		}
		out = append(out, pick)
	}
	if len(out) == 0 {
		return nil, errors.New("no cluster pod CIDR")
	}
	return out, nil
}

func lowestFree(cluster netip.Prefix, mask int, used []netip.Prefix) (netip.Prefix, bool) {
	base := new(big.Int).SetBytes(cluster.Addr().AsSlice())
	bitLen := cluster.Addr().BitLen()
	step := new(big.Int).Lsh(big.NewInt(1), uint(bitLen-mask))
	for i := 0; i < 1<<(mask-cluster.Bits()); i++ {
		start := new(big.Int).Add(base, new(big.Int).Mul(step, big.NewInt(int64(i))))
		b := start.FillBytes(make([]byte, bitLen/8))
		addr, _ := netip.AddrFromSlice(b)
		cand := netip.PrefixFrom(addr, mask)
		free := true
		for _, u := range used {
			if u.Addr().Is4() == cand.Addr().Is4() && u.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, true
		}
	}
	return netip.Prefix{}, false
}
