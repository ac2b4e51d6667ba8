package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ballast-os/ballast/initagent/apiproxy"
	"github.com/ballast-os/ballast/initagent/vip"
)

const haNodeEnv = "BALLAST_HA_NODE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(haNodeEnv); spec != "" {
		os.Exit(haNode(spec))
	}
	os.Exit(m.Run())
}

// haNodeSpec is one control-plane node of the HA test.
type haNodeSpec struct {
	Backends []string
	Priority uint8
	Peers    []netip.Addr
}

// haNode runs the API proxy and the VIP speaker wired as the agent wires
// them, logging JSON to stderr, until SIGTERM.
func haNode(spec string) int {
	var s haNodeSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	p, err := apiproxy.New(apiproxy.Config{Logger: log.With("part", "apiproxy"), Frontends: []string{"127.0.0.1:7445", "10.0.0.100:6443"},
		Backends: s.Backends, InsecureUntilCA: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	sp, err := vip.New(vip.Config{Logger: log.With("part", "vip"), Cluster: "ha", Routers: []vip.RouterConfig{{
		// 300 ms adverts: under -race on a busy machine 100 ms ones can flap, and this test is about health.
		Name: "api", Interface: "eth0", Priority: s.Priority, Peers: s.Peers, AdvertInterval: 300 * time.Millisecond,
		VIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.100/32")}, Tracks: []vip.TrackConfig{*apiTrack(true)}}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	linkHealth(p, sp, log)
	errc := make(chan error, 2)
	go func() { errc <- p.Run(ctx) }()
	go func() { errc <- sp.Run(ctx) }()
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// listenIn opens a listener inside a named network namespace.
func listenIn(ns, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its changed namespace
		h, err := netns.GetFromName(ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{err: err}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

// TestAPIVIPFollowsProxyHealth: two control-plane nodes share the API VIP;
// apiservers answer /readyz on a third namespace. One backend of the master
// dying moves nothing; the master's last backend dying moves the VIP to
// the node whose proxy is healthy, and the master's log shows the proxy
// dropped the backend before the speaker yielded the VIP. When the other
// node's proxy loses its backends too, the VIP stays (never nobody holding
// it); the first node's backend coming back moves it there.
func TestAPIVIPFollowsProxyHealth(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	sw, n1, n2 := "hasw-"+id, "han1-"+id, "han2-"+id
	for _, ns := range []string{sw, n1, n2} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	sh(t, "ip", "-n", sw, "link", "add", "br0", "type", "bridge")
	sh(t, "ip", "-n", sw, "link", "set", "br0", "up")
	for _, a := range []string{"10.0.0.1/24", "10.0.0.21/24", "10.0.0.22/24", "10.0.0.23/24"} {
		sh(t, "ip", "-n", sw, "addr", "add", a, "dev", "br0")
	}
	for i, ns := range []string{n1, n2} {
		port := fmt.Sprintf("p%d-%s", i, id)
		sh(t, "ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		sh(t, "ip", "-n", sw, "link", "set", port, "master", "br0", "up")
		sh(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.0.0.%d/24", 5+i), "dev", "eth0")
		sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	apiserver := func(addr string) *httptest.Server {
		ln, err := listenIn(sw, addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
		srv.Listener.Close()
		srv.Listener = ln
		srv.TLS = &tls.Config{}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	backends := map[string]*httptest.Server{}
	for _, a := range []string{"10.0.0.21:6443", "10.0.0.22:6443", "10.0.0.23:6443"} {
		backends[a] = apiserver(a)
	}

	dir := t.TempDir()
	start := func(ns string, spec haNodeSpec) (logPath string) {
		data, _ := json.Marshal(spec)
		logPath = filepath.Join(dir, ns+".log")
		f, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), haNodeEnv+"="+string(data))
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			f.Close()
			if t.Failed() {
				b, _ := os.ReadFile(logPath)
				t.Logf("%s log:\n%s", ns, b)
			}
		})
		return logPath
	}
	holds := func(ns string) bool {
		out, _ := exec.Command("ip", "-n", ns, "-o", "addr", "show", "dev", "eth0").Output()
		return strings.Contains(string(out), " 10.0.0.100/32 ")
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if cond() {
				return
			}
		}
		t.Fatalf("timed out waiting until %s", what)
	}
	logHas := func(path, substr string) bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), substr)
	}

	log1 := start(n1, haNodeSpec{Backends: []string{"10.0.0.21:6443", "10.0.0.23:6443"}, Priority: 150,
		Peers: []netip.Addr{netip.MustParseAddr("10.0.0.6")}})
	waitFor("node 1 holds the API VIP", func() bool { return holds(n1) })
	start(n2, haNodeSpec{Backends: []string{"10.0.0.22:6443", "10.0.0.23:6443"}, Priority: 100,
		Peers: []netip.Addr{netip.MustParseAddr("10.0.0.5")}})
	waitFor("node 2's proxy is healthy", func() bool {
		return logHas(filepath.Join(dir, n2+".log"), `"msg":"health changed","part":"apiproxy","healthy":true`)
	})

	// One of the master's backends dies: its proxy drops it, the VIP stays.
	backends["10.0.0.21:6443"].CloseClientConnections()
	backends["10.0.0.21:6443"].Close()
	waitFor("node 1's proxy drops 10.0.0.21", func() bool {
		return logHas(log1, `"msg":"backend down","part":"apiproxy","backend":"10.0.0.21:6443"`)
	})
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if !holds(n1) || holds(n2) {
			t.Fatalf("VIP moved after one of two backends died (node 1 holds: %v, node 2 holds: %v)", holds(n1), holds(n2))
		}
	}

	// The master's last backend dies: the VIP goes to node 2, never to both.
	backends["10.0.0.23:6443"].CloseClientConnections()
	backends["10.0.0.23:6443"].Close()
	waitFor("node 2 holds the API VIP alone", func() bool {
		h1, h2 := holds(n1), holds(n2)
		return h2 && !h1
	})
	b1, _ := os.ReadFile(log1)
	text := string(b1)
	down := strings.Index(text, `"msg":"backend down","part":"apiproxy","backend":"10.0.0.23:6443"`)
	unhealthy := strings.Index(text, `"msg":"health changed","part":"apiproxy","healthy":false`)
	confirmed := strings.Index(text, `"msg":"api proxy has no healthy apiserver: the API VIP yields to a node whose proxy has one"`)
	gaveUp := strings.LastIndex(text, `"msg":"vrrp state"`)
	if down < 0 || unhealthy < down || confirmed < unhealthy || gaveUp < confirmed {
		t.Errorf("order in node 1's log: backend down at %d, proxy unhealthy at %d, confirmed at %d, last VRRP state change at %d; want that order",
			down, unhealthy, confirmed, gaveUp)
	}

	// Node 2's last backend dies too: no proxy reaches an apiserver, and
	// the VIP stays on node 2 rather than on no node at all.
	backends["10.0.0.22:6443"].CloseClientConnections()
	backends["10.0.0.22:6443"].Close()
	waitFor("node 2's proxy to have no healthy apiserver", func() bool {
		return logHas(filepath.Join(dir, n2+".log"), `"msg":"api proxy has no healthy apiserver`)
	})
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if h1, h2 := holds(n1), holds(n2); h1 || !h2 {
			t.Fatalf("with no apiserver reachable anywhere the VIP must stay on node 2 (node 1 holds: %v, node 2 holds: %v)", h1, h2)
		}
	}

	// Node 1's backend comes back: node 1 takes the VIP from the yielding node 2.
	apiserver("10.0.0.21:6443")
	waitFor("node 1 holds the API VIP alone again", func() bool { return holds(n1) && !holds(n2) })
}
