package vip

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// speakerEnv selects speaker mode: the test binary, started by a test in a
// node's namespace, runs one Speaker with the JSON speakerSpec in this
// variable instead of the tests.
const speakerEnv = "BALLAST_VIP_TEST_SPEAKER"

// speakerSpec is what a test passes to a speaker process.
type speakerSpec struct {
	Cluster string
	Routers []RouterConfig
	// Sock is the unix socket serving GET /status (Status as JSON) and
	// POST /track?name=N&healthy=true|false (SetTrack).
	Sock string
}

// TestMain runs speaker processes, or the tests in a throwaway network
// namespace (the nodes' namespaces are created with `ip netns add`).
func TestMain(m *testing.M) {
	if spec := os.Getenv(speakerEnv); spec != "" {
		if err := runSpeaker(spec); err != nil {
			fmt.Fprintln(os.Stderr, "speaker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(nstest.Main(m))
}

// runSpeaker runs a speaker until SIGTERM, then stops it gracefully.
func runSpeaker(specJSON string) error {
	var spec speakerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(Config{Logger: log, Cluster: spec.Cluster, Routers: spec.Routers})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := net.Listen("unix", spec.Sock)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(s.Status())
	})
	mux.HandleFunc("POST /track", func(w http.ResponseWriter, r *http.Request) {
		if err := s.SetTrack(r.FormValue("name"), r.FormValue("healthy") == "true"); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	return s.Run(ctx)
}
