package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/logring"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// hostless applies nothing to the host: the configs used here have no
// interfaces, so transactions are judged by validation and the slots.
type hostless struct{}

func (hostless) Apply(context.Context, *config.MachineConfig, string) error { return nil }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testPKI struct {
	ca, other *pki.Authority
	caPEM     []byte
	node      pki.Pair
}

func newPKI(t *testing.T) testPKI {
	t.Helper()
	ca, caPair, err := pki.NewAuthority("ballast test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := pki.NewAuthority("someone else's CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.Issue(pki.Request{CommonName: "node-1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	return testPKI{ca: ca, other: other, caPEM: caPair.CertPEM, node: node}
}

func (p testPKI) client(t *testing.T, ca *pki.Authority, name string, notAfter time.Time) tls.Certificate {
	t.Helper()
	pair, err := ca.Issue(pki.Request{CommonName: name, Organization: []string{"ops"}, Client: true, NotAfter: notAfter,
		NotBefore: notAfter.Add(-2 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serve runs the mTLS API on a loopback port and returns its address.
func serve(t *testing.T, srv *Server, settings config.APITLS) string {
	t.Helper()
	conf, err := TLSConfig(settings)
	if err != nil {
		t.Fatal(err)
	}
	var tl TLSListener
	tl.Set(conf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLSListener(ctx, ln, &tl) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

func newServer(t testing.TB, log *slog.Logger) *Server {
	store, err := slot.NewDir(filepath.Join(t.TempDir(), "slots"))
	if err != nil {
		t.Fatal(err)
	}
	return &Server{Log: log, Txn: &txn.Manager{Store: store, Network: hostless{}}, Hostname: "node-1"}
}

func clientFor(p testPKI, certs ...tls.Certificate) *http.Client {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)
	conf := &tls.Config{RootCAs: roots}
	if len(certs) > 0 {
		// Always send it, even when the server names other CAs as acceptable,
		// so the server is the one that refuses.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certs[0], nil }
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
}

func TestMutualTLSRefusesAllButValidClients(t *testing.T) {
	p := newPKI(t)
	later := time.Now().Add(time.Hour)
	valid := p.client(t, p.ca, "alice", later)
	revoked := p.client(t, p.ca, "mallory", later)
	expired := p.client(t, p.ca, "bob", time.Now().Add(-time.Minute))
	foreign := p.client(t, p.other, "eve", later)
	revokedCert, _ := x509.ParseCertificate(revoked.Certificate[0])
	crl, err := p.ca.RevocationList([]*x509.Certificate{revokedCert}, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	srv := newServer(t, slog.New(slog.NewTextHandler(&logs, nil)))
	addr := serve(t, srv, config.APITLS{Certificate: string(p.node.CertPEM), Key: string(p.node.KeyPEM),
		ClientCA: string(p.caPEM), CRL: string(crl)})
	url := "https://" + addr + "/v1/status"

	for _, c := range []struct {
		name  string
		certs []tls.Certificate
	}{
		{"no client certificate", nil},
		{"certificate from another CA", []tls.Certificate{foreign}},
		{"expired certificate", []tls.Certificate{expired}},
		{"revoked certificate", []tls.Certificate{revoked}},
	} {
		resp, err := clientFor(p, c.certs...).Get(url)
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s: accepted with status %s", c.name, resp.Status)
		}
	}
	// Under TLS 1.3 the client's handshake ends before the server has
	// checked its certificate, so the server's refusal may be logged later.
	for _, want := range []string{"didn't provide a certificate", "unknown authority", "expired", "is revoked"} {
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(logs.String(), want) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !strings.Contains(logs.String(), want) {
			t.Errorf("refusal %q not in the server log:\n%s", want, logs.String())
		}
	}

	ok := clientFor(p, valid)
	resp, err := ok.Get(url)
	if err != nil {
		t.Fatalf("valid certificate refused: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status with a valid certificate: %s", resp.Status)
	}
	// Mutating calls are served over mTLS and logged with the subject.
	resp, err = ok.Post("https://"+addr+"/v1/apply?dryRun=true", "application/yaml",
		strings.NewReader("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "DryRun") {
		t.Errorf("dry run over mTLS: %s %s", resp.Status, body)
	}
	if !strings.Contains(logs.String(), `msg="api call" client="CN=alice,O=ops" method=POST path=/v1/apply`) {
		t.Errorf("mutating call not logged with the client's subject:\n%s", logs.String())
	}
}

func TestConsoleIsReadOnlyByDefault(t *testing.T) {
	srv := newServer(t, slog.New(slog.DiscardHandler))
	for access, want := range map[Access]int{ReadOnly: http.StatusForbidden, Full: http.StatusOK} {
		h := srv.Handler(access)
		for _, path := range []string{"/v1/apply?dryRun=true", "/v1/reboot", "/v1/rollback"} {
			req, _ := http.NewRequest("POST", path, strings.NewReader("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n"))
			rw := &bufferedResponse{header: http.Header{}, code: http.StatusOK}
			h.ServeHTTP(rw, req)
			if access == ReadOnly && rw.code != want {
				t.Errorf("read-only %s: %d, want %d", path, rw.code, want)
			}
			if access == Full && rw.code == http.StatusForbidden {
				t.Errorf("full access %s refused", path)
			}
		}
		req, _ := http.NewRequest("GET", "/v1/status", nil)
		rw := &bufferedResponse{header: http.Header{}, code: http.StatusOK}
		h.ServeHTTP(rw, req)
		if rw.code != http.StatusOK {
			t.Errorf("status with access %d: %d", access, rw.code)
		}
	}
}

// New settings that refuse a client end what it has open: an idle
// keep-alive connection at once, a `logs -f` stream after the grace.
func TestNewSettingsCloseRefusedConnections(t *testing.T) {
	p := newPKI(t)
	later := time.Now().Add(time.Hour)
	alice, bob := p.client(t, p.ca, "alice", later), p.client(t, p.ca, "bob", later)
	srv := newServer(t, slog.New(slog.DiscardHandler))
	srv.Logs = logring.New(100)
	srv.Logs.Add("agent", "hello")
	settings := config.APITLS{Certificate: string(p.node.CertPEM), Key: string(p.node.KeyPEM), ClientCA: string(p.caPEM)}
	conf, err := TLSConfig(settings)
	if err != nil {
		t.Fatal(err)
	}
	tl := &TLSListener{grace: 10 * time.Millisecond}
	tl.Set(conf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLSListener(ctx, ln, tl) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	base := "https://" + ln.Addr().String()

	bobc, alicec := clientFor(p, bob), clientFor(p, alice)
	stream, err := bobc.Get(base + "/v1/logs?follow=true&lines=1")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	lines := bufio.NewReader(stream.Body)
	if l, err := lines.ReadString('\n'); err != nil || !strings.Contains(l, "hello") {
		t.Fatalf("first streamed line %q: %v", l, err)
	}
	for _, c := range []*http.Client{bobc, alicec} {
		resp, err := c.Get(base + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	bobCert, _ := x509.ParseCertificate(bob.Certificate[0])
	crl, _, err := p.ca.Revoke(nil, bobCert, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	settings.CRL = string(crl)
	if conf, err = TLSConfig(settings); err != nil {
		t.Fatal(err)
	}
	tl.Set(conf)
	// Ended by the server, not by the client's timeout.
	var ne net.Error
	if l, err := lines.ReadString('\n'); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("bob's stream goes on after his revocation: %q %v", l, err)
	}
	if resp, err := bobc.Get(base + "/v1/status"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("bob's keep-alive connection still served after his revocation")
		}
	}
	resp, err := alicec.Get(base + "/v1/status")
	if err != nil {
		t.Fatalf("alice after bob's revocation: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("alice after bob's revocation: %s", resp.Status)
	}
}
