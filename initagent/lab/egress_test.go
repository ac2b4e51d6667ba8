package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/initagent/api"
)

// egressAddr is the address worker-1's pods leave with once the config
// declares it: a second address of the node, on its lab link.
const egressAddr = "198.19.0.41"

// egress checks pod egress on the lab (issue 20): a server on the lab host,
// outside the cluster, sees a pod on worker-1 coming from the node's
// address (masquerade, the default); a config change applied through the
// node API (a network transaction) that declares another source makes the
// next connection arrive from it; applying the old config brings the
// default back.
func (h *haCluster) egress(pod string) {
	worker := h.node("worker-1")
	ln, err := net.Listen("tcp", net.JoinHostPort(h.s.Gateway, "8099"))
	if err != nil {
		h.t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		_, _ = io.WriteString(w, host)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	podIP := h.jsonpath("pod", pod, "{.status.podIP}")
	seenFrom := func() (string, error) {
		url := fmt.Sprintf("http://%s:8080/dial?request=/&protocol=http&host=%s&port=8099&tries=1", podIP, h.s.Gateway)
		out, err := exec.CommandContext(h.ctx, "ip", "netns", "exec", worker.Netns, "curl", "-sS", "--max-time", "20", url).Output()
		if err != nil {
			return "", fmt.Errorf("%s: %v", url, err)
		}
		var dial struct{ Responses, Errors []string }
		if err := json.Unmarshal(out, &dial); err != nil || len(dial.Responses) != 1 {
			return "", fmt.Errorf("%s: %s (%v)", url, out, err)
		}
		return dial.Responses[0], nil
	}
	want := func(what, addr string) {
		h.eventually(what, time.Minute, func() error {
			got, err := seenFrom()
			if err == nil && got != addr {
				err = fmt.Errorf("the lab host saw %s's connection come from %s, want %s", pod, got, addr)
			}
			return err
		})
	}
	want("pod egress masqueraded to the node's address", worker.Address)

	original, err := os.ReadFile(filepath.Join(h.s.nodeDir(worker), "machine-config.yaml"))
	if err != nil {
		h.t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(original, &cfg); err != nil {
		h.t.Fatal(err)
	}
	network := cfg["network"].(map[string]any)
	eth0 := network["interfaces"].([]any)[0].(map[string]any)
	eth0["addresses"] = append(eth0["addresses"].([]any), egressAddr+"/32")
	network["egress"] = []any{map[string]any{"to": h.s.Gateway + "/32", "source": egressAddr}}
	declared, err := yaml.Marshal(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.applyConfig(worker, declared)
	want("pod egress from the declared source", egressAddr)
	h.applyConfig(worker, original)
	want("pod egress masqueraded again after the old config came back", worker.Address)
}

// applyConfig sends a machine config to n's node API and waits for the
// transaction's verdict: it must end Available (committed).
func (h *haCluster) applyConfig(n Node, config []byte) {
	h.t.Helper()
	client, err := h.s.apiClient()
	if err != nil {
		h.t.Fatal(err)
	}
	client.Timeout = 2 * time.Minute
	resp, err := client.Post("https://"+net.JoinHostPort(n.Address, "50000")+"/v1/apply", "application/yaml", bytes.NewReader(config))
	if err != nil {
		h.t.Fatalf("apply on %s: %v", n.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var ar api.ApplyResponse
	if err := json.Unmarshal(body, &ar); err != nil || resp.StatusCode != http.StatusOK || ar.Record.State != "Available" {
		h.t.Fatalf("apply on %s: %s: %s", n.Name, resp.Status, strings.TrimSpace(string(body)))
	}
	h.t.Logf("apply on %s: generation %d %s (%s)", n.Name, ar.Record.Generation, ar.Record.State, ar.Record.Finished.Sub(ar.Record.Started).Round(time.Millisecond))
}
