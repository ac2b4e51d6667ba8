package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/config"
)

// Role names, as in cluster.role.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// Cluster networks of every lab: pods and services, never on the bridge.
const (
	podCIDR     = "10.244.0.0/16"
	serviceCIDR = "10.96.0.0/12"
	clusterName = "lab"
	domain      = "ballast.test"
)

// Secrets are the credentials the lab generates once and hands to its nodes.
type Secrets struct {
	// APICA signs the node API's server certificates and the operator's
	// client certificate (api.tls.clientCA).
	APICACert []byte
	// Cluster is what the cluster's nodes share (cluster.ca, etcdCA,
	// frontProxyCA, serviceAccountKey, token): control planes all of it,
	// workers the CA certificate and the token.
	Cluster pki.ClusterSecrets
}

// NodeCredentials are one node's API server certificate and key.
type NodeCredentials struct {
	CertPEM, KeyPEM []byte
}

// MachineConfig renders node's machine config: a static address on eth0
// with the lab's gateway, the cluster section, and the node API with mutual
// TLS. The result is validated with the agent's own parser.
func MachineConfig(s *State, n Node, sec Secrets, cred NodeCredentials) ([]byte, error) {
	prefix, err := netip.ParsePrefix(s.Subnet)
	if err != nil {
		return nil, fmt.Errorf("lab subnet %q: %w", s.Subnet, err)
	}
	network := map[string]any{
		"interfaces": []any{map[string]any{
			"name":      "eth0",
			"addresses": []string{fmt.Sprintf("%s/%d", n.Address, prefix.Bits())},
			"routes":    []any{map[string]string{"to": "default", "via": s.Gateway}},
		}},
	}
	if len(s.DNSServers) > 0 {
		network["dns"] = map[string]any{"servers": s.DNSServers}
	}
	if s.Firewall {
		network["firewall"] = map[string]any{"enabled": true, "rules": []any{map[string]any{
			"name": "lab host to etcd", "protocol": "tcp", "ports": []string{"2379"}, "from": []string{s.Gateway},
		}}}
	}
	doc := map[string]any{
		"apiVersion": "ballast.dev/v1alpha1",
		"kind":       "MachineConfig",
		"network":    network,
		"cluster":    clusterSection(s, n, sec),
		"api": map[string]any{"tls": map[string]string{
			"certificate": string(cred.CertPEM), "key": string(cred.KeyPEM), "clientCA": string(sec.APICACert),
		}},
	}
	data, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	if _, _, err := config.Parse(data); err != nil {
		return nil, fmt.Errorf("BUG: the lab's machine config for %s is invalid: %w", n.Name, err)
	}
	return data, nil
}

// clusterSection is the one place where a node learns about its cluster:
// control planes list each other as etcd peers and apiservers and share
// every key; workers get the CA certificate, the bootstrap token and the
// control planes' apiservers for their local API proxy.
func clusterSection(s *State, n Node, sec Secrets) map[string]any {
	var peers, apiServers []string
	for _, o := range s.Nodes {
		if o.Role != RoleControlPlane || o.Name == n.Name {
			continue
		}
		peers = append(peers, o.Address)
		// The node's own apiserver is added by the agent; a listed one is
		// probed at every network change, so only the others are listed.
		apiServers = append(apiServers, net.JoinHostPort(o.Address, strconv.Itoa(6443)))
	}
	c := map[string]any{
		"name":         clusterName,
		"domain":       domain,
		"role":         n.Role,
		"apiVIPs":      []string{s.APIVIP},
		"podCIDRs":     []string{podCIDR},
		"serviceCIDRs": []string{serviceCIDR},
	}
	if len(peers) > 0 {
		c["peers"] = peers
	}
	if len(apiServers) > 0 {
		c["apiServers"] = apiServers
	}
	cs := sec.Cluster
	if cs.Token != "" {
		c["token"] = cs.Token
	}
	switch {
	case n.Role == RoleControlPlane && cs.CA.Key != "":
		c["ca"] = cs.CA
		c["etcdCA"], c["frontProxyCA"], c["serviceAccountKey"] = cs.EtcdCA, cs.FrontProxyCA, cs.ServiceAccountKey
	case n.Role == RoleWorker && cs.CA.Certificate != "":
		c["ca"] = map[string]string{"certificate": cs.CA.Certificate}
		delete(c, "peers")
	}
	return c
}

// clusterSecretsFile keeps the cluster's shared secrets in pki/, so
// machines outside the provisioner can be given a config later.
const clusterSecretsFile = "cluster-secrets.yaml"

// MachineConfigFor renders the machine config of a machine that joins the
// lab from outside its provisioner, such as a VM whose NIC is on the lab's
// bridge: name, role (RoleWorker or RoleControlPlane) and its address on
// the lab subnet. Its node API certificate is signed by the lab's CA.
func (s *State) MachineConfigFor(name, role, addr string) ([]byte, error) {
	dir := s.pkiDir()
	var err error
	read := func(f string) []byte {
		data, rerr := os.ReadFile(filepath.Join(dir, f))
		if rerr != nil && err == nil {
			err = rerr
		}
		return data
	}
	caCert, caKey, clusterYAML := read("ca.crt"), read("ca.key"), read(clusterSecretsFile)
	if err != nil {
		return nil, err
	}
	var cluster pki.ClusterSecrets
	if err := yaml.Unmarshal(clusterYAML, &cluster); err != nil {
		return nil, fmt.Errorf("%s: %w", clusterSecretsFile, err)
	}
	ca, err := pki.LoadAuthority(caCert, caKey)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(addr)
	if ip == nil {
		return nil, fmt.Errorf("machine %s: address %q is not an IP address", name, addr)
	}
	p, err := ca.Issue(pki.Request{CommonName: name, IPs: []net.IP{ip}, DNSNames: []string{name}, Server: true,
		NotAfter: time.Now().Add(365 * 24 * time.Hour)})
	if err != nil {
		return nil, err
	}
	return MachineConfig(s, Node{Name: name, Role: role, Address: addr}, Secrets{APICACert: caCert, Cluster: cluster},
		NodeCredentials{CertPEM: p.CertPEM, KeyPEM: p.KeyPEM})
}
