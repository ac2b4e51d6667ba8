package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ballast-os/ballast/initagent/logring"
	"github.com/ballast-os/ballast/initagent/nodeip"
	"github.com/ballast-os/ballast/initagent/txn"
)

// Transactions is what the API needs from the network transaction manager.
type Transactions interface {
	Apply(ctx context.Context, data []byte, o txn.Options) (txn.Record, error)
	Confirm(generation uint64) (txn.Record, error)
	Rollback(ctx context.Context) (txn.Record, error)
	History() []txn.Record
}

// Access is what a listener lets its clients do.
type Access int

const (
	// ReadOnly serves status, nodeip, logs and metrics.
	ReadOnly Access = iota
	// Full adds every mutating call.
	Full
)

// MaxTryWindow bounds how long a tried change may wait for confirmation.
const MaxTryWindow = 24 * time.Hour

// Status is the node status the API returns.
type Status struct {
	Hostname     string       `json:"hostname"`
	Transactions []txn.Record `json:"transactions"`
	Network      any          `json:"network,omitempty"`
	NodeIP       string       `json:"nodeIP,omitempty"` // kubelet --node-ip value
	// NodeIPCandidates explains the nodeIP decision: every candidate with its rule.
	NodeIPCandidates []string `json:"nodeIPCandidates,omitempty"`
	// Sections holds the status of each part of the agent that reports one
	// (vip, apiProxy, dns, daemons, slots), by name.
	Sections map[string]any `json:"sections,omitempty"`
}

// Power is a reboot or shutdown request from the API.
type Power func(action, reason string) error

// Server serves the node API handlers.
type Server struct {
	Log      *slog.Logger
	Txn      Transactions
	Hostname string
	// ConsoleAccess is what the local socket and console port allow; the
	// mTLS listener always allows Full.
	ConsoleAccess Access
	// NetworkStatus, if set, is included in the status.
	NetworkStatus func() any
	// NodeIP, if set, returns the current nodeIP decision.
	NodeIP func() *nodeip.Decision
	// Sections add named parts to the status.
	Sections map[string]func() any
	// Logs, if set, serves /v1/logs.
	Logs *logring.Ring
	// Power, if set, serves reboot and shutdown.
	Power Power
	// Metrics write Prometheus text-format metrics of each part.
	Metrics []func(io.Writer)
	// Upgrade, if set, serves system upgrades and rollbacks of the system
	// slot; nil on nodes without system slots (netboot).
	Upgrade Upgrader
	// Cluster, if set, serves bootstrap and kubeconfig (Kubernetes nodes).
	Cluster ClusterCalls
}

// ClusterCalls are the Kubernetes cluster's calls; nil fields are not served.
type ClusterCalls struct {
	// Bootstrap makes this control plane create the cluster's etcd.
	Bootstrap func(ctx context.Context) (BootstrapResponse, error)
	// Kubeconfig returns an admin kubeconfig for user.
	Kubeconfig func(ctx context.Context, user string) ([]byte, error)
}

// BootstrapResponse is the answer to POST /v1/bootstrap.
type BootstrapResponse struct {
	Already bool   `json:"already"`
	Message string `json:"message"`
}

// StatusError is an error with the HTTP status it answers with.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// writeError answers err with its StatusError code, else fallback.
func writeError(w http.ResponseWriter, err error, fallback int) {
	code := fallback
	var se *StatusError
	if errors.As(err, &se) {
		code = se.Code
	}
	writeJSON(w, code, ErrorResponse{Error: err.Error()})
}

// Upgrader writes a new system image into the inactive system slot, or
// makes the other good slot the default.
type Upgrader interface {
	Upgrade(ctx context.Context, image io.Reader, sha256 string) (string, error)
	Rollback(ctx context.Context) (string, error)
}

// NodeIPResponse is the answer to GET /v1/nodeip.
type NodeIPResponse struct {
	KubeletArg  string           `json:"kubeletArg"`
	Decision    *nodeip.Decision `json:"decision"`
	Explanation string           `json:"explanation"`
}

// ApplyResponse is the answer to POST /v1/apply, /v1/confirm and /v1/rollback.
type ApplyResponse struct {
	Record txn.Record `json:"record"`
	Error  string     `json:"error,omitempty"`
}

// ErrorResponse is the body of every error without a better shape.
type ErrorResponse struct {
	Error string `json:"error"`
}

type clientKey struct{}

// withClient names who is calling, for the audit log.
func withClient(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, clientKey{}, who)
}

// Client returns who made the request: the client certificate's subject,
// "local socket" or "console port".
func Client(r *http.Request) string {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return r.TLS.PeerCertificates[0].Subject.String()
	}
	if who, ok := r.Context().Value(clientKey{}).(string); ok {
		return who
	}
	return "unknown"
}

