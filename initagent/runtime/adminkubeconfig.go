package runtime

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
)

// ErrNotControlPlane refuses what only a control plane holds.
var ErrNotControlPlane = errors.New("this node is a worker: it holds no cluster CA key; ask a control-plane node")

// AdminKubeconfigValidity is how long a kubeconfig nodectl fetches works.
const AdminKubeconfigValidity = 365 * 24 * time.Hour

// AdminKubeconfig signs, with the cluster CA in /etc/kubernetes/pki, a
// client certificate for user in system:masters and returns a kubeconfig
// for the API VIP (else this node's apiserver).
func (k *Kube) AdminKubeconfig(user string) ([]byte, error) {
	if k.Role != "control-plane" {
		return nil, ErrNotControlPlane
	}
	dir := k.path("etc/kubernetes/pki")
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("cluster CA not made yet (the control plane is still being created): %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	ca, err := pki.LoadAuthority(caPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	host := ""
	switch {
	case len(k.Cluster.APIVIPs) > 0:
		host = k.Cluster.APIVIPs[0].String()
	case len(k.NodeIPs) > 0:
		host = k.NodeIPs[0].String()
	default:
		return nil, errors.New("no API address: set cluster.apiVIPs")
	}
	pair, err := ca.Issue(pki.Request{CommonName: user, Organization: []string{"system:masters"}, Client: true,
		NotAfter: time.Now().Add(AdminKubeconfigValidity)})
	if err != nil {
		return nil, err
	}
	return Kubeconfig("https://"+net.JoinHostPort(host, strconv.Itoa(apiServerPort)), k.clusterName(), user, caPEM, pair.CertPEM, pair.KeyPEM), nil
}

func (k *Kube) clusterName() string {
	if k.Cluster.Name == "" {
		return "kubernetes"
	}
	return k.Cluster.Name
}

// Kubeconfig is a kubeconfig with inline credentials.
func Kubeconfig(server, cluster, user string, caPEM, certPEM, keyPEM []byte) []byte {
	b64 := base64.StdEncoding.EncodeToString
	ctx := user + "@" + cluster
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %s
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: %s
  context: {cluster: %s, user: %s}
current-context: %s
`, strconv.Quote(cluster), server, b64(caPEM), strconv.Quote(user), b64(certPEM), b64(keyPEM),
		strconv.Quote(ctx), strconv.Quote(cluster), strconv.Quote(user), strconv.Quote(ctx)))
}
