package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/image/payload"
	"github.com/ballast-os/ballast/initagent/etcdmember"
)

// TestContainerLabHACluster forms the highly available cluster of issue 19
// from the control-plane image: `lab up --control-planes 3 --workers 1`
// with the container provisioner. It checks, with the real kubectl of the
// pinned Kubernetes through the API VIP and etcd's own member list:
//   - all four nodes Ready, each InternalIP its lab address;
//   - one etcd cluster of three voting members; a second bootstrap refused;
//   - pod routes on every node to every other node's pod CIDR, and a pod on
//     a control plane pings a pod on the worker with no overlay;
//   - Services and cluster DNS (issue 20; see services), with every node's
//     inbound firewall on: what is not opened is dropped (firewallScan);
//   - pod egress leaves with the source the config declares, changed by a
//     network transaction (egress);
//   - a power cut of the VIP holder: the VIP moves, the API answers and
//     writes (quorum kept); started again it rejoins as the same member;
//   - a control plane whose STATE was wiped rejoins as a new member and the
//     stale one is gone, without anyone editing etcd;
//   - a deleted Node's pod routes go away; Down leaves nothing.
func TestContainerLabHACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a four-node Kubernetes cluster in container nodes")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (runc, network namespaces)")
	}
	runc := DefaultRunc()
	if runc == "" {
		t.Skip("no runc in the payload cache: run `make payload`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	b := &payload.Builder{Log: slog.New(slog.DiscardHandler)}
	sys, err := b.System(ctx, payload.RoleControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	bins, err := b.Build(ctx, payload.Kubectl, payload.Ctr)
	if err != nil {
		t.Fatal(err)
	}
	testArchive := filepath.Join(t.TempDir(), "test-images.tar")
	testImages, err := b.TestImageArchive(ctx, testArchive)
	if err != nil {
		t.Fatal(err)
	}
	_, pauseTag, err := b.KubeadmImageTags(ctx)
	if err != nil {
		t.Fatal(err)
	}
	initramfs := buildInitramfs(t, ctx)

	dir := filepath.Join(t.TempDir(), "lab")
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	gateway := netip.MustParsePrefix(DefaultSubnet).Addr().Next().String()
	startUpstreamDNS(t, gateway)
	start := time.Now()
	s, err := Up(ctx, Options{Name: "h" + strconv.Itoa(os.Getpid()%100000), Dir: dir, Provisioner: ProvisionerContainer,
		ControlPlanes: 3, Workers: 1, Runc: runc, Initramfs: initramfs, SystemImage: sys, DNSServers: []string{gateway}, Firewall: true, Log: log})
	if s != nil {
		t.Cleanup(func() {
			if t.Failed() {
				if kubectl, ok := bins[payload.Kubectl]; ok {
					for _, args := range [][]string{{"get", "pods", "-A", "-o", "wide"}, {"get", "events", "-A", "--sort-by=.lastTimestamp"}} {
						out, _ := exec.Command(kubectl, append([]string{"--kubeconfig", s.AdminKubeconfig(), "--request-timeout", "10s"}, args...)...).CombinedOutput()
						t.Logf("kubectl %s:\n%s", strings.Join(args, " "), lastLines(string(out), 60))
					}
				}
				for _, n := range s.Nodes {
					t.Logf("%s console:\n%s", n.Name, tail(s.ConsoleLog(n), 40))
					logRestartedContainers(t, n.Name, filepath.Join(filepath.Dir(s.ConsoleLog(n)), "state/log/pods"))
				}
			}
			_ = Down(dir, false, log)
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	var milestones []string
	progress := func(st []NodeStatus) {
		var b strings.Builder
		for _, n := range st {
			fmt.Fprintf(&b, " %s=%s", n.Name, n.Progress)
		}
		milestones = append(milestones, time.Since(start).Round(time.Second).String()+b.String())
	}
	if err := s.Wait(ctx, progress); err != nil {
		t.Fatal(err)
	}
	t.Logf("figures: lab up 3+1 → all Ready %v\n%s", time.Since(start).Round(100*time.Millisecond), strings.Join(milestones, "\n"))
	h := &haCluster{t: t, ctx: ctx, s: s, kubectl: bins[payload.Kubectl]}

	// Four Ready nodes, each with its lab address as InternalIP.
	nodes := h.nodes()
	if len(nodes) != 4 {
		t.Fatalf("kubectl get nodes: %d nodes, want 4: %v", len(nodes), nodes)
	}
	for _, n := range s.Nodes {
		got, ok := nodes[n.Name]
		if !ok || !got.ready || got.internalIP != n.Address {
			t.Errorf("node %s in the API: %+v, want Ready with InternalIP %s", n.Name, got, n.Address)
		}
	}

	// One etcd cluster of three voting members; no second bootstrap.
	members := h.etcdMembers(3)
	if _, err := s.callUntilAnswered(ctx, h.node("cp-2"), "/v1/bootstrap"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("a second bootstrap (on cp-2) was not refused with 409: %v", err)
	}

	// Pod routes and a pod on a control plane reaching a pod on the worker.
	// Every node its own pod subnet: the bootstrapping node's claim and the
	// controller manager's allocations for the others do not collide.
	cidrs, cidrOwner := map[string]string{}, map[string]string{}
	for name, n := range nodes {
		cidrs[name] = n.podCIDR
		if other, dup := cidrOwner[n.podCIDR]; dup || n.podCIDR == "" {
			t.Errorf("node %s has pod CIDR %q, as %s has", name, n.podCIDR, other)
		}
		cidrOwner[n.podCIDR] = name
	}
	h.waitPodRoutes(cidrs, "")
	h.podToPod(pauseTag)
	nodePort := h.services(bins[payload.Ctr], testArchive, testImages[0])
	h.firewallScan(nodePort)
	h.vrrpFromStranger()
	h.lockoutReverts()
	h.egress("web-worker-1")

	// Power cut of the VIP holder.
	holder := h.vipHolder()
	holderID := members[holder.Name]
	cut := time.Now()
	if err := s.Stop(holder); err != nil {
		t.Fatal(err)
	}
	h.eventually("the API through the VIP after the holder's power cut", 2*time.Minute, func() error {
		if n, err := h.vipHolderOrErr(); err != nil || n.Name == holder.Name {
			return fmt.Errorf("VIP holder %v (%v)", n.Name, err)
		}
		_, err := h.run("create", "configmap", "after-cut-"+strconv.FormatInt(time.Now().UnixNano(), 36))
		return err // a write: etcd kept its quorum
	})
	t.Logf("figures: VIP holder %s powered off → VIP moved and the API wrote again in %v", holder.Name, time.Since(cut).Round(100*time.Millisecond))
	restart := time.Now()
	if err := s.Start(holder); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := h.etcdMembers(3)[holder.Name]; got != holderID {
		t.Errorf("%s came back as etcd member %x, want the same member %x", holder.Name, got, holderID)
	}
	t.Logf("figures: %s started again → all Ready, same etcd member, in %v", holder.Name, time.Since(restart).Round(100*time.Millisecond))

	// A control plane with a wiped STATE rejoins as a new member.
	wiped := h.node("cp-3")
	if wiped.Name == holder.Name {
		wiped = h.node("cp-2")
	}
	oldID := h.etcdMembers(3)[wiped.Name]
	if err := s.Stop(wiped); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(s.stateDir(wiped)); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(s.stateDir(wiped), 0o755); err != nil {
		t.Fatal(err)
	}
	rejoin := time.Now()
	if err := s.Start(wiped); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(ctx, nil); err != nil {
		t.Fatal(err)
	}
	after := h.etcdMembers(3)
	if after[wiped.Name] == oldID {
		t.Errorf("%s with a wiped disk kept its old etcd member %x", wiped.Name, oldID)
	}
	if !strings.Contains(tail(s.ConsoleLog(wiped), 400), "etcd stale member removed") {
		t.Errorf("%s's log does not say it removed its stale member", wiped.Name)
	}
	t.Logf("figures: %s with a wiped STATE → Ready as a new etcd member in %v", wiped.Name, time.Since(rejoin).Round(100*time.Millisecond))

	// A Node that leaves takes its pod routes with it.
	if _, err := h.run("delete", "node", "worker-1"); err != nil {
		t.Fatal(err)
	}
	delete(cidrs, "worker-1")
	h.waitPodRoutes(cidrs, "worker-1")

	_, pid := s.containerState(h.node("cp-1"))
	if err := Down(dir, false, log); err != nil {
		t.Fatal(err)
	}
	assertGone(t, s, pid)
}

// haCluster drives a lab's cluster from the test: kubectl, etcd, netns.
type haCluster struct {
	t       *testing.T
	ctx     context.Context
	s       *State
	kubectl string
}

type apiNode struct {
	ready      bool
	internalIP string
	podCIDR    string
}

func (h *haCluster) node(name string) Node {
	n, err := h.s.Node(name)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// run runs kubectl against the lab's admin kubeconfig (server: the VIP),
// for a minute at most.
func (h *haCluster) run(args ...string) ([]byte, error) { return h.runFor(time.Minute, args...) }

// runFor runs kubectl for up to d (kubectl wait and rollout status take
// their own --timeout, which must be shorter).
func (h *haCluster) runFor(d time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(h.ctx, d)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.kubectl, append([]string{"--kubeconfig", h.s.AdminKubeconfig(), "--request-timeout", "20s"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func (h *haCluster) nodes() map[string]apiNode {
	out, err := h.run("get", "nodes", "-o", "json")
	if err != nil {
		h.t.Fatal(err)
	}
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Spec     struct{ PodCIDR string }
			Status   struct {
				Conditions []struct{ Type, Status string }
				Addresses  []struct{ Type, Address string }
			}
		}
	}
	if err := json.Unmarshal(out, &list); err != nil {
		h.t.Fatal(err)
	}
	nodes := map[string]apiNode{}
	for _, it := range list.Items {
		var n apiNode
		n.podCIDR = it.Spec.PodCIDR
		for _, c := range it.Status.Conditions {
			n.ready = n.ready || (c.Type == "Ready" && c.Status == "True")
		}
		for _, a := range it.Status.Addresses {
			if a.Type == "InternalIP" {
				n.internalIP = a.Address
			}
		}
		nodes[it.Metadata.Name] = n
	}
	return nodes
}

// etcdMembers waits until etcd lists want started voting members and
// returns their IDs by name.
func (h *haCluster) etcdMembers(want int) map[string]uint64 {
	pki := h.s.pkiDir()
	caCert, err1 := os.ReadFile(filepath.Join(pki, "etcd-ca.crt"))
	caKey, err2 := os.ReadFile(filepath.Join(pki, "etcd-ca.key"))
	if err1 != nil || err2 != nil {
		h.t.Fatal(err1, err2)
	}
	var endpoints []string
	for _, n := range h.s.Nodes {
		if n.Role == RoleControlPlane {
			endpoints = append(endpoints, "https://"+n.Address+":2379")
		}
	}
	c, err := etcdmember.ClientFromCA(endpoints, caCert, caKey, "lab-test")
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.CloseIdle()
	ids := map[string]uint64{}
	h.eventually(fmt.Sprintf("%d started voting etcd members", want), 3*time.Minute, func() error {
		ms, _, err := c.MemberList(h.ctx)
		if err != nil {
			return err
		}
		clear(ids)
		for _, m := range ms {
			if !m.Started() || m.IsLearner {
				return fmt.Errorf("member %x (%q) started %v learner %v", m.ID, m.Name, m.Started(), m.IsLearner)
			}
			ids[m.Name] = m.ID
		}
		if len(ms) != want {
			return fmt.Errorf("%d members: %v", len(ms), ids)
		}
		return nil
	})
	return ids
}

// waitPodRoutes waits until every running node's netns routes (protocol
// 200) exactly the other nodes' pod CIDRs via their addresses; gone names a
// node whose CIDR must have no route.
func (h *haCluster) waitPodRoutes(cidrs map[string]string, gone string) {
	h.eventually("pod routes on every node", 2*time.Minute, func() error {
		for _, n := range h.s.Nodes {
			if n.Name == gone {
				continue
			}
			out, err := exec.Command("ip", "-n", n.Netns, "route", "show", "proto", "200").Output()
			if err != nil {
				return fmt.Errorf("%s: %v", n.Name, err)
			}
			var want []string
			for _, o := range h.s.Nodes {
				if o.Name != n.Name && cidrs[o.Name] != "" {
					want = append(want, cidrs[o.Name]+" via "+o.Address+" dev eth0")
				}
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if f := strings.Fields(l); len(f) >= 5 {
					got = append(got, strings.Join(f[:5], " "))
				}
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				return fmt.Errorf("%s routes %q, want %q", n.Name, got, want)
			}
		}
		return nil
	})
}

// podToPod runs a pause pod on cp-1 and one on worker-1 and pings the
// second from inside the first's network namespace.
func (h *haCluster) podToPod(pauseTag string) {
	pod := func(name, node string) string {
		return fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q},"spec":{"nodeName":%q,
"tolerations":[{"operator":"Exists"}],"containers":[{"name":"pause","image":"registry.k8s.io/pause:%s","imagePullPolicy":"Never"}]}}`,
			name, node, pauseTag)
	}
	for name, node := range map[string]string{"pod-a": "cp-1", "pod-b": "worker-1"} {
		cmd := exec.CommandContext(h.ctx, h.kubectl, "--kubeconfig", h.s.AdminKubeconfig(), "apply", "-f", "-")
		cmd.Stdin = strings.NewReader(pod(name, node))
		if out, err := cmd.CombinedOutput(); err != nil {
			h.t.Fatalf("create %s: %v: %s", name, err, out)
		}
	}
	if _, err := h.runFor(4*time.Minute, "wait", "--for=condition=Ready", "pod/pod-a", "pod/pod-b", "--timeout=3m"); err != nil {
		h.t.Fatal(err)
	}
	ip := func(name string) netip.Addr {
		out, err := h.run("get", "pod", name, "-o", "jsonpath={.status.podIP}")
		if err != nil {
			h.t.Fatal(err)
		}
		a, err := netip.ParseAddr(strings.TrimSpace(string(out)))
		if err != nil {
			h.t.Fatalf("%s IP: %v", name, err)
		}
		return a
	}
	a, b := ip("pod-a"), ip("pod-b")
	if a.Compare(b) == 0 || netip.MustParsePrefix(DefaultSubnet).Contains(a) {
		h.t.Fatalf("pod IPs %s and %s are not pod-network addresses", a, b)
	}
	pid, err := PodPID(a.String())
	if err != nil {
		h.t.Fatal(err)
	}
	out, err := exec.CommandContext(h.ctx, "nsenter", "-t", strconv.Itoa(pid), "-n", "ping", "-c", "3", "-W", "2", b.String()).CombinedOutput()
	if err != nil {
		h.t.Fatalf("pod-a (%s on cp-1) cannot ping pod-b (%s on worker-1): %v\n%s", a, b, err, out)
	}
	h.t.Logf("pod-a %s on cp-1 → pod-b %s on worker-1: %s", a, b, lastLine(string(out)))
}

func (h *haCluster) vipHolderOrErr() (Node, error) {
	var holders []Node
	for _, n := range h.s.Nodes {
		out, err := exec.Command("ip", "-n", n.Netns, "-o", "addr", "show", "dev", "eth0").Output()
		if err == nil && strings.Contains(string(out), " "+h.s.APIVIP+"/") {
			holders = append(holders, n)
		}
	}
	if len(holders) != 1 {
		return Node{}, fmt.Errorf("%d nodes hold the API VIP %s: %v", len(holders), h.s.APIVIP, holders)
	}
	return holders[0], nil
}

func (h *haCluster) vipHolder() Node {
	var n Node
	h.eventually("one VIP holder", time.Minute, func() (err error) {
		n, err = h.vipHolderOrErr()
		return err
	})
	return n
}

// eventually retries f every half second until it succeeds or within
// passes; the test fails with f's last error.
func (h *haCluster) eventually(what string, within time.Duration, f func() error) {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || h.ctx.Err() != nil {
			h.t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// logRestartedContainers shows, for each container on the node that has
// restarted, the end of the log of its last finished run (kubelet keeps
// <restart>.log per run under /var/log/pods/<pod>/<container>/).
func logRestartedContainers(t *testing.T, node, podLogs string) {
	dirs, _ := filepath.Glob(filepath.Join(podLogs, "*", "*"))
	for _, d := range dirs {
		runs, _ := filepath.Glob(filepath.Join(d, "*.log"))
		if len(runs) < 2 {
			continue
		}
		slices.SortFunc(runs, func(a, b string) int { return runNumber(a) - runNumber(b) })
		t.Logf("%s: %s restarted %d times; its run before the last:\n%s", node,
			filepath.Base(filepath.Dir(d))+"/"+filepath.Base(d), len(runs)-1, tail(runs[len(runs)-2], 25))
	}
}

func runNumber(path string) int {
	n, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), ".log"))
	return n
}
