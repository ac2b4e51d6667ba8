package runtime

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// kubeconfig is the part of a kubeconfig file the node uses: one cluster
// and one user with inline (base64) certificate data, as kubeadm writes them.
type kubeconfig struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Clusters   []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server string `yaml:"server"`
			CAData string `yaml:"certificate-authority-data"`
			CAFile string `yaml:"certificate-authority"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string `yaml:"name"`
		User struct {
			CertData string `yaml:"client-certificate-data"`
			KeyData  string `yaml:"client-key-data"`
			CertFile string `yaml:"client-certificate"` // kubelet's after TLS bootstrap
			KeyFile  string `yaml:"client-key"`
		} `yaml:"user"`
	} `yaml:"users"`
}

// KubeClient talks to the Kubernetes API with a client certificate: enough
// for the node to follow its own Node object, and for tests.
type KubeClient struct {
	Server string // https://host:port
	HTTP   *http.Client
}

// NewKubeClient builds a client from PEM credentials.
func NewKubeClient(server string, caPEM, certPEM, keyPEM []byte) (*KubeClient, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("kube client: no CA certificate in the given PEM")
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("kube client: %w", err)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 2,
	}
	return &KubeClient{Server: strings.TrimRight(server, "/"), HTTP: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

// LoadKubeconfig reads a kubeconfig with inline credentials (kubeadm's
// admin.conf, kubelet.conf) or files (kubelet's after TLS bootstrap);
// server, if set, replaces the file's.
func LoadKubeconfig(path, server string) (*KubeClient, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(kc.Clusters) == 0 || len(kc.Users) == 0 {
		return nil, fmt.Errorf("%s: needs a cluster and a user", path)
	}
	dec := func(field, s string) ([]byte, error) {
		file := map[string]string{"certificate-authority-data": kc.Clusters[0].Cluster.CAFile,
			"client-certificate-data": kc.Users[0].User.CertFile, "client-key-data": kc.Users[0].User.KeyFile}[field]
		if s == "" && file != "" {
			return os.ReadFile(file)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("%s: %s is not inline base64 data", path, field)
		}
		return b, nil
	}
	ca, err := dec("certificate-authority-data", kc.Clusters[0].Cluster.CAData)
	if err != nil {
		return nil, err
	}
	cert, err := dec("client-certificate-data", kc.Users[0].User.CertData)
	if err != nil {
		return nil, err
	}
	key, err := dec("client-key-data", kc.Users[0].User.KeyData)
	if err != nil {
		return nil, err
	}
	if server == "" {
		server = kc.Clusters[0].Cluster.Server
	}
	return NewKubeClient(server, ca, cert, key)
}

// WithServer rewrites a kubeconfig's server URL (every cluster's).
func WithServer(data []byte, server string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	n := 0
	var walk func(*yaml.Node)
	walk = func(y *yaml.Node) {
		if y.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(y.Content); i += 2 {
				if y.Content[i].Value == "server" && y.Content[i+1].Kind == yaml.ScalarNode {
					y.Content[i+1].Value = server
					n++
				}
			}
		}
		for _, c := range y.Content {
			walk(c)
		}
	}
	walk(&doc)
	if n == 0 {
		return nil, errors.New("kubeconfig has no server to rewrite")
	}
	return yaml.Marshal(&doc)
}

// APIError is a non-2xx answer from the API.
type APIError struct {
	Code    int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("API answered %d: %s", e.Code, e.Message) }

// IsNotFound reports whether err is a 404 from the API.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == http.StatusNotFound
}

// Do sends a request; body (if not nil) is sent as JSON and a JSON answer
// is decoded into out (if not nil). Raw bodies: use Raw.
func (c *KubeClient) Do(ctx context.Context, method, path string, body, out any) error {
	var in io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		in = bytes.NewReader(b)
	}
	data, err := c.Raw(ctx, method, path, in)
	if err != nil {
		return err
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Raw sends a request and returns the answer's body.
func (c *KubeClient) Raw(ctx context.Context, method, path string, body io.Reader) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.Server+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(data))
		var status struct{ Message string }
		if json.Unmarshal(data, &status) == nil && status.Message != "" {
			msg = status.Message
		}
		return nil, &APIError{Code: resp.StatusCode, Message: msg}
	}
	return data, nil
}

// Node is the part of a Node object the node follows.
type Node struct {
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		PodCIDRs []string `json:"podCIDRs"`
		Taints   []struct {
			Key    string `json:"key"`
			Effect string `json:"effect"`
		} `json:"taints"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type    string `json:"type"`
			Status  string `json:"status"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"conditions"`
		Addresses []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
	} `json:"status"`
}

// Ready reports the Ready condition and its message.
func (n *Node) Ready() (bool, string) {
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True", c.Reason + ": " + c.Message
		}
	}
	return false, "no Ready condition yet"
}

// InternalIPs are the node's InternalIP addresses in the order kubelet reports them.
func (n *Node) InternalIPs() []string {
	var ips []string
	for _, a := range n.Status.Addresses {
		if a.Type == "InternalIP" {
			ips = append(ips, a.Address)
		}
	}
	return ips
}

// GetNode reads a Node object.
func (c *KubeClient) GetNode(ctx context.Context, name string) (*Node, error) {
	var n Node
	if err := c.Do(ctx, http.MethodGet, "/api/v1/nodes/"+name, nil, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// NodeList is every Node object and the resourceVersion to watch from.
type NodeList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []Node `json:"items"`
}

// ListNodes reads every Node object.
func (c *KubeClient) ListNodes(ctx context.Context) (*NodeList, error) {
	var l NodeList
	if err := c.Do(ctx, http.MethodGet, "/api/v1/nodes", nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// NodeEvent is one change seen by WatchNodes: Type is ADDED, MODIFIED or
// DELETED (bookmarks are not passed on).
type NodeEvent struct {
	Type string
	Node Node
}

// WatchNodes follows the Node objects from resourceVersion (a NodeList's),
// calling fn for each change, until ctx ends, the server ends the stream
// (nil) or fn fails. An ERROR event ends it with an *APIError; 410 means the
// version is too old: list again.
func (c *KubeClient) WatchNodes(ctx context.Context, resourceVersion string, fn func(NodeEvent) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		c.Server+"/api/v1/nodes?watch=true&resourceVersion="+url.QueryEscape(resourceVersion), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	// A watch lasts longer than any request timeout: only ctx ends it.
	resp, err := (&http.Client{Transport: c.HTTP.Transport}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return &APIError{Code: resp.StatusCode, Message: strings.TrimSpace(string(data))}
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("node watch: %w", err)
		}
		switch ev.Type {
		case "ADDED", "MODIFIED", "DELETED":
			var n Node
			if err := json.Unmarshal(ev.Object, &n); err != nil {
				return fmt.Errorf("node watch: %s event: %w", ev.Type, err)
			}
			if err := fn(NodeEvent{Type: ev.Type, Node: n}); err != nil {
				return err
			}
		case "ERROR":
			var status struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			_ = json.Unmarshal(ev.Object, &status)
			return &APIError{Code: status.Code, Message: status.Message}
		}
	}
}
