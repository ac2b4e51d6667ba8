package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// NodeConfig lists nodes and the credentials to reach them, like a kubeconfig:
//
//	current: node-1
//	nodes:
//	  - name: node-1
//	    endpoint: 10.0.0.5:50000
//	    ca: ca.crt          # the CA that signed the node's certificate
//	    certificate: admin.crt
//	    key: admin.key
//
// ca, certificate and key are file paths (relative to the file) or inline PEM.
type NodeConfig struct {
	Current string `yaml:"current"`
	Nodes   []Node `yaml:"nodes"`

	dir string
}

// Node is one entry of a NodeConfig.
type Node struct {
	Name        string `yaml:"name"`
	Endpoint    string `yaml:"endpoint"`
	CA          string `yaml:"ca"`
	Certificate string `yaml:"certificate"`
	Key         string `yaml:"key"`
}

// defaultNodeConfig is $BALLAST_NODECONFIG, else ~/.config/ballast/nodeconfig.yaml.
func defaultNodeConfig() string {
	if p := os.Getenv("BALLAST_NODECONFIG"); p != "" {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".config", "ballast", "nodeconfig.yaml")
}

func loadNodeConfig(path string) (*NodeConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c NodeConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.dir = filepath.Dir(path)
	for i, n := range c.Nodes {
		if n.Name == "" || n.Endpoint == "" {
			return nil, fmt.Errorf("%s: nodes[%d]: name and endpoint are required", path, i)
		}
	}
	return &c, nil
}

// node returns the named node, or the current one.
func (c *NodeConfig) node(name string) (*Node, error) {
	if name == "" {
		name = c.Current
	}
	if name == "" && len(c.Nodes) == 1 {
		return &c.Nodes[0], nil
	}
	var names []string
	for i := range c.Nodes {
		if c.Nodes[i].Name == name {
			return &c.Nodes[i], nil
		}
		names = append(names, c.Nodes[i].Name)
	}
	if name == "" {
		return nil, fmt.Errorf("no node chosen: pass --node (one of %s) or set current in the nodeconfig", strings.Join(names, ", "))
	}
	return nil, fmt.Errorf("node %q is not in the nodeconfig (it has %s)", name, strings.Join(names, ", "))
}

// pem reads a field that is inline PEM or a path relative to the nodeconfig.
func (c *NodeConfig) pem(field, v string) ([]byte, error) {
	if strings.Contains(v, "-----BEGIN") {
		return []byte(v), nil
	}
	if v == "" {
		return nil, fmt.Errorf("%s is not set", field)
	}
	if !filepath.IsAbs(v) {
		v = filepath.Join(c.dir, v)
	}
	b, err := os.ReadFile(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return b, nil
}

// tlsClient builds an mTLS client for n.
func (c *NodeConfig) tlsClient(n *Node, timeout time.Duration) (*http.Client, error) {
	caPEM, err := c.pem("ca", n.CA)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("node %s: ca holds no PEM certificate", n.Name)
	}
	certPEM, err := c.pem("certificate", n.Certificate)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	keyPEM, err := c.pem("key", n.Key)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("node %s: certificate and key: %w", n.Name, err)
	}
	conf := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12,
		// Present our certificate even if the node names other CAs: its refusal is clearer than silence.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}}, nil
}

// explain turns transport errors into what the operator should check.
func explain(target string, err error) error {
	var uerr x509.UnknownAuthorityError
	var herr x509.HostnameError
	var cerr x509.CertificateInvalidError
	var alert tls.AlertError
	var opErr *net.OpError
	msg := err.Error()
	switch {
	case errors.As(err, &uerr), errors.As(err, &herr), errors.As(err, &cerr) && strings.Contains(msg, "server"):
		return fmt.Errorf("%s: the node's certificate is not trusted (%v): check ca in the nodeconfig", target, err)
	case errors.As(err, &alert) || strings.Contains(msg, "remote error: tls"):
		return fmt.Errorf("%s refused our client certificate (%v): check certificate and key in the nodeconfig, "+
			"that it was issued by the node's api.tls.clientCA, is not expired and not revoked", target, err)
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "Client.Timeout"):
		return fmt.Errorf("%s did not answer in time: %w", target, err)
	case errors.As(err, &opErr) || errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s unreachable: %w", target, err)
	}
	return fmt.Errorf("%s: %w", target, err)
}
