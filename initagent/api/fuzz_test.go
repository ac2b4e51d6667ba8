package api

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/ballast-os/ballast/initagent/logring"
)

// FuzzHandler throws arbitrary requests at the full API: nothing may panic,
// and every answer is a well-formed status.
func FuzzHandler(f *testing.F) {
	f.Add("POST", "/v1/apply?dryRun=true", []byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n"))
	f.Add("POST", "/v1/apply?confirmWithin=5m", []byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\ncluster: {name: c}\n"))
	f.Add("POST", "/v1/apply", []byte("{\"apiVersion\": 1, \"network\": {\"interfaces\": [{}]}}"))
	f.Add("POST", "/v1/confirm?generation=18446744073709551616", []byte(nil))
	f.Add("POST", "/v1/rollback?target=system", []byte(nil))
	f.Add("GET", "/v1/logs?lines=-1&service=dns", []byte(nil))
	f.Add("POST", "/v1/upgrade?sha256=00", []byte("x"))
	srv := newServer(f, slog.New(slog.DiscardHandler))
	srv.Logs = logring.New(100)
	srv.Logs.Add("agent", "booted")
	h := srv.Handler(Full)
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		if strings.Contains(path, "follow=true") {
			return // streams until the client leaves
		}
		req, err := http.NewRequest(method, "http://node"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		rw := &bufferedResponse{header: http.Header{}, code: http.StatusOK}
		h.ServeHTTP(rw, req)
		if rw.code < 200 || rw.code > 599 {
			t.Fatalf("%s %s: status %d", method, path, rw.code)
		}
	})
}
