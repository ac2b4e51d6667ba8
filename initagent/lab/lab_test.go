package lab

import (
	"bytes"
	"context"
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

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/payload"
	"github.com/ballast-os/ballast/initagent/boottime"
	"github.com/ballast-os/ballast/initagent/internal/nstest"
	"github.com/ballast-os/ballast/initagent/runtime"
	"github.com/ballast-os/ballast/kernel"
)

// The lab's bridge lives in the test binary's own network namespace.
func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }

// TestContainerLabReadyAndDown runs `lab up --control-planes 1 --workers 0`
// with the container provisioner and the real runc: the node boots from the
// control-plane image (initramfs with this tree's agent, the payload's
// system image), commits its network, starts kubelet and becomes Ready, as
// its node API reports and as the kube API says through the API VIP with
// the admin kubeconfig from the node's STATE. A reboot ends the container;
// started again it is Ready from its config slot. Then Down must leave no
// container, process, cgroup, netns, veth, bridge, mount or directory.
func TestContainerLabReadyAndDown(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a Kubernetes control plane in a container node")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (runc, network namespaces)")
	}
	runc := DefaultRunc()
	if runc == "" {
		t.Skip("no runc in the payload cache: run `make payload`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	sys, err := (&payload.Builder{Log: slog.New(slog.DiscardHandler)}).System(ctx, payload.RoleControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	initramfs := buildInitramfs(t, ctx)

	dir := filepath.Join(t.TempDir(), "lab")
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	start := time.Now()
	s, err := Up(ctx, Options{Name: "t" + strconv.Itoa(os.Getpid()%100000), Dir: dir, Provisioner: ProvisionerContainer,
		ControlPlanes: 1, Runc: runc, Initramfs: initramfs, SystemImage: sys, Log: log})
	if s != nil {
		t.Cleanup(func() {
			if t.Failed() {
				for _, n := range s.Nodes {
					t.Logf("%s console:\n%s", n.Name, tail(s.ConsoleLog(n), 60))
					t.Logf("%s kubelet:\n%s", n.Name, tail(filepath.Join(s.stateDir(n), "log/ballast/kubelet.log"), 30))
				}
			}
			_ = Down(dir, false, log) // after a failure; the test calls it itself otherwise
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	var milestones []string
	err = s.Wait(ctx, func(st []NodeStatus) {
		milestones = append(milestones, st[0].Progress+" "+time.Since(start).Round(100*time.Millisecond).String())
	})
	if err != nil {
		t.Fatal(err)
	}
	toReady := time.Since(start)
	// The controller manager and scheduler may come up after node Ready.
	var boot []boottime.Mark
	for deadline := time.Now().Add(2 * time.Minute); ; {
		st, err := s.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		boot = st[0].Boot
		if slices.ContainsFunc(boot, func(m boottime.Mark) bool { return m.Name == boottime.ControlPlaneRunning }) ||
			time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	// The boot timeline has every milestone of a container node, in order
	// (no kernel handover or modules: the host's kernel did those).
	var reached []string
	for i, m := range boot {
		reached = append(reached, m.Name)
		if i > 0 && m.Seconds < boot[i-1].Seconds {
			t.Errorf("boot timeline out of order: %v", boot)
		}
	}
	wantBoot := []string{boottime.NetworkCommitted, boottime.ServicesStarted, boottime.NodeAPIServing, boottime.ImagesReady,
		boottime.ContainerdReady, boottime.KubeletStarted, boottime.APIServerHealthy, boottime.PodNetwork, boottime.NodeReady,
		boottime.ControlPlaneRunning}
	for _, w := range wantBoot {
		if !slices.Contains(reached, w) {
			t.Errorf("boot timeline %v lacks %q", boot, w)
		}
	}
	t.Logf("boot timeline: %v", boot)
	kc, err := runtime.LoadKubeconfig(s.AdminKubeconfig(), "")
	if err != nil {
		t.Fatal(err)
	}
	n, err := kc.GetNode(ctx, "cp-1")
	if err != nil {
		t.Fatalf("kube API through the admin kubeconfig (%s): %v", s.AdminKubeconfig(), err)
	}
	if ready, why := n.Ready(); !ready {
		t.Errorf("node cp-1 not Ready in the kube API: %s", why)
	}
	if ips := n.InternalIPs(); len(ips) != 1 || ips[0] != s.Nodes[0].Address {
		t.Errorf("node InternalIPs %v, want [%s]", ips, s.Nodes[0].Address)
	}
	// The bootstrapping node claims its pod subnet itself (the lowest of
	// the pod CIDR) instead of waiting for the controller manager.
	if want := netip.MustParsePrefix(podCIDR).Masked().Addr().String() + "/24"; !slices.Equal(n.Spec.PodCIDRs, []string{want}) {
		t.Errorf("node podCIDRs %v, want [%s]", n.Spec.PodCIDRs, want)
	}
	if console, _ := os.ReadFile(s.ConsoleLog(s.Nodes[0])); !bytes.Contains(console, []byte("pod CIDRs claimed for the bootstrapping node")) {
		t.Errorf("cp-1's log does not show its pod CIDR claim:\n%s", tail(s.ConsoleLog(s.Nodes[0]), 40))
	}
	// Pods land in the node's own cgroup subtree, not the host's root.
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", s.CgroupParent, "cp-1/kubepods")); err != nil {
		t.Errorf("kubelet's pods are not under the node's cgroup: %v", err)
	}
	memDir := filepath.Join("/sys/fs/cgroup/memory", s.CgroupParent, "cp-1")
	t.Logf("figures: lab up → Ready %v (milestones %s); node memory: cgroup usage %d MiB (page cache included), rss %d MiB",
		toReady.Round(100*time.Millisecond), strings.Join(milestones, ", "),
		readInt(filepath.Join(memDir, "memory.usage_in_bytes"))>>20, memStat(filepath.Join(memDir, "memory.stat"), "total_rss")>>20)

	// A reboot ends the container (reboot(2) in its PID namespace); started
	// again, the node boots from its config slot on STATE to Ready.
	cp := s.Nodes[0]
	if err := run(s.Runc, "--root", s.runcRoot(), "kill", cp.Container, "INT"); err != nil { // SIGINT: reboot
		t.Fatal(err)
	}
	for {
		if st, _ := s.containerState(cp); st == "stopped" {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the node did not end its container after a reboot request")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(tail(s.ConsoleLog(cp), 3), "ballast: reboot") {
		t.Errorf("console does not end with the reboot:\n%s", tail(s.ConsoleLog(cp), 3))
	}
	restart := time.Now()
	if err := s.Start(cp); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(ctx, nil); err != nil {
		t.Fatal(err)
	}
	console, _ := os.ReadFile(s.ConsoleLog(cp))
	if _, second, _ := strings.Cut(string(console), "ballast: reboot"); !strings.Contains(second, `msg="machine config from config slot"`) {
		t.Errorf("after the reboot the node did not boot its committed config from the slot on STATE")
	}
	t.Logf("figures: reboot → Ready again %v", time.Since(restart).Round(100*time.Millisecond))

	_, pid := s.containerState(cp)
	if err := Down(dir, false, log); err != nil {
		t.Fatal(err)
	}
	assertGone(t, s, pid)
}

// assertGone checks that nothing of the lab is left on the machine.
func assertGone(t *testing.T, s *State, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Errorf("runc reported no pid for the running node")
	} else if Running(pid) {
		t.Errorf("the node's agent (pid %d) still runs", pid)
	}
	for _, n := range s.Nodes {
		if _, err := os.Stat(filepath.Join("/run/netns", n.Netns)); err == nil {
			t.Errorf("netns %s left", n.Netns)
		}
		if linkExists(n.HostVeth) {
			t.Errorf("veth %s left", n.HostVeth)
		}
	}
	if linkExists(s.Bridge) {
		t.Errorf("bridge %s left", s.Bridge)
	}
	mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mountinfo), s.Dir) {
		t.Errorf("mounts under %s left", s.Dir)
	}
	if dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", s.CgroupParent)); len(dirs) > 0 {
		t.Errorf("cgroups left: %v", dirs)
	}
	if _, err := os.Stat(s.Dir); err == nil {
		t.Errorf("lab directory %s left", s.Dir)
	}
	if out, _ := exec.Command("losetup", "-j", s.SystemImage).Output(); len(out) > 0 {
		t.Errorf("loop device left: %s", out)
	}
}

// buildInitramfs makes the control-plane recipe's initramfs with this
// tree's agent, as imgbuild does (early cpio first, then the archive).
func buildInitramfs(t *testing.T, ctx context.Context) string {
	t.Helper()
	src, err := image.FindSourceDir(".")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	agent := filepath.Join(tmp, "initagent")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", agent, "./initagent/cmd/initagent")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build initagent: %v\n%s", err, out)
	}
	r, err := image.LoadRecipe("control-plane")
	if err != nil {
		t.Fatal(err)
	}
	pin, err := kernel.PinFor(r.Kernel.Flavour)
	if err != nil {
		t.Fatal(err)
	}
	k, err := kernel.Fetch(ctx, kernel.CacheDir(), pin, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	mods, err := k.Resolve(r.Kernel.Modules)
	if err != nil {
		t.Fatal(err)
	}
	a, _, err := image.Initramfs(r, k, mods, nil, agent, image.DefaultCABundle)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, image.InitramfsFile)
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	// imgbuild puts the recipe's early microcode cpio first; the lab must
	// skip it as the kernel's unpacking does (a stand-in blob: the lab does
	// not use it).
	if _, err := image.WriteEarlyCPIO(f, []image.EarlyFile{{Name: kernel.MicrocodeDir + "/GenuineIntel.bin", Data: []byte("microcode stand-in")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

func readInt(path string) int64 {
	data, _ := os.ReadFile(path)
	v, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return v
}

func memStat(path, key string) int64 {
	data, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
