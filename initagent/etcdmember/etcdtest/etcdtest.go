// Package etcdtest runs real etcd members (the payload's binary) on
// loopback with TLS from a generated etcd CA, for tests.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/etcdmember"
)

// Binary finds etcd: $BALLAST_ETCD, else the payload cache. A test that
// needs etcd fails without it (build the payload: image/payload).
func Binary(t testing.TB) string {
	if b := os.Getenv("BALLAST_ETCD"); b != "" {
		return b
	}
	home, _ := os.UserHomeDir()
	m, _ := filepath.Glob(filepath.Join(home, ".cache/ballast/payload/etcd-*/etcd"))
	if len(m) == 0 {
		t.Fatal("no etcd binary: build the payload (go run ./image/payload/cmd/buildpayload) or set BALLAST_ETCD")
	}
	return m[len(m)-1]
}

// CA is an etcd CA with the PEM files the members use.
type CA struct {
	Authority *pki.Authority
	Pair      pki.Pair
	Dir       string
}

// NewCA makes an etcd CA and a server+peer certificate for 127.0.0.1.
func NewCA(t testing.TB) *CA {
	ca, pair, err := pki.NewAuthority("etcd-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	leaf, err := ca.Issue(pki.Request{CommonName: "etcd", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"ca.crt": pair.CertPEM, "server.crt": leaf.CertPEM, "server.key": leaf.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &CA{Authority: ca, Pair: pair, Dir: dir}
}

// Client is a gateway client for endpoints with a certificate of the CA.
func (ca *CA) Client(t testing.TB, endpoints ...string) *etcdmember.Client {
	c, err := etcdmember.ClientFromCA(endpoints, ca.Pair.CertPEM, ca.Pair.KeyPEM, "test-client")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdle)
	return c
}

// Member is one etcd process's identity; its data lives in DataDir.
type Member struct {
	Name       string
	ClientPort int
	PeerPort   int
	DataDir    string

	cmd  *exec.Cmd
	done chan error
}

// NewMember picks free ports and a data directory for a member.
func NewMember(t testing.TB, name string) *Member {
	return &Member{Name: name, ClientPort: freePort(t), PeerPort: freePort(t), DataDir: filepath.Join(t.TempDir(), name)}
}

// ClientURL and PeerURL are the member's URLs on 127.0.0.1.
func (m *Member) ClientURL() string { return "https://127.0.0.1:" + strconv.Itoa(m.ClientPort) }
func (m *Member) PeerURL() string   { return "https://127.0.0.1:" + strconv.Itoa(m.PeerPort) }

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs the member with initialCluster and state ("new" or
// "existing") and waits until it answers as part of a cluster with a
// leader, or a learner that has its data dir; Stop (registered as cleanup)
// ends it.
func (m *Member) Start(t testing.TB, ca *CA, initialCluster, state string) {
	t.Helper()
	d := ca.Dir
	m.cmd = exec.Command(Binary(t), "--name", m.Name, "--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL(), "--advertise-client-urls", m.ClientURL(),
		"--listen-peer-urls", m.PeerURL(), "--initial-advertise-peer-urls", m.PeerURL(),
		"--initial-cluster", initialCluster, "--initial-cluster-state", state,
		"--cert-file", d+"/server.crt", "--key-file", d+"/server.key", "--client-cert-auth", "--trusted-ca-file", d+"/ca.crt",
		"--peer-cert-file", d+"/server.crt", "--peer-key-file", d+"/server.key", "--peer-client-cert-auth", "--peer-trusted-ca-file", d+"/ca.crt",
		"--log-level", "warn")
	logf, err := os.Create(m.DataDir + ".log")
	if err != nil {
		t.Fatal(err)
	}
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.done = make(chan error, 1)
	go func() { m.done <- m.cmd.Wait(); logf.Close() }()
	t.Cleanup(m.Stop)
	c := ca.Client(t, m.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		_, err := c.Status(ctx, m.ClientURL())
		var ae *etcdmember.APIError
		if err == nil || errors.As(err, &ae) { // a learner answers status too
			return
		}
		select {
		case err := <-m.done:
			log, _ := os.ReadFile(m.DataDir + ".log")
			m.done <- err
			t.Fatalf("etcd %s exited: %v\n%s", m.Name, err, log)
		case <-ctx.Done():
			t.Fatalf("etcd %s did not answer: %v", m.Name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop kills the member (a power cut) and waits for it.
func (m *Member) Stop() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
	m.cmd = nil
}

// Bootstrap starts m as the first member of a new cluster.
func (m *Member) Bootstrap(t testing.TB, ca *CA) {
	m.Start(t, ca, fmt.Sprintf("%s=%s", m.Name, m.PeerURL()), "new")
}
