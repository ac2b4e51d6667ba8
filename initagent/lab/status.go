package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ballast-os/ballast/initagent/boottime"
)

// NodeStatus is one node's progress as its node API reports it.
type NodeStatus struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	Address   string `json:"address"`
	Container string `json:"container"` // runc's status: running, stopped, "" (none)
	// Progress is the furthest milestone: booting, network committed,
	// containerd ready, kubelet started, etcd member (control planes),
	// apiserver ready, Ready.
	Progress  string  `json:"progress"`
	Etcd      string  `json:"etcd,omitempty"`      // bootstrapped, learner, member (control planes)
	Phase     string  `json:"phase,omitempty"`     // the runtime's phase
	ReadyAt   float64 `json:"readyAt,omitempty"`   // seconds from boot to node Ready
	LastError string  `json:"lastError,omitempty"` // the runtime's or the API's
	Ready     bool    `json:"ready"`
	// Boot is the node's boot timeline (seconds since its agent started).
	Boot []boottime.Mark `json:"boot,omitempty"`
}

// Milestones in order; Progress is one of them.
const (
	ProgressStopped    = "stopped"
	ProgressBooting    = "booting"
	ProgressNetwork    = "network committed"
	ProgressContainerd = "containerd ready"
	ProgressKubelet    = "kubelet started"
	ProgressEtcd       = "etcd member"
	ProgressAPIServer  = "apiserver ready"
	ProgressReady      = "Ready"
)

// apiStatus is the part of the node API's /v1/status the lab reads.
type apiStatus struct {
	Transactions []struct {
		State string `json:"state"`
	} `json:"transactions"`
	Sections struct {
		Boot       []boottime.Mark `json:"boot"`
		Kubernetes *struct {
			Phase           string  `json:"phase"`
			ContainerdReady float64 `json:"containerdReadySeconds"`
			KubeletStarted  float64 `json:"kubeletStartedSeconds"`
			APIServerReady  float64 `json:"apiServerReadySeconds"`
			NodeReady       float64 `json:"nodeReadySeconds"`
			Ready           bool    `json:"ready"`
			LastError       string  `json:"lastError"`
			Etcd            string  `json:"etcd"`
		} `json:"kubernetes"`
	} `json:"sections"`
}

// Status asks every node for its progress.
func (s *State) Status(ctx context.Context) ([]NodeStatus, error) {
	client, err := s.apiClient()
	if err != nil {
		return nil, err
	}
	out := make([]NodeStatus, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		st := NodeStatus{Name: n.Name, Role: n.Role, Address: n.Address, Progress: ProgressStopped}
		st.Container, _ = s.containerState(n)
		if st.Container == "running" {
			st.Progress = ProgressBooting
			s.nodeProgress(ctx, client, n, &st)
		}
		out = append(out, st)
	}
	return out, nil
}

func (s *State) nodeProgress(ctx context.Context, client *http.Client, n Node, st *NodeStatus) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+net.JoinHostPort(n.Address, "50000")+"/v1/status", nil)
	if err != nil {
		return
	}
	resp, err := client.Do(req)
	if err != nil {
		return // the API is not up yet: still booting
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode != http.StatusOK {
		st.LastError = fmt.Sprintf("node API: %s: %s", resp.Status, strings.TrimSpace(string(body)))
		return
	}
	var a apiStatus
	if err := json.Unmarshal(body, &a); err != nil {
		st.LastError = "node API status: " + err.Error()
		return
	}
	for _, t := range a.Transactions {
		if t.State == "Available" {
			st.Progress = ProgressNetwork
		}
	}
	st.Boot = a.Sections.Boot
	k := a.Sections.Kubernetes
	if k == nil {
		return
	}
	st.Phase, st.LastError, st.Etcd = k.Phase, k.LastError, k.Etcd
	for _, m := range []struct {
		reached bool
		name    string
	}{
		{k.ContainerdReady > 0, ProgressContainerd},
		{k.KubeletStarted > 0, ProgressKubelet},
		{k.Etcd == "member" || k.Etcd == "bootstrapped", ProgressEtcd},
		{k.APIServerReady > 0, ProgressAPIServer},
		{k.Ready, ProgressReady},
	} {
		if m.reached {
			st.Progress = m.name
		}
	}
	st.Ready, st.ReadyAt = k.Ready, k.NodeReady
}

// apiClient speaks mutual TLS to the nodes' APIs with the lab's client
// certificate.
func (s *State) apiClient() (*http.Client, error) {
	dir := s.pkiDir()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("lab CA: no certificate in " + filepath.Join(dir, "ca.crt"))
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client-admin.crt"), filepath.Join(dir, "client-admin.key"))
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		// Each status round asks again; no idle connections to leak.
		DisableKeepAlives: true,
	}}, nil
}

// Wait follows the nodes until every one is Ready, calling progress with
// each change, until ctx ends; then it writes the admin kubeconfig.
func (s *State) Wait(ctx context.Context, progress func([]NodeStatus)) error {
	var last string
	for {
		st, err := s.Status(ctx)
		if err != nil {
			return err
		}
		key, ready := "", true
		for _, n := range st {
			key += n.Name + "=" + n.Progress + ";"
			ready = ready && n.Ready
		}
		if key != last && progress != nil {
			progress(st)
		}
		last = key
		if ready {
			return s.WriteKubeconfig(ctx)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes not Ready: %s: %w", strings.TrimSuffix(last, ";"), ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}