// Handler returns the API's HTTP handler for clients with the given access.
func (s *Server) Handler(access Access) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/nodeip", s.nodeIP)
	mux.HandleFunc("GET /v1/logs", s.logs)
	mux.HandleFunc("GET /metrics", s.metrics)
	mutating := map[string]http.HandlerFunc{
		"POST /v1/apply":    s.apply,
		"POST /v1/confirm":  s.confirm,
		"POST /v1/rollback": s.rollback,
		"POST /v1/reboot":   s.power("reboot"),
		"POST /v1/shutdown": s.power("poweroff"),
		"POST /v1/upgrade":  s.upgrade,
		// Bootstrapping creates a cluster; a kubeconfig hands out cluster-admin.
		"POST /v1/bootstrap":  s.bootstrap,
		"POST /v1/kubeconfig": s.kubeconfig,
		"GET /v1/kubeconfig":  s.kubeconfig,
	}
	for pattern, h := range mutating {
		if access == Full {
			mux.HandleFunc(pattern, s.audited(h))
		} else {
			mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusForbidden, ErrorResponse{Error: "this endpoint is read-only: " +
					"change the node through the mutual-TLS API (api.tls in the machine config), " +
					"or boot with ballast.api.console=rw to allow changes from the console"})
			})
		}
	}
	return mux
}

// audited logs every mutating call with its caller.
func (s *Server) audited(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.Log.Info("api call", "client", Client(r), "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery, "remote", r.RemoteAddr)
		h(w, r)
	}
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := Status{Hostname: s.Hostname, Transactions: s.Txn.History()}
	if s.NetworkStatus != nil {
		st.Network = s.NetworkStatus()
	}
	if s.NodeIP != nil {
		if d := s.NodeIP(); d != nil {
			st.NodeIP, st.NodeIPCandidates = d.KubeletArg(), d.Explanation()
		}
	}
	if len(s.Sections) > 0 {
		st.Sections = map[string]any{}
		for name, fn := range s.Sections {
			st.Sections[name] = fn()
		}
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) nodeIP(w http.ResponseWriter, r *http.Request) {
	var d *nodeip.Decision
	if s.NodeIP != nil {
		d = s.NodeIP()
	}
	if d == nil {
		writeJSON(w, http.StatusServiceUnavailable, ErrorResponse{Error: "no nodeIP decision yet"})
		return
	}
	writeJSON(w, http.StatusOK, NodeIPResponse{KubeletArg: d.KubeletArg(), Decision: d, Explanation: d.String()})
}

func (s *Server) apply(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var o txn.Options
	o.DryRun = q.Get("dryRun") == "true"
	if v := q.Get("confirmWithin"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > MaxTryWindow {
			writeJSON(w, http.StatusBadRequest, ApplyResponse{Error: fmt.Sprintf("confirmWithin=%q: give a duration between 1s and %s, e.g. 2m", v, MaxTryWindow)})
			return
		}
		o.ConfirmWithin = d
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxConfigSize+1))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, ApplyResponse{Error: err.Error()})
		return
	}
	if len(data) > MaxConfigSize {
		writeJSON(w, http.StatusRequestEntityTooLarge, ApplyResponse{Error: fmt.Sprintf("config larger than %d bytes", MaxConfigSize)})
		return
	}
	rec, err := s.Txn.Apply(r.Context(), data, o)
	s.answer(w, rec, err)
}

func (s *Server) answer(w http.ResponseWriter, rec txn.Record, err error) {
	resp := ApplyResponse{Record: rec}
	code := http.StatusOK
	if err != nil {
		resp.Error = err.Error()
		code = http.StatusUnprocessableEntity
		switch {
		case rec.Reason == txn.ReasonFailedToConfigure, errors.Is(err, txn.ErrAwaitingConfirmation):
			code = http.StatusConflict
		case errors.Is(err, txn.ErrNothingToConfirm):
			code = http.StatusNotFound
		}
	}
	writeJSON(w, code, resp)
}

func (s *Server) confirm(w http.ResponseWriter, r *http.Request) {
	var gen uint64
	if v := r.URL.Query().Get("generation"); v != "" {
		var err error
		if gen, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeJSON(w, http.StatusBadRequest, ApplyResponse{Error: fmt.Sprintf("generation=%q is not a number", v)})
			return
		}
	}
	rec, err := s.Txn.Confirm(gen)
	s.answer(w, rec, err)
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	switch target := r.URL.Query().Get("target"); target {
	case "", "network":
		rec, err := s.Txn.Rollback(r.Context())
		s.answer(w, rec, err)
	case "system":
		if s.Upgrade == nil {
			writeJSON(w, http.StatusNotImplemented, ErrorResponse{Error: "this node has no system slots (it boots from the network or live media): nothing to roll back"})
			return
		}
		slot, err := s.Upgrade.Rollback(r.Context())
		if err != nil {
			writeJSON(w, http.StatusConflict, ErrorResponse{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"default": slot})
	default:
		writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: fmt.Sprintf("target=%q: use network or system", target)})
	}
}

