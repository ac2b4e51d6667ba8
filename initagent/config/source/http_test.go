package source

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// configServer serves doc at /mc.yaml; fail(n) for the n-th request
// (from 1) may answer instead and return true.
func configServer(t *testing.T, tlsServer bool, doc []byte, fail func(w http.ResponseWriter, n int64) bool) (*httptest.Server, *atomic.Int64) {
	var hits atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		if fail != nil && fail(w, n) {
			return
		}
		if r.URL.Path != "/mc.yaml" {
			http.NotFound(w, r)
			return
		}
		w.Write(doc)
	})
	srv := httptest.NewUnstartedServer(h)
	// The untrusted-certificate test makes the server log a failed handshake.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tlsServer {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestFetchHTTP(t *testing.T) {
	doc := []byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n")
	large := bytes.Repeat([]byte("#"), MaxSize+1)
	for _, tc := range []struct {
		name     string
		doc      []byte
		path     string
		sum      string // ballast.config.sha256
		timeout  time.Duration
		fail     func(w http.ResponseWriter, n int64) bool
		wantHits int64
		wantErr  error    // checked with errors.Is
		wantText []string // in the error
		maxTime  time.Duration
	}{
		{name: "ok", doc: doc, wantHits: 1},
		{name: "sha256 ok", doc: doc, sum: strings.ToUpper(sha(doc)), wantHits: 1},
		{name: "sha256 mismatch is final", doc: doc, sum: sha([]byte("other")), wantHits: 1, wantErr: ErrChecksum,
			wantText: []string{sha(doc), sha([]byte("other")), "ballast.config.sha256", "not using it"}},
		{name: "503 twice then 200", doc: doc, wantHits: 3, fail: func(w http.ResponseWriter, n int64) bool {
			if n <= 2 {
				http.Error(w, "warming up", http.StatusServiceUnavailable)
				return true
			}
			return false
		}},
		{name: "too large with length", doc: large, wantHits: 1, wantErr: ErrTooLarge, wantText: []string{"4 MiB", "points at the machine config"}},
		{name: "too large chunked", doc: doc, wantHits: 1, wantErr: ErrTooLarge, wantText: []string{"4 MiB"},
			fail: func(w http.ResponseWriter, n int64) bool {
				for i := 0; i < 5; i++ { // flushing before the end means no Content-Length
					w.Write(large[:MaxSize/4+1])
					w.(http.Flusher).Flush()
				}
				return true
			}},
		{name: "404 is final", doc: doc, path: "/typo.yaml", wantHits: 1, wantText: []string{"404", "check the URL"}},
		{name: "deadline", doc: doc, timeout: 1200 * time.Millisecond, maxTime: 3 * time.Second,
			fail: func(w http.ResponseWriter, n int64) bool {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return true
			},
			wantText: []string{"cmdline ballast.config=http://", "/mc.yaml", "no answer within 1.2s", "attempts", `"503 Service Unavailable"`, "ballast.config.timeout="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, hits := configServer(t, false, tc.doc, tc.fail)
			path := tc.path
			if path == "" {
				path = "/mc.yaml"
			}
			cmdline := map[string]string{KeyURL: srv.URL + path}
			if tc.sum != "" {
				cmdline[KeySHA256] = tc.sum
			}
			start := time.Now()
			res, err := Fetch(t.Context(), Options{Cmdline: cmdline, Root: t.TempDir(), Devices: []string{}, Timeout: tc.timeout, Log: testLog(t)})
			took := time.Since(start)
			if tc.wantErr == nil && tc.wantText == nil {
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(res.Data, tc.doc) || res.Source != "cmdline:"+srv.URL+path || res.SHA256 != sha(tc.doc) {
					t.Errorf("Fetch = %q from %q (%s), want %q", res.Data, res.Source, res.SHA256, tc.doc)
				}
			} else {
				if err == nil {
					t.Fatalf("Fetch = %q, want an error", res.Data)
				}
				t.Logf("error: %v", err)
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Errorf("Fetch error %v, want %v", err, tc.wantErr)
				}
				for _, s := range tc.wantText {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("Fetch error %q does not say %q", err, s)
					}
				}
			}
			if tc.wantHits != 0 && hits.Load() != tc.wantHits {
				t.Errorf("server saw %d requests, want %d", hits.Load(), tc.wantHits)
			}
			if tc.maxTime != 0 && took > tc.maxTime {
				t.Errorf("Fetch took %s, want at most %s", took, tc.maxTime)
			}
		})
	}
}

