package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/network"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// hostless applies nothing to the host: the configs here have no
// interfaces, so their transactions are judged by validation and the slots.
type hostless struct{}

func (hostless) Apply(context.Context, *config.MachineConfig, string) error { return nil }

// pemBlock indents a PEM document as a YAML block scalar's content.
func pemBlock(pem []byte, indent string) string {
	return indent + strings.ReplaceAll(strings.TrimSpace(string(pem)), "\n", "\n"+indent)
}

type apiNode struct {
	listen           string
	cert, key, caPEM []byte
	crl              []byte
	apiServers       []string
	proxyPort        int
}

func (n apiNode) doc(withTLS bool) string {
	var b strings.Builder
	b.WriteString("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n")
	if len(n.apiServers) > 0 {
		fmt.Fprintf(&b, "cluster:\n  apiServers: [%s]\n  apiProxy: {port: %d}\n", strings.Join(n.apiServers, ", "), n.proxyPort)
	}
	if !withTLS {
		return b.String()
	}
	fmt.Fprintf(&b, "api:\n  listen: %q\n  tls:\n", n.listen)
	for _, f := range []struct {
		name string
		pem  []byte
	}{{"certificate", n.cert}, {"key", n.key}, {"clientCA", n.caPEM}, {"crl", n.crl}} {
		if len(f.pem) > 0 {
			fmt.Fprintf(&b, "    %s: |\n%s\n", f.name, pemBlock(f.pem, "      "))
		}
	}
	return b.String()
}

func mtlsClient(caPEM []byte, cert tls.Certificate) *http.Client {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	conf := &tls.Config{RootCAs: roots, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}
	// Keep-alive on: a refused client's open connection must not keep serving it.
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
}

