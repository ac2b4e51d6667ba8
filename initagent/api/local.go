// Package api serves the agent's API. Local serves it on a unix socket,
// reachable only by root on the node (and by nodectl on the console); the
// network API with mTLS builds on the same handlers.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// SocketPath is where the local API listens on a node.
const SocketPath = "/run/ballast/agent.sock"

// MaxConfigSize bounds an applied config document.
const MaxConfigSize = 4 << 20

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

// ServeLocal serves the API on a unix socket (mode 0600) until ctx ends,
// with ConsoleAccess.
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
	srv := &http.Server{Handler: s.Handler(s.ConsoleAccess), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context { return withClient(ctx, "local socket") }}
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
