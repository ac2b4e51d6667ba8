package lab

import (
	"context"
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
)

// KubeconfigFile is the admin kubeconfig in the lab directory.
const KubeconfigFile = "kubeconfig"

// Bootstrap asks the first control plane to create the cluster's etcd
// (`nodectl bootstrap`), retrying until its node API answers or ctx ends.
// The call is idempotent; the other control planes join that etcd.
func (s *State) Bootstrap(ctx context.Context) (string, error) {
	cp, ok := s.firstControlPlane()
	if !ok {
		return "", errors.New("the lab has no control plane")
	}
	body, err := s.callUntilAnswered(ctx, cp, "/v1/bootstrap")
	if err != nil {
		return "", fmt.Errorf("bootstrap on %s: %w", cp.Name, err)
	}
	var r struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(body, &r)
	return r.Message, nil
}

// WriteKubeconfig fetches an admin kubeconfig for the API VIP from a
// control plane (`nodectl kubeconfig`) and writes it to the lab directory.
func (s *State) WriteKubeconfig(ctx context.Context) error {
	var errs []error
	for _, n := range s.Nodes {
		if n.Role != RoleControlPlane {
			continue
		}
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		data, err := s.callUntilAnswered(ctx, n, "/v1/kubeconfig")
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
			continue
		}
		return os.WriteFile(s.AdminKubeconfig(), data, 0o600)
	}
	return fmt.Errorf("admin kubeconfig: %w", errors.Join(errs...))
}

// AdminKubeconfig is the cluster's admin kubeconfig (server: the API
// VIP), written by WriteKubeconfig.
func (s *State) AdminKubeconfig() string { return filepath.Join(s.Dir, KubeconfigFile) }

// callUntilAnswered POSTs to path on n's node API, retrying while the API
// is not up yet or answers 5xx, until ctx ends. A 4xx answer is final, as
// is 501 (the node runs no Kubernetes: a system image without the payload).
func (s *State) callUntilAnswered(ctx context.Context, n Node, path string) ([]byte, error) {
	client, err := s.apiClient()
	if err != nil {
		return nil, err
	}
	url := "https://" + net.JoinHostPort(n.Address, "50000") + path
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
			resp.Body.Close()
			switch {
			case rerr != nil:
				last = rerr
			case resp.StatusCode == http.StatusOK:
				return body, nil
			case resp.StatusCode < 500 || resp.StatusCode == http.StatusNotImplemented:
				return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
			default:
				last = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
			}
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(time.Second):
		}
	}
}

func (s *State) firstControlPlane() (Node, bool) {
	for _, n := range s.Nodes {
		if n.Role == RoleControlPlane {
			return n, true
		}
	}
	return Node{}, false
}