func getStatus(c *http.Client, addr string) (int, error) {
	resp, err := c.Get("https://" + addr + "/v1/status")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

func postApply(t *testing.T, c *http.Client, addr, query, doc string) api.ApplyResponse {
	t.Helper()
	resp, err := c.Post("https://"+addr+"/v1/"+query, "application/yaml", strings.NewReader(doc))
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var ar api.ApplyResponse
	if err := json.Unmarshal(body, &ar); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: HTTP %d %s", query, resp.StatusCode, body)
	}
	return ar
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCommittedTLSAndBackendsReachTheAgent: `nodectl pki revoke`'s CRL (and
// new apiServers) applied through the node API over mutual TLS, with the
// real transaction manager and its config slots, are in force once the
// change is committed or confirmed, never while it is only tried: the
// revoked client is refused even on the keep-alive connection it had open;
// removing api.tls stops mutual TLS.
func TestCommittedTLSAndBackendsReachTheAgent(t *testing.T) {
	ca, caPair, err := pki.NewAuthority("ballast test CA", time.Hour)
	must(t, err)
	node, err := ca.Issue(pki.Request{CommonName: "node-1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	must(t, err)
	client := func(name string) (tls.Certificate, *x509.Certificate) {
		p, err := ca.Issue(pki.Request{CommonName: name, Organization: []string{"ops"}, Client: true})
		must(t, err)
		c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		must(t, err)
		x, err := pki.ParseCertificate(p.CertPEM)
		must(t, err)
		return c, x
	}
	adminCert, _ := client("admin")
	bobCert, bobX509 := client("bob")
	carolCert, carolX509 := client("carol")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := ln.Addr().String()
	// Apiservers that accept and say nothing: the transactions probe them.
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer backend.Close()
	backend2, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer backend2.Close()
	proxyFront, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	proxyPort := proxyFront.Addr().(*net.TCPAddr).Port
	proxyFront.Close()
	n := apiNode{listen: addr, cert: node.CertPEM, key: node.KeyPEM, caPEM: caPair.CertPEM,
		apiServers: []string{`"` + backend.Addr().String() + `"`}, proxyPort: proxyPort}

	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	defer func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	}()
	store, err := slot.NewDir(filepath.Join(t.TempDir(), "slots"))
	must(t, err)
	a := &Agent{Log: log, Root: t.TempDir()}
	a.sup.Log = log
	a.txn = &txn.Manager{Store: store, Network: hostless{}, Log: log}
	listened := false
	a.api.listen = func(want string) (net.Listener, error) {
		if want == addr && !listened {
			listened = true
			return ln, nil // bound before the first client connects
		}
		return net.Listen("tcp", want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		a.sup.StopAll(5 * time.Second)
	}()

	// Boot: the first config is committed, then the agent comes up with it.
	if _, err := a.txn.Apply(ctx, []byte(n.doc(true)), txn.Options{Origin: "boot"}); err != nil {
		t.Fatal(err)
	}
	cfg := a.currentConfig()
	a.startServices(ctx, cfg, "worker")
	a.startAPI(ctx, "node-1", &network.Manager{}, cfg, boot.Cmdline{}, make(chan pid1.Request, 1))

	admin, bob, carol := mtlsClient(caPair.CertPEM, adminCert), mtlsClient(caPair.CertPEM, bobCert), mtlsClient(caPair.CertPEM, carolCert)
	for name, c := range map[string]*http.Client{"admin": admin, "bob": bob, "carol": carol} {
		if code, err := getStatus(c, addr); err != nil || code != http.StatusOK {
			t.Fatalf("%s before any revocation: %d %v", name, code, err)
		}
	}

	// nodectl pki revoke --cert client-bob.crt, then apply the CRL and a new apiserver.
	n.crl, _, err = ca.Revoke(nil, bobX509, time.Hour)
	must(t, err)
	n.apiServers = append(n.apiServers, `"`+backend2.Addr().String()+`"`)
	if ar := postApply(t, admin, addr, "apply", n.doc(true)); ar.Record.State != txn.Available {
		t.Fatalf("apply of the CRL: %+v", ar)
	}
	if code, err := getStatus(bob, addr); err == nil && code == http.StatusOK {
		t.Error("bob's revoked certificate is still accepted after the CRL was committed")
	}
	if code, err := getStatus(admin, addr); err != nil || code != http.StatusOK {
		t.Errorf("admin after bob's revocation: %d %v", code, err)
	}
	var backends []string
	for _, b := range a.ha.proxy.Status().Backends {
		backends = append(backends, b.Addr)
	}
	if got, want := strings.Join(backends, " "), backend.Addr().String()+" "+backend2.Addr().String(); got != want {
		t.Errorf("proxy backends after the committed change: %s, want %s", got, want)
	}

	// A tried change counts only once confirmed.
	n.crl, _, err = ca.Revoke(n.crl, carolX509, time.Hour)
	must(t, err)
	if ar := postApply(t, admin, addr, "apply?confirmWithin=10m", n.doc(true)); ar.Record.State != txn.AwaitingConfirmation {
		t.Fatalf("tried apply: %+v", ar)
	}
	if code, err := getStatus(carol, addr); err != nil || code != http.StatusOK {
		t.Errorf("carol refused while her revocation is only tried: %d %v", code, err)
	}
	if ar := postApply(t, admin, addr, "confirm", ""); ar.Record.State != txn.Available {
		t.Fatalf("confirm: %+v", ar)
	}
	if code, err := getStatus(carol, addr); err == nil && code == http.StatusOK {
		t.Error("carol's revoked certificate is still accepted after the change was confirmed")
	}

	// api.tls removed: the answer still reaches the admin, then mutual TLS is off.
	if ar := postApply(t, admin, addr, "apply", n.doc(false)); ar.Record.State != txn.Available {
		t.Fatalf("apply without api.tls: %+v", ar)
	}
	if code, err := getStatus(admin, addr); err == nil && code == http.StatusOK {
		t.Error("mutual TLS still serves after api.tls was removed from the committed config")
	}
	if !strings.Contains(logs.String(), "api.tls removed from the committed config, mutual TLS stopped") {
		t.Error("removal not logged")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