func TestFetchHTTPS(t *testing.T) {
	doc := []byte("kind: MachineConfig\n")
	srv, hits := configServer(t, true, doc, nil)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	t.Run("CA bundle at the default path", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string][]byte{DefaultCAFile: caPEM})
		res, err := Fetch(t.Context(), Options{Cmdline: map[string]string{KeyURL: srv.URL + "/mc.yaml"}, Root: root, Devices: []string{}, Log: testLog(t)})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.Data, doc) {
			t.Errorf("Fetch = %q, want %q", res.Data, doc)
		}
	})

	t.Run("untrusted certificate is final", func(t *testing.T) {
		// httptest's servers all share one certificate, so make another CA.
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"}, IsCA: true,
			BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		caFile := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
		before := hits.Load()
		start := time.Now()
		_, err = Fetch(t.Context(), Options{Cmdline: map[string]string{KeyURL: srv.URL + "/mc.yaml"}, Root: t.TempDir(), CAFile: caFile, Devices: []string{}, Log: testLog(t)})
		if err == nil {
			t.Fatal("Fetch succeeded against a server signed by another CA")
		}
		t.Logf("error: %v", err)
		for _, s := range []string{"certificate", caFile, "clock says"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("Fetch error %q does not say %q", err, s)
			}
		}
		if hits.Load() != before || time.Since(start) > 2*time.Second {
			t.Errorf("untrusted certificate was retried")
		}
	})

	t.Run("missing CA bundle", func(t *testing.T) {
		_, err := Fetch(t.Context(), Options{Cmdline: map[string]string{KeyURL: srv.URL + "/mc.yaml"}, Root: t.TempDir(), Devices: []string{}, Log: testLog(t)})
		if err == nil || !strings.Contains(err.Error(), "CA bundle") || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Fetch = %v, want an error about the missing CA bundle", err)
		}
	})
}

func TestFetchCmdlineErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmdline map[string]string
		want    string
	}{
		{"hash without URL", map[string]string{KeySHA256: sha(nil)}, "no ballast.config="},
		{"bad scheme", map[string]string{KeyURL: "ftp://h/x"}, `scheme "ftp" is not supported`},
		{"no host", map[string]string{KeyURL: "http:///x"}, "no host"},
		{"tftp without file", map[string]string{KeyURL: "tftp://h/"}, "no file"},
		{"bad hash", map[string]string{KeyURL: "http://h/x", KeySHA256: "abc"}, "64 hex digits"},
		{"bad timeout", map[string]string{KeyURL: "http://h/x", KeyTimeout: "soon"}, "ballast.config.timeout"},
		{"empty URL", map[string]string{KeyURL: ""}, "scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Fetch(t.Context(), Options{Cmdline: tc.cmdline, Root: t.TempDir(), Devices: []string{}, Log: testLog(t)})
			if err == nil || errors.Is(err, ErrNoConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Fetch = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// ballast.config.timeout on the cmdline overrides Options.Timeout, and a
// cancelled caller context ends the retries at once.
func TestFetchCmdlineTimeoutAndCancel(t *testing.T) {
	srv, _ := configServer(t, false, nil, func(w http.ResponseWriter, n int64) bool {
		http.Error(w, "down", http.StatusBadGateway)
		return true
	})
	start := time.Now()
	_, err := Fetch(t.Context(), Options{Cmdline: map[string]string{KeyURL: srv.URL + "/mc.yaml", KeyTimeout: "700ms"},
		Root: t.TempDir(), Devices: []string{}, Timeout: time.Hour, Log: testLog(t)})
	if err == nil || !strings.Contains(err.Error(), "no answer within 700ms") {
		t.Errorf("Fetch = %v, want it to give up after 700ms", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Fetch took %s with ballast.config.timeout=700ms", took)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = Fetch(ctx, Options{Cmdline: map[string]string{KeyURL: srv.URL + "/mc.yaml"}, Root: t.TempDir(), Devices: []string{}, Log: testLog(t)})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "502") {
		t.Errorf("Fetch = %v, want the caller's context error and the last failure", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Fetch took %s after its context ended", took)
	}
}

// A failed fetch retries when the network changes rather than when its
// backoff runs out: with an hour-long backoff the only way to a second
// attempt is the change.
func TestFetchRetriesOnNetworkChange(t *testing.T) {
	doc := []byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n")
	failed := make(chan struct{})
	srv, hits := configServer(t, false, doc, func(w http.ResponseWriter, n int64) bool {
		if n == 1 {
			http.Error(w, "no route yet", http.StatusServiceUnavailable)
			close(failed)
			return true
		}
		return false
	})
	changed := make(chan struct{}, 1)
	go func() {
		<-failed
		changed <- struct{}{}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	res, err := Fetch(ctx, Options{Cmdline: map[string]string{KeyURL: srv.URL + "/mc.yaml"}, Root: t.TempDir(), Devices: []string{},
		NetworkChanged: changed, firstBackoff: time.Hour, maxBackoff: time.Hour, Log: testLog(t)})
	if err != nil {
		t.Fatalf("Fetch = %v, want the document on the attempt after the network change", err)
	}
	if !bytes.Equal(res.Data, doc) || hits.Load() != 2 {
		t.Errorf("Fetch = %q after %d requests, want %q after 2", res.Data, hits.Load(), doc)
	}
}