func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	if s.Upgrade == nil {
		writeJSON(w, http.StatusNotImplemented, ErrorResponse{Error: "this node has no system slots (it boots from the network or live media): upgrade by booting the new image"})
		return
	}
	sum := r.URL.Query().Get("sha256")
	if len(sum) != 64 {
		writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: "sha256= must be the image's 64-hex-digit sha256"})
		return
	}
	slot, err := s.Upgrade.Upgrade(r.Context(), r.Body, sum)
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, ErrorResponse{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"slot": slot})
}

func (s *Server) bootstrap(w http.ResponseWriter, r *http.Request) {
	if s.Cluster.Bootstrap == nil {
		writeJSON(w, http.StatusNotImplemented, ErrorResponse{Error: "this node runs no Kubernetes control plane: bootstrap a control-plane node"})
		return
	}
	resp, err := s.Cluster.Bootstrap(r.Context())
	if err != nil {
		writeError(w, err, http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// kubeconfig answers an admin kubeconfig whose user is the client
// certificate's common name.
func (s *Server) kubeconfig(w http.ResponseWriter, r *http.Request) {
	if s.Cluster.Kubeconfig == nil {
		writeJSON(w, http.StatusNotImplemented, ErrorResponse{Error: "this node runs no Kubernetes control plane: ask a control-plane node"})
		return
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName == "" {
		writeJSON(w, http.StatusForbidden, ErrorResponse{Error: "a kubeconfig names its user after the caller's client certificate: " +
			"call through the mutual-TLS API (api.tls in the machine config) with a certificate that has a common name"})
		return
	}
	data, err := s.Cluster.Kubeconfig(r.Context(), r.TLS.PeerCertificates[0].Subject.CommonName)
	if err != nil {
		writeError(w, err, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	_, _ = w.Write(data)
}

func (s *Server) power(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.Power == nil {
			writeJSON(w, http.StatusNotImplemented, ErrorResponse{Error: action + " is not available here"})
			return
		}
		if err := s.Power(action, "api request from "+Client(r)); err != nil {
			writeJSON(w, http.StatusConflict, ErrorResponse{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"action": action})
	}
}

// logs answers text lines "TIME SERVICE TEXT": ?service= (default all),
// ?lines= (default 100), ?follow=true streams until the client leaves.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	if s.Logs == nil {
		writeJSON(w, http.StatusNotImplemented, ErrorResponse{Error: "logs are not kept here"})
		return
	}
	q := r.URL.Query()
	service := q.Get("service")
	n := 100
	if v := q.Get("lines"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: fmt.Sprintf("lines=%q: give a count, 0 for all", v)})
			return
		}
	}
	if service != "" && !contains(s.Logs.Services(), service) {
		writeJSON(w, http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("no logs from service %q: known are %s", service, strings.Join(s.Logs.Services(), ", "))})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	format := func(l logring.Line) string {
		return l.Time.Format(time.RFC3339Nano) + " " + l.Service + " " + l.Text + "\n"
	}
	if q.Get("follow") != "true" {
		var b strings.Builder
		for _, l := range s.Logs.Tail(service, n, 0) {
			b.WriteString(format(l))
		}
		w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
		_, _ = io.WriteString(w, b.String())
		return
	}
	flusher, _ := w.(http.Flusher)
	bw := bufio.NewWriter(w)
	_ = s.Logs.Follow(r.Context(), service, n, func(l logring.Line) error {
		if _, err := bw.WriteString(format(l)); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(&b, "# HELP ballast_agent_goroutines Goroutines in the agent.\n# TYPE ballast_agent_goroutines gauge\nballast_agent_goroutines %d\n", runtime.NumGoroutine())
	fmt.Fprintf(&b, "# HELP ballast_agent_heap_bytes Heap in use by the agent.\n# TYPE ballast_agent_heap_bytes gauge\nballast_agent_heap_bytes %d\n", ms.HeapInuse)
	states := map[string]int{}
	for _, rec := range s.Txn.History() {
		states[rec.State]++
	}
	fmt.Fprintf(&b, "# HELP ballast_network_transactions Network transactions in the kept history, by state.\n# TYPE ballast_network_transactions gauge\n")
	for _, st := range []string{txn.Available, txn.Degraded, txn.Progressing, txn.AwaitingConfirmation} {
		fmt.Fprintf(&b, "ballast_network_transactions{state=%q} %d\n", st, states[st])
	}
	for _, m := range s.Metrics {
		m(&b)
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	_, _ = io.WriteString(w, b.String())
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
