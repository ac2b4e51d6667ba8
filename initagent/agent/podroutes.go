package agent

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/podroutes"
	"github.com/ballast-os/ballast/initagent/runtime"
)

// startPodRoutes routes the other nodes' pod CIDRs via their node
// addresses (package podroutes) under the supervisor, reading the API
// credentials from kubeconfig, which may appear only once kubelet has
// bootstrapped. It returns the daemon, whose Status belongs in the node
// status.
func (a *Agent) startPodRoutes(ctx context.Context, kubeconfig, nodeName string) *podroutes.Daemon {
	k := &kubeconfigNodes{path: kubeconfig}
	d := &podroutes.Daemon{NodeName: nodeName, Log: a.Log.With("part", "podroutes"), Connect: k.connect}
	a.sup.Start(ctx, pid1.Daemon{Name: "podroutes", Run: d.Run})
	return d
}

// kubeconfigNodes gives the daemon an API client from a kubeconfig file,
// made again only when the file changed (a rotated certificate), so that
// every resync does not leave a transport with open connections behind.
type kubeconfigNodes struct {
	path   string
	client *runtime.KubeClient
	stamp  string // size and modification time the client was made from
}

func (k *kubeconfigNodes) connect(context.Context) (podroutes.Nodes, error) {
	fi, err := os.Stat(k.path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig for the pod routes: %w", err)
	}
	stamp := fmt.Sprint(fi.Size(), fi.ModTime().Format(time.RFC3339Nano))
	if k.client != nil && stamp == k.stamp {
		return k.client, nil
	}
	c, err := runtime.LoadKubeconfig(k.path, "")
	if err != nil {
		return nil, fmt.Errorf("kubeconfig for the pod routes: %w", err)
	}
	if k.client != nil {
		k.client.HTTP.CloseIdleConnections()
	}
	k.client, k.stamp = c, stamp
	return c, nil
}
