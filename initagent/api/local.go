// Package api serves the agent's API. Local serves it on a unix socket,
// reachable only by root on the node (and by nodectl on the console); the
// network API with mTLS builds on the same handlers.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ballast-os/ballast/initagent/nodeip"
	"github.com/ballast-os/ballast/initagent/txn"
)

// SocketPath is where the local API listens on a node.
const SocketPath = "/run/ballast/agent.sock"

// MaxConfigSize bounds an applied config document.
const MaxConfigSize = 4 << 20

// Transactions is what the API needs from the transaction manager.
type Transactions interface {
	Apply(ctx context.Context, data []byte, o txn.Options) (txn.Record, error)
	History() []txn.Record
}

// Status is the node status the API returns.
type Status struct {
	Hostname     string       `json:"hostname"`
	Transactions []txn.Record `json:"transactions"`
	Network      any          `json:"network,omitempty"`
	NodeIP       string       `json:"nodeIP,omitempty"` // kubelet --node-ip value
	// NodeIPCandidates explains the nodeIP decision: every candidate with its rule.
	NodeIPCandidates []string `json:"nodeIPCandidates,omitempty"`
}

// Server serves the node API handlers.
type Server struct {
	Log      *slog.Logger
	Txn      Transactions
	Hostname string
	// NetworkStatus, if set, is included in the status.
	NetworkStatus func() any
	// NodeIP, if set, returns the current nodeIP decision.
	NodeIP func() *nodeip.Decision
}

// NodeIPResponse is the answer to GET /v1/nodeip.
type NodeIPResponse struct {
	KubeletArg  string           `json:"kubeletArg"`
	Decision    *nodeip.Decision `json:"decision"`
	Explanation string           `json:"explanation"`
}

// ApplyResponse is the answer to POST /v1/apply.
type ApplyResponse struct {
	Record txn.Record `json:"record"`
	Error  string     `json:"error,omitempty"`
}

// Handler returns the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st := Status{Hostname: s.Hostname, Transactions: s.Txn.History()}
		if s.NetworkStatus != nil {
			st.Network = s.NetworkStatus()
		}
		if s.NodeIP != nil {
			if d := s.NodeIP(); d != nil {
				st.NodeIP, st.NodeIPCandidates = d.KubeletArg(), d.Explanation()
			}
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /v1/nodeip", func(w http.ResponseWriter, r *http.Request) {
		var d *nodeip.Decision
		if s.NodeIP != nil {
			d = s.NodeIP()
		}
		if d == nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "no nodeIP decision yet"})
			return
		}
		writeJSON(w, http.StatusOK, NodeIPResponse{KubeletArg: d.KubeletArg(), Decision: d, Explanation: d.String()})
	})
	mux.HandleFunc("POST /v1/apply", func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(io.LimitReader(r.Body, MaxConfigSize+1))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, ApplyResponse{Error: err.Error()})
			return
		}
		if len(data) > MaxConfigSize {
			writeJSON(w, http.StatusRequestEntityTooLarge, ApplyResponse{Error: fmt.Sprintf("config larger than %d bytes", MaxConfigSize)})
			return
		}
		dry := r.URL.Query().Get("dryRun") == "true"
		s.Log.Info("apply requested", "client", "local socket", "dryRun", dry, "bytes", len(data))
		rec, err := s.Txn.Apply(r.Context(), data, txn.Options{DryRun: dry})
		resp := ApplyResponse{Record: rec}
		code := http.StatusOK
		if err != nil {
			resp.Error = err.Error()
			code = http.StatusUnprocessableEntity
			if rec.Reason == txn.ReasonFailedToConfigure {
				code = http.StatusConflict
			}
		}
		writeJSON(w, code, resp)
	})
	return mux
}

// writeJSON sends v with a Content-Length: over a virtio-serial byte stream
// there are no connection boundaries, so every response must be framed.
func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code, data = http.StatusInternalServerError, []byte(fmt.Sprintf("{\"error\": %q}", err.Error()))
	}
	data = append(data, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(code)
	_, _ = w.Write(data)
}

// ServeLocal serves the API on a unix socket (mode 0600) until ctx ends.
func (s *Server) ServeLocal(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("local api: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
