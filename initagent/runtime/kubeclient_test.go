package runtime

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
)

// TestKubeClientWithKubeconfig serves a Node over mutual TLS and reads it
// with credentials from a kubeadm-style kubeconfig whose server was rewritten.
func TestKubeClientWithKubeconfig(t *testing.T) {
	ca, caPair, err := pki.NewAuthority("kubernetes", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(pki.Request{CommonName: "system:node:cp-1", Organization: []string{"system:nodes"}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "system:node:cp-1" {
			http.Error(w, `{"message":"no client certificate"}`, http.StatusUnauthorized)
			return
		}
		if r.URL.Path != "/api/v1/nodes/cp-1" {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"message": `nodes "x" not found`})
			return
		}
		w.Write([]byte(`{"metadata":{"name":"cp-1"},"spec":{"podCIDRs":["10.244.0.0/24"]},
			"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status"}],
			"addresses":[{"type":"InternalIP","address":"10.0.0.5"},{"type":"Hostname","address":"cp-1"}]}}`))
	}))
	srv.TLS = serverTLS(t, ca)
	srv.StartTLS()
	defer srv.Close()

	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	kubeconfig := "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    certificate-authority-data: " + b64(caPair.CertPEM) +
		"\n    server: https://10.0.0.100:6443\ncontexts: []\nusers:\n- name: node\n  user:\n    client-certificate-data: " + b64(client.CertPEM) +
		"\n    client-key-data: " + b64(client.KeyPEM) + "\n"
	rewritten, err := WithServer([]byte(kubeconfig), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rewritten), "server: "+srv.URL) || strings.Contains(string(rewritten), "10.0.0.100") {
		t.Fatalf("server not rewritten:\n%s", rewritten)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, rewritten, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadKubeconfig(path, "")
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.GetNode(context.Background(), "cp-1")
	if err != nil {
		t.Fatal(err)
	}
	if ready, msg := n.Ready(); !ready || !strings.Contains(msg, "KubeletReady") {
		t.Errorf("Ready = %v %q", ready, msg)
	}
	if ips := n.InternalIPs(); len(ips) != 1 || ips[0] != "10.0.0.5" || n.Spec.PodCIDRs[0] != "10.244.0.0/24" {
		t.Errorf("node %+v", n)
	}
	if _, err := c.GetNode(context.Background(), "other"); !IsNotFound(err) || !strings.Contains(err.Error(), `nodes "x" not found`) {
		t.Errorf("missing node: %v", err)
	}
	if _, err := WithServer([]byte("apiVersion: v1\nkind: Config\n"), "https://x"); err == nil {
		t.Error("kubeconfig without a server accepted")
	}
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(kubeconfig, b64(client.KeyPEM), "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKubeconfig(path, ""); err == nil || !strings.Contains(err.Error(), "client-key-data") {
		t.Errorf("kubeconfig without key: %v", err)
	}
}

func TestRotatingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log", "kubelet.log")
	r := &RotatingFile{Path: path, MaxBytes: 100, Keep: 2}
	line := strings.Repeat("x", 39) + "\n" // 40 bytes: two fit, the third rotates
	for i := 0; i < 7; i++ {
		if _, err := r.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	for name, want := range map[string]int64{path: 40, path + ".1": 80, path + ".2": 80} {
		fi, err := os.Stat(name)
		if err != nil || fi.Size() != want {
			t.Errorf("%s: %v size %d, want %d", filepath.Base(name), err, sizeOf(fi), want)
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Error("kept more than Keep rotated files")
	}
}

func sizeOf(fi os.FileInfo) int64 {
	if fi == nil {
		return -1
	}
	return fi.Size()
}

// serverTLS is a server certificate from ca for 127.0.0.1 that asks for client certificates from ca.
func serverTLS(t *testing.T, ca *pki.Authority) *tls.Config {
	t.Helper()
	p, err := ca.Issue(pki.Request{CommonName: "apiserver", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
}
