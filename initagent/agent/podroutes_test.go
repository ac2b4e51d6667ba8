package agent

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
)

// TestPodRoutesKubeconfig: the pod routes wait for kubelet's kubeconfig (a
// missing file is os.ErrNotExist, logged as waiting), keep one client while
// the file stays the same and make a new one when it changes.
func TestPodRoutesKubeconfig(t *testing.T) {
	ca, caPair, err := pki.NewAuthority("kubernetes", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write := func(path, server string) {
		client, err := ca.Issue(pki.Request{CommonName: "system:node:a", Organization: []string{"system:nodes"}, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
		doc := "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    certificate-authority-data: " + b64(caPair.CertPEM) +
			"\n    server: " + server + "\nusers:\n- name: node\n  user:\n    client-certificate-data: " + b64(client.CertPEM) +
			"\n    client-key-data: " + b64(client.KeyPEM) + "\n"
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	k := &kubeconfigNodes{path: path}
	if _, err := k.connect(context.Background()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("connect without a kubeconfig = %v, want os.ErrNotExist", err)
	}
	write(path, "https://127.0.0.1:7445")
	first, err := k.connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	again, err := k.connect(context.Background())
	if err != nil || again != first {
		t.Errorf("unchanged kubeconfig gave a new client (%v)", err)
	}
	write(path, "https://127.0.0.1:17445")
	// The rewrite may land within the file system's timestamp granularity;
	// the size differs anyway (longer server URL).
	rotated, err := k.connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rotated == first || k.client.Server != "https://127.0.0.1:17445" {
		t.Errorf("changed kubeconfig kept the old client (server %s)", k.client.Server)
	}
}
