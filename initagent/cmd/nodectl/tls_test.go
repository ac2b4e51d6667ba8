package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/ballast-os/ballast/initagent/logring"
	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }

// kernelNetwork applies configs to this test's network namespace.
type kernelNetwork struct{ a *netconf.Applier }

func (k kernelNetwork) Apply(ctx context.Context, cfg *config.MachineConfig, _ string) error {
	if cfg == nil {
		return nil
	}
	spec, err := netconf.FromConfig(cfg.Network)
	if err != nil {
		return err
	}
	_, err = k.a.Apply(ctx, spec)
	return err
}

func addrConfig(addr string) string {
	return fmt.Sprintf("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  interfaces:\n    - name: eth0\n      addresses: [%s]\n", addr)
}

func hasAddr(t *testing.T, h *netlink.Handle, addr string) bool {
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	as, _ := h.AddrList(l, netlink.FAMILY_V4)
	for _, a := range as {
		if a.IPNet.String() == addr {
			return true
		}
	}
	return false
}

// TestNodectlOverMutualTLS runs the agent's API, transaction manager and
// log ring in a network namespace and drives them with nodectl over mTLS,
// with credentials made by `nodectl pki`.
func TestNodectlOverMutualTLS(t *testing.T) {
	h := nstest.Handle(t)
	nstest.Veth(t, h, "eth0", "peer0")
	dir := t.TempDir()
	pkiDir := filepath.Join(dir, "pki")
	var out bytes.Buffer
	if err := run([]string{"pki", "init", "--dir", pkiDir, "--node", "node-1", "--ip", "127.0.0.1"}, &out); err != nil {
		t.Fatalf("pki init: %v\n%s", err, out.String())
	}
	if err := run([]string{"pki", "issue", "--dir", pkiDir, "--client", "bob"}, &out); err != nil {
		t.Fatal(err)
	}
	// The node's api section as nodectl wrote it must be a valid machine config part.
	snippet, err := os.ReadFile(filepath.Join(pkiDir, "node-node-1.api.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Parse([]byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n" + string(snippet)))
	if err != nil {
		t.Fatalf("api section from pki init: %v", err)
	}

	store, err := slot.NewDir(filepath.Join(dir, "slots"))
	if err != nil {
		t.Fatal(err)
	}
	ring := logring.New(1000)
	log := slog.New(ring.Handler(slog.NewTextHandler(io.Discard, nil)))
	m := &txn.Manager{Store: store, Network: kernelNetwork{&netconf.Applier{}}, Log: log.With("part", "txn")}
	srv := &api.Server{Log: log.With("part", "api"), Txn: m, Hostname: "node-1", Logs: ring}
	conf, err := api.TLSConfig(cfg.API.TLS)
	if err != nil {
		t.Fatal(err)
	}
	var tl api.TLSListener
	tl.Set(conf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLSListener(ctx, ln, &tl) }()

	// The nodeconfig from pki init points at the node's first address and port 50000.
	nc, err := loadNodeConfig(filepath.Join(pkiDir, "nodeconfig.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if nc.Current != "node-1" || nc.Nodes[0].Endpoint != "127.0.0.1:50000" {
		t.Errorf("nodeconfig %+v", nc)
	}
	nc.Nodes[0].Endpoint = ln.Addr().String()
	nc.Nodes = append(nc.Nodes, Node{Name: "as-bob", Endpoint: ln.Addr().String(), CA: "ca.crt", Certificate: "client-bob.crt", Key: "client-bob.key"},
		Node{Name: "down", Endpoint: "127.0.0.1:1", CA: "ca.crt", Certificate: "client-bob.crt", Key: "client-bob.key"})
	writeNodeConfig(t, filepath.Join(pkiDir, "nodeconfig.yaml"), nc)
	nodectl := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(append([]string{"--nodeconfig", filepath.Join(pkiDir, "nodeconfig.yaml")}, args...), &out)
		return out.String(), err
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	if o, err := nodectl("apply", "-f", write("a.yaml", addrConfig("10.0.0.5/24"))); err != nil || !strings.Contains(o, "Available") {
		t.Fatalf("apply: %v\n%s", err, o)
	}
	if o, err := nodectl("status"); err != nil || !strings.Contains(o, "node node-1") || !strings.Contains(o, "Available") {
		t.Errorf("status: %v\n%s", err, o)
	}
	o, err := nodectl("apply", "--dry-run", "-f", write("b.yaml", addrConfig("10.0.0.6/24")))
	if err != nil || !strings.Contains(o, "- ") || !strings.Contains(o, "10.0.0.6/24") || !hasAddr(t, h, "10.0.0.5/24") {
		t.Errorf("dry run: %v\n%s", err, o)
	}

	// Follow the logs while a tried change is applied and, unconfirmed, rolled back.
	pr, pw := io.Pipe()
	followed := make(chan error, 1)
	go func() {
		defer pw.Close()
		followed <- run([]string{"--nodeconfig", filepath.Join(pkiDir, "nodeconfig.yaml"), "logs", "-f", "--service", "txn", "-n", "0"}, pw)
	}()
	o, err = nodectl("--node", "as-bob", "apply", "--try", "1s", "-f", filepath.Join(dir, "b.yaml"))
	if err != nil || !strings.Contains(o, "AwaitingConfirmation") || !strings.Contains(o, "nodectl confirm") {
		t.Fatalf("apply --try: %v\n%s", err, o)
	}
	if !hasAddr(t, h, "10.0.0.6/24") {
		t.Error("tried change not applied")
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		buf := make([]byte, 4096)
		var acc string
		for {
			n, err := pr.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	sawRollback := false
	for l := range lines {
		if strings.Contains(l, "network transaction rolled back") && strings.Contains(l, "reason=NotConfirmed") {
			sawRollback = true
			break
		}
	}
	if !sawRollback {
		t.Fatal("logs -f never showed the unconfirmed change being rolled back")
	}
	if !hasAddr(t, h, "10.0.0.5/24") || hasAddr(t, h, "10.0.0.6/24") {
		t.Error("unconfirmed change not rolled back")
	}
	if o, err := nodectl("confirm"); err == nil || !strings.Contains(err.Error(), "no network change is waiting") {
		t.Errorf("confirm after the rollback: %v\n%s", err, o)
	}
	// The audit log names who asked.
	if o, err := nodectl("logs", "--service", "api", "-n", "0"); err != nil || !strings.Contains(o, `client="CN=bob,O=ballast:operators"`) {
		t.Errorf("audit log: %v\n%s", err, o)
	}

	// Clear errors for an unreachable node and for refused credentials.
	if _, err := nodectl("--node", "down", "status"); err == nil || !strings.Contains(err.Error(), "node down (127.0.0.1:1) unreachable") {
		t.Errorf("unreachable node: %v", err)
	}
	if err := run([]string{"pki", "revoke", "--dir", pkiDir, "--cert", filepath.Join(pkiDir, "client-bob.crt")}, io.Discard); err != nil {
		t.Fatal(err)
	}
	crl, _ := os.ReadFile(filepath.Join(pkiDir, "crl.pem"))
	cfg.API.TLS.CRL = string(crl)
	if conf, err = api.TLSConfig(cfg.API.TLS); err != nil {
		t.Fatal(err)
	}
	tl.Set(conf)
	if _, err := nodectl("--node", "as-bob", "status"); err == nil || !strings.Contains(err.Error(), "refused our client certificate") {
		t.Errorf("revoked client: %v", err)
	}
	if o, err := nodectl("status"); err != nil {
		t.Errorf("admin after bob's revocation: %v\n%s", err, o)
	}

	cancel()
	if err := <-served; err != nil {
		t.Error(err)
	}
	if err := <-followed; err != nil {
		t.Errorf("logs -f: %v", err)
	}
}

func writeNodeConfig(t *testing.T, path string, nc *NodeConfig) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "current: %s\nnodes:\n", nc.Current)
	for _, n := range nc.Nodes {
		fmt.Fprintf(&b, "  - {name: %s, endpoint: %q, ca: %s, certificate: %s, key: %s}\n", n.Name, n.Endpoint, n.CA, n.Certificate, n.Key)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}
