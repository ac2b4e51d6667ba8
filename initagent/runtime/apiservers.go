package runtime

import (
	"context"
	"net"
	"slices"
	"strconv"
	"time"
)

// endpointSlices is the part of an EndpointSliceList the node reads.
type endpointSlices struct {
	Items []struct {
		Endpoints []struct {
			Addresses  []string `json:"addresses"`
			Conditions struct {
				Ready *bool `json:"ready"`
			} `json:"conditions"`
		} `json:"endpoints"`
		Ports []struct {
			Name string `json:"name"`
			Port int    `json:"port"`
		} `json:"ports"`
	} `json:"items"`
}

// APIServerEndpoints lists the apiservers registered in the default
// namespace's kubernetes service (every apiserver adds itself), as
// host:port, sorted.
func APIServerEndpoints(ctx context.Context, c *KubeClient) ([]string, error) {
	var list endpointSlices
	if err := c.Do(ctx, "GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes", nil, &list); err != nil {
		return nil, err
	}
	var out []string
	for _, s := range list.Items {
		port := apiServerPort
		for _, p := range s.Ports {
			if p.Name == "https" || len(s.Ports) == 1 {
				port = p.Port
			}
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				hp := net.JoinHostPort(a, strconv.Itoa(port))
				if !slices.Contains(out, hp) {
					out = append(out, hp)
				}
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// reportAPIServers reports the registered apiservers to k.APIServers when
// they change; a control plane asks with its admin credentials, a worker
// with kubelet's.
func (k *Kube) reportAPIServers(ctx context.Context, node *KubeClient, admin **KubeClient, last []string) []string {
	if k.APIServers == nil {
		return last
	}
	c := node
	if k.Role == "control-plane" {
		if *admin == nil {
			*admin, _ = LoadKubeconfig(k.path("etc/kubernetes/admin.conf"), node.Server)
		}
		if *admin != nil {
			c = *admin
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := APIServerEndpoints(rctx, c)
	if err != nil {
		if last == nil {
			k.Log.Debug("apiserver endpoints", "err", err)
		}
		return last
	}
	if len(got) > 0 && !slices.Equal(got, last) {
		k.Log.Info("apiservers registered", "endpoints", got)
		k.APIServers(got)
		return got
	}
	return last
}
