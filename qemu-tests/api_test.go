package qemutests

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
	"gopkg.in/yaml.v3"
)

// TestNodeAPIMutualTLS boots a node whose config carries api.tls and talks
// to it from the lab: a valid client certificate reads the status and
// dry-runs a change, a client without one is refused, and the console port
// (no ballast.api.console=rw) only reads.
func TestNodeAPIMutualTLS(t *testing.T) {
	lab := newLab(t)
	ca, caPair, err := pki.NewAuthority("lab CA", time.Hour)
	must(t, err)
	node, err := ca.Issue(pki.Request{CommonName: "node-1", IPs: []net.IP{net.ParseIP("192.0.2.10")}, Server: true})
	must(t, err)
	client, err := ca.Issue(pki.Request{CommonName: "ops", Client: true})
	must(t, err)
	apiSection, err := yaml.Marshal(map[string]any{"api": map[string]any{"tls": map[string]string{
		"certificate": string(node.CertPEM), "key": string(node.KeyPEM), "clientCA": string(caPair.CertPEM)}}})
	must(t, err)
	doc := labConfig("192.0.2.10/24", "192.0.2.1", "192.0.2.1") + string(apiSection)
	must(t, lab.Serve(8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, doc) })))
	sum := sha256.Sum256([]byte(doc))
	sock := filepath.Join(t.TempDir(), "api.sock")
	vm := bootLabVM(t, lab, "worker", "52:54:00:00:00:31", []string{
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=api,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=api,name=" + api.VirtioPortName,
	}, "ballast.config=http://192.0.2.1:8080/node.yaml", "ballast.config.sha256="+hex.EncodeToString(sum[:]))
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	_, _, err = vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	_, _, err = vm.Expect(ctx, regexp.MustCompile(`msg="node api serving mutual TLS" part=api addr=\[::\]:50000`), 0)
	must(t, err)

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPair.CertPEM)
	cert, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
	must(t, err)
	mtls := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			DialContext:     lab.DialContext,
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs},
		}}
	}
	resp, err := mtls(cert).Get("https://192.0.2.10:50000/v1/status")
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"state": "Available"`) {
		t.Errorf("status over mTLS: %s\n%s", resp.Status, body)
	}
	resp, err = mtls(cert).Post("https://192.0.2.10:50000/v1/apply?dryRun=true", "application/yaml",
		strings.NewReader(labConfig("192.0.2.11/24", "192.0.2.1", "192.0.2.1")+string(apiSection)))
	must(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "192.0.2.11/24") {
		t.Errorf("dry run over mTLS: %s\n%s", resp.Status, body)
	}
	_, _, err = vm.Expect(ctx, regexp.MustCompile(`msg="api call" part=api client="CN=ops" method=POST path=/v1/apply query="dryRun=true"`), 0)
	must(t, err)
	if resp, err := mtls().Get("https://192.0.2.10:50000/v1/status"); err == nil {
		resp.Body.Close()
		t.Errorf("client without a certificate got %s", resp.Status)
	}

	// The console port without ballast.api.console=rw reads but does not change.
	code, ar := applyVia(t, apiClient(sock), labConfig("192.0.2.12/24", "192.0.2.1", "192.0.2.1"))
	if code != http.StatusForbidden || !strings.Contains(ar.Error, "read-only") {
		t.Errorf("apply over the console port: HTTP %d %+v", code, ar)
	}
}
