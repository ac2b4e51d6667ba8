package lab

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// upstreamName is the name the lab's upstream resolver (a dnsmasq on the
// bridge, outside the cluster) answers: what "forwarded names" stand for.
const upstreamName, upstreamAddr = "outside.example", "198.51.100.7"

// startUpstreamDNS runs dnsmasq on the lab gateway's address: the nodes'
// upstream resolver (network.dns.servers). --bind-dynamic listens once the
// lab's bridge gets the address.
func startUpstreamDNS(t *testing.T, gateway string) {
	t.Helper()
	cmd := exec.Command("dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-dynamic",
		"--listen-address="+gateway, "--port=53", "--pid-file=", "--user=root",
		"--local=/"+domain+"/", "--address=/"+upstreamName+"/"+upstreamAddr, "--bogus-priv")
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dnsmasq (the lab's upstream DNS): %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

// services checks issue 20 on the formed cluster: kube-proxy (nftables
// mode) and CoreDNS run from the preloaded images; a pod on cp-1 reaches a
// ClusterIP Service by its short name over TCP and UDP, answered by pods
// on the other nodes; a NodePort answers from outside the cluster; the
// node resolves Service names (ClusterIP and headless) through its own
// resolver; with CoreDNS scaled to zero the node still resolves its
// cluster's names and forwarded names. It returns the NodePort.
func (h *haCluster) services(ctr, testArchive, agnhost string) int {
	if err := h.s.ImportImages(h.ctx, ctr, testArchive); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.runFor(6*time.Minute, "-n", "kube-system", "rollout", "status", "daemonset/kube-proxy", "--timeout=5m"); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.runFor(6*time.Minute, "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=5m"); err != nil {
		h.t.Fatal(err)
	}
	for _, n := range h.s.Nodes {
		if out, err := exec.Command("ip", "netns", "exec", n.Netns, "nft", "list", "table", "ip", "kube-proxy").CombinedOutput(); err != nil {
			h.t.Errorf("%s: kube-proxy's nftables table: %v\n%s", n.Name, err, out)
		}
	}

	backends := map[string]string{"web-cp-2": "cp-2", "web-cp-3": "cp-3", "web-worker-1": "worker-1"}
	netexec := func(name, node, label string) string {
		return fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q,"labels":{"app":%q}},"spec":{"nodeName":%q,
"tolerations":[{"operator":"Exists"}],"containers":[{"name":"netexec","image":%q,"imagePullPolicy":"Never",
"args":["netexec","--http-port=8080","--udp-port=8081"]}]}}`, name, label, node, agnhost)
	}
	var manifests []string
	for name, node := range backends {
		manifests = append(manifests, netexec(name, node, "web"))
	}
	manifests = append(manifests, netexec("client", "cp-1", "client"),
		`{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"type":"NodePort","selector":{"app":"web"},
"ports":[{"name":"http","port":80,"targetPort":8080,"protocol":"TCP"},{"name":"udp","port":81,"targetPort":8081,"protocol":"UDP"}]}}`,
		`{"apiVersion":"v1","kind":"Service","metadata":{"name":"web-headless"},"spec":{"clusterIP":"None","selector":{"app":"web"},
"ports":[{"port":8080}]}}`)
	h.apply(strings.Join(manifests, "\n"))
	if _, err := h.runFor(4*time.Minute, "wait", "--for=condition=Ready", "pod/client", "pod/web-cp-2", "pod/web-cp-3", "pod/web-worker-1", "--timeout=3m"); err != nil {
		h.t.Fatal(err)
	}
	clusterIP := h.jsonpath("service", "web", "{.spec.clusterIP}")
	nodePort := h.jsonpath("service", "web", `{.spec.ports[?(@.name=="http")].nodePort}`)
	client := h.jsonpath("pod", "client", "{.status.podIP}")
	var backendIPs []string
	for name := range backends {
		backendIPs = append(backendIPs, h.jsonpath("pod", name, "{.status.podIP}"))
	}
	slices.Sort(backendIPs)
	cp1 := h.node("cp-1")

	// The client pod reaches each backend directly, then dials the Service
	// by its short name: its resolver (the node-local one, which sends svc
	// names to CoreDNS) and the Service's nftables DNAT, over TCP and UDP;
	// every backend, on the three other nodes, answers.
	dial := func(host, proto, port string, tries int) ([]string, error) {
		url := fmt.Sprintf("http://%s:8080/dial?request=hostname&protocol=%s&host=%s&port=%s&tries=%d", client, proto, host, port, tries)
		out, err := exec.CommandContext(h.ctx, "ip", "netns", "exec", cp1.Netns, "curl", "-sS", "--max-time", "60", url).Output()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", url, err)
		}
		var dial struct{ Responses, Errors []string }
		if err := json.Unmarshal(out, &dial); err != nil {
			return nil, fmt.Errorf("%s: %v: %s", url, err, out)
		}
		if len(dial.Errors) > 0 {
			return dial.Responses, fmt.Errorf("%s: errors %v", url, dial.Errors)
		}
		return dial.Responses, nil
	}
	for name := range backends {
		ip := h.jsonpath("pod", name, "{.status.podIP}")
		h.eventually("client pod → "+name+" ("+ip+") directly", time.Minute, func() error {
			got, err := dial(ip, "http", "8080", 1)
			if err == nil && (len(got) != 1 || got[0] != name) {
				err = fmt.Errorf("answered by %v", got)
			}
			return err
		})
	}
	for _, proto := range []struct{ name, port string }{{"http", "80"}, {"udp", "81"}} {
		h.eventually("client pod → Service web over "+proto.name, 2*time.Minute, func() error {
			got, err := dial("web", proto.name, proto.port, 30)
			if err != nil {
				return err
			}
			seen := map[string]int{}
			for _, r := range got {
				if _, ok := backends[r]; !ok {
					return fmt.Errorf("answered by %q, not a backend of web", r)
				}
				seen[r]++
			}
			if len(seen) != len(backends) {
				return fmt.Errorf("30 tries answered by %v: want every backend", seen)
			}
			h.t.Logf("client on cp-1 → web (%s) over %s: answers per backend %v", clusterIP, proto.name, seen)
			return nil
		})
	}

	// A NodePort from outside the cluster (this host, on the lab's bridge),
	// on a node with a backend and on one without.
	for _, node := range []string{"worker-1", "cp-1"} {
		url := "http://" + net.JoinHostPort(h.node(node).Address, nodePort) + "/hostname"
		h.eventually("NodePort "+url+" from outside", time.Minute, func() error {
			hc := http.Client{Timeout: 5 * time.Second}
			resp, err := hc.Get(url)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if _, ok := backends[string(body)]; !ok || resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s %q", url, resp.Status, body)
			}
			return nil
		})
	}

	// The node itself resolves Service names, ClusterIP and headless.
	svcName := "web.default.svc.cluster.local"
	h.eventually("cp-1 resolves "+svcName, time.Minute, func() error {
		return h.digWant(cp1, svcName, clusterIP)
	})
	h.eventually("cp-1 resolves the headless web-headless", time.Minute, func() error {
		return h.digWant(cp1, "web-headless.default.svc.cluster.local", backendIPs...)
	})

	// Reverse names of Service addresses: a ClusterIP's comes from CoreDNS;
	// an unassigned address's goes through CoreDNS's fallthrough back to a
	// node's resolver once and on to the upstream, which says NXDOMAIN (a
	// loop would time out as SERVFAIL).
	h.eventually("cp-1 resolves the ClusterIP's reverse name", time.Minute, func() error {
		return h.digStatus(cp1, "NOERROR", "web.default.svc.cluster.local.", "-x", clusterIP)
	})
	if err := h.digStatus(cp1, "NXDOMAIN", "", "-x", "10.111.255.254"); err != nil {
		h.t.Errorf("an unassigned Service address's reverse name: %v", err)
	}

	// Without CoreDNS the node's own names and forwarded names still resolve.
	if _, err := h.run("-n", "kube-system", "scale", "deployment/coredns", "--replicas=0"); err != nil {
		h.t.Fatal(err)
	}
	h.eventually("CoreDNS scaled to zero", 2*time.Minute, func() error {
		out, err := h.run("-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "name")
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			return fmt.Errorf("pods %q (%v)", out, err)
		}
		return nil
	})
	worker := h.node("worker-1")
	for _, q := range []struct{ name, want string }{
		{"api." + clusterName + "." + domain, h.s.APIVIP},
		{"worker-1." + clusterName + "." + domain, worker.Address},
		{upstreamName, upstreamAddr},
	} {
		if err := h.digWant(worker, q.name, q.want); err != nil {
			h.t.Errorf("with CoreDNS down, worker-1: %v", err)
		}
	}
	if _, err := h.run("-n", "kube-system", "scale", "deployment/coredns", "--replicas=2"); err != nil {
		h.t.Fatal(err)
	}
	port, err := strconv.Atoi(nodePort)
	if err != nil {
		h.t.Fatalf("NodePort %q: %v", nodePort, err)
	}
	return port
}

// apply creates or updates the objects in manifest (JSON or YAML documents).
func (h *haCluster) apply(manifest string) {
	h.t.Helper()
	cmd := exec.CommandContext(h.ctx, h.kubectl, "--kubeconfig", h.s.AdminKubeconfig(), "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		h.t.Fatalf("kubectl apply: %v: %s", err, out)
	}
}

// jsonpath returns one field of an object in the default namespace.
func (h *haCluster) jsonpath(kind, name, path string) string {
	h.t.Helper()
	out, err := h.run("get", kind, name, "-o", "jsonpath="+path)
	if err != nil {
		h.t.Fatal(err)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		h.t.Fatalf("%s/%s: %s is empty", kind, name, path)
	}
	return v
}

// digStatus asks n's own resolver (127.0.0.53) the query in args and
// compares the reply's status and first answer's data with want.
func (h *haCluster) digStatus(n Node, status, answer string, args ...string) error {
	argv := append([]string{"netns", "exec", n.Netns, "dig", "+time=3", "+tries=1", "+noall", "+comments", "+answer", "@127.0.0.53"}, args...)
	out, err := exec.CommandContext(h.ctx, "ip", argv...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dig %s on %s: %v: %s", strings.Join(args, " "), n.Name, err, out)
	}
	if !strings.Contains(string(out), "status: "+status) {
		return fmt.Errorf("dig %s on %s: want status %s:\n%s", strings.Join(args, " "), n.Name, status, out)
	}
	var got string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 5 && !strings.HasPrefix(l, ";") {
			got = f[len(f)-1]
			break
		}
	}
	if got != answer {
		return fmt.Errorf("dig %s on %s: answer %q, want %q:\n%s", strings.Join(args, " "), n.Name, got, answer, out)
	}
	return nil
}

// digWant asks n's own resolver (127.0.0.53 in its network namespace) for
// name's A records and compares them with want.
func (h *haCluster) digWant(n Node, name string, want ...string) error {
	out, err := exec.CommandContext(h.ctx, "ip", "netns", "exec", n.Netns,
		"dig", "+short", "+time=2", "+tries=2", "@127.0.0.53", name, "A").CombinedOutput()
	if err != nil {
		return fmt.Errorf("dig %s on %s: %v: %s", name, n.Name, err, out)
	}
	got := strings.Fields(string(out))
	slices.Sort(got)
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s on %s resolves to %q, want %q", name, n.Name, got, want)
	}
	return nil
}
