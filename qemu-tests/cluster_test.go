package qemutests

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/payload"
	"github.com/ballast-os/ballast/initagent/lab"
	"github.com/ballast-os/ballast/initagent/runtime"
)

// TestWorkerVMJoinsContainerCluster proves the real boot path joins a
// cluster, through the lab's two provisioners at once: `lab up
// --control-planes 1 --workers 1 --worker-provisioner qemu`. The control
// plane is a container node (control-plane artifacts, the payload's system
// image); the worker is a QEMU VM (TCG) booted from the worker recipe's
// kernel, raw disk and an initrd carrying its machine config (CA
// certificate, bootstrap token, the control plane as apiServers), its NIC a
// tap on the lab's bridge. kubelet's TLS bootstrap goes through the VM's
// local API proxy; the worker's Node goes Ready with its lab address as
// InternalIP; `lab down` leaves no tap, process or file.
func TestWorkerVMJoinsContainerCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a container control plane and a worker VM under emulation")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	runc := lab.DefaultRunc()
	if runc == "" {
		t.Skip("no runc in the payload cache: run `make payload`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), kubeTimeout)
	defer cancel()
	b := &payload.Builder{Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	cpSystem, err := b.System(ctx, payload.RoleControlPlane)
	must(t, err)
	workerSystem, err := b.System(ctx, payload.RoleWorker)
	must(t, err)
	cpDir, workerDir := buildRecipe(t, "control-plane"), buildRecipeWith(t, "worker", workerSystem)

	// RFC 2544's benchmarking range: no other test's lab uses it.
	labDir := filepath.Join(t.TempDir(), "lab")
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	start := time.Now()
	s, err := lab.Up(ctx, lab.Options{Name: "qj" + strconv.Itoa(os.Getpid()%1000), Dir: labDir,
		Provisioner: lab.ProvisionerContainer, WorkerProvisioner: lab.ProvisionerQEMU, ControlPlanes: 1, Workers: 1,
		Subnet: "198.18.0.0/24", Runc: runc, Initramfs: filepath.Join(cpDir, image.InitramfsFile), SystemImage: cpSystem,
		VM: lab.VMArtifacts{Kernel: filepath.Join(workerDir, image.KernelFile), Initramfs: filepath.Join(workerDir, image.InitramfsFile),
			Disk: filepath.Join(workerDir, image.RawFile("worker"))},
		VMAccel: *accelFlag, Log: log})
	if s != nil {
		t.Cleanup(func() {
			if t.Failed() {
				for _, n := range s.Nodes {
					t.Logf("%s console:\n%s", n.Name, tailFile(s.ConsoleLog(n), 80))
				}
			}
			_ = lab.Down(labDir, false, log)
		})
	}
	must(t, err)
	var milestones []string
	err = s.Wait(ctx, func(st []lab.NodeStatus) {
		milestones = append(milestones, time.Since(start).Round(time.Second).String()+" "+st[0].Progress+" / "+st[1].Progress)
	})
	must(t, err)
	toReady := time.Since(start)

	kc, err := runtime.LoadKubeconfig(s.AdminKubeconfig(), "")
	must(t, err)
	worker := s.Nodes[1]
	node, err := kc.GetNode(ctx, worker.Name)
	must(t, err)
	if ready, why := node.Ready(); !ready {
		t.Errorf("worker VM's Node not Ready: %s", why)
	}
	if ips := node.InternalIPs(); len(ips) != 1 || ips[0] != worker.Address {
		t.Errorf("worker VM InternalIPs %v, want [%s]", ips, worker.Address)
	}
	console, _ := os.ReadFile(s.ConsoleLog(worker))
	for _, want := range []string{`msg="machine config accepted" source=embedded:/etc/ballast/machine-config.yaml`, `msg="kubernetes node ready" part=kube node=worker-1`} {
		if !strings.Contains(string(console), want) {
			t.Errorf("worker VM console lacks %s", want)
		}
	}
	t.Logf("figures: lab up (container control plane + QEMU worker, TCG) → both Ready %v; cp-1 / worker-1: %s",
		toReady.Round(100*time.Millisecond), strings.Join(milestones, ", "))

	_, pid := s.NodeProcess(worker)
	must(t, lab.Down(labDir, false, log))
	if pid <= 0 || lab.Running(pid) {
		t.Errorf("the worker's QEMU (pid %d) was not seen or still runs after lab down", pid)
	}
	if out, _ := exec.Command("ip", "link", "show", worker.HostVeth).CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("tap %s left: %s", worker.HostVeth, out)
	}
}

func tailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// buildRecipeWith builds recipe with the given system image (the payload's).
func buildRecipeWith(t *testing.T, recipe, system string) string {
	t.Helper()
	r, err := image.LoadRecipe(recipe)
	must(t, err)
	src, err := image.FindSourceDir(".")
	must(t, err)
	out := filepath.Join(t.TempDir(), "out")
	_, err = image.Build(context.Background(), image.Options{
		Recipe: r, OutDir: out, SourceDir: src, SystemImage: system, Progress: testWriter{t}, Log: slog.New(slog.DiscardHandler),
	})
	must(t, err)
	return filepath.Join(out, r.Name)
}
