package runtime

import (
	"context"
	"fmt"
	"net"
)

// NodeAgentRole is the ClusterRole every node's agent holds through its
// kubelet credentials (group system:nodes): the Node authorizer lets a
// kubelet read only its own Node, while the agent follows every Node (pod
// routes) and the apiservers' EndpointSlices (API proxy backends).
const NodeAgentRole = "ballast:node-agent"

// grantNodeAgents writes NodeAgentRole and its binding to system:nodes
// (PUT: created or brought up to date, on every control-plane start).
func (k *Kube) grantNodeAgents(ctx context.Context) error {
	c, err := LoadKubeconfig(k.path("etc/kubernetes/admin.conf"), "https://"+net.JoinHostPort(k.NodeIPs[0].String(), "6443"))
	if err != nil {
		return err
	}
	defer c.HTTP.CloseIdleConnections()
	labels := map[string]string{"app.kubernetes.io/managed-by": "ballast"}
	role := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
		"metadata": map[string]any{"name": NodeAgentRole, "labels": labels},
		"rules": []any{
			map[string]any{"apiGroups": []string{""}, "resources": []string{"nodes"}, "verbs": []string{"get", "list", "watch"}},
			map[string]any{"apiGroups": []string{"discovery.k8s.io"}, "resources": []string{"endpointslices"}, "verbs": []string{"get", "list", "watch"}},
		},
	}
	binding := map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
		"metadata": map[string]any{"name": NodeAgentRole, "labels": labels},
		"roleRef":  map[string]string{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NodeAgentRole},
		"subjects": []any{map[string]string{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}},
	}
	for _, o := range []struct {
		path string
		body any
	}{
		{"/apis/rbac.authorization.k8s.io/v1/clusterroles/" + NodeAgentRole, role},
		{"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/" + NodeAgentRole, binding},
	} {
		if err := c.Do(ctx, "PUT", o.path, o.body, nil); err != nil {
			return fmt.Errorf("PUT %s: %w", o.path, err)
		}
	}
	return nil
}
