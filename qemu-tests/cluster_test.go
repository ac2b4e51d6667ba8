package qemutests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
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
// cluster: a control plane runs as a container node (lab, container
// provisioner, from the control-plane artifacts), and a worker VM booted
// under QEMU from the worker recipe's raw disk image, with its NIC on the
// lab's bridge and its machine config (CA certificate, bootstrap token,
// the control plane as apiServers) from the lab, joins it: kubelet's TLS
// bootstrap goes through the VM's local API proxy, and the Node goes Ready
// with its lab address as InternalIP.
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
	s, err := lab.Up(ctx, lab.Options{Name: "qj" + strconv.Itoa(os.Getpid()%1000), Dir: labDir, Provisioner: lab.ProvisionerContainer,
		ControlPlanes: 1, Subnet: "198.18.0.0/24", Runc: runc,
		Initramfs: filepath.Join(cpDir, image.InitramfsFile), SystemImage: cpSystem, Log: log})
	if s != nil {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("cp-1 console:\n%s", tailFile(s.ConsoleLog(s.Nodes[0]), 40))
			}
			if err := lab.Down(labDir, false, log); err != nil {
				t.Errorf("lab down: %v", err)
			}
		})
	}
	must(t, err)

	const workerIP = "198.18.0.31"
	doc, err := s.MachineConfigFor("vm-worker", lab.RoleWorker, workerIP)
	must(t, err)
	sum := sha256.Sum256(doc)
	srv := &http.Server{Addr: s.Gateway + ":8080", Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(doc) })}
	go srv.ListenAndServe()
	t.Cleanup(func() { srv.Close() })

	tap := "tapqj" + strconv.Itoa(os.Getpid()%1000)
	for _, args := range [][]string{{"tuntap", "add", tap, "mode", "tap"}, {"link", "set", tap, "master", s.Bridge}, {"link", "set", tap, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", tap).Run() })

	disk := filepath.Join(t.TempDir(), "worker.raw")
	sparseCopy(t, filepath.Join(workerDir, image.RawFile("worker")), disk, 8<<30)
	r, err := image.LoadRecipe("worker")
	must(t, err)
	start := time.Now()
	vm, err := StartVM(VMOptions{
		Kernel: filepath.Join(workerDir, image.KernelFile), Initrd: filepath.Join(workerDir, image.InitramfsFile),
		Cmdline: append(append([]string{}, r.Cmdline...), "ballast.slot=a", "ballast.hostname=vm-worker",
			fmt.Sprintf("ballast.config=http://%s:8080/node.yaml", s.Gateway), "ballast.config.sha256="+hex.EncodeToString(sum[:])),
		MemoryMiB: 2048, CPUs: 2, Accel: *accelFlag,
		Args: []string{"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:18:31", "-cpu", "max",
			"-drive", "if=virtio,format=raw,file=" + disk},
	})
	must(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last 200 worker console lines:\n%s", vm.Tail(200))
		}
		vm.Kill()
	})

	// The control plane is Ready meanwhile; then the worker joins it.
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Minute)
	defer wcancel()
	must(t, s.Wait(wctx, nil))
	cpReady := time.Since(start)
	_, i := expectLine(t, vm, ctx, `msg="kubelet started" part=kube`, 0)
	kubeletStarted := time.Since(start)
	kc, err := runtime.LoadKubeconfig(s.AdminKubeconfig(), "")
	must(t, err)
	var node *runtime.Node
	for {
		n, err := kc.GetNode(ctx, "vm-worker")
		if err == nil {
			if ready, _ := n.Ready(); ready {
				node = n
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("the worker VM never became a Ready node: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
	if ips := node.InternalIPs(); len(ips) != 1 || ips[0] != workerIP {
		t.Errorf("worker VM InternalIPs %v, want [%s]", ips, workerIP)
	}
	expectLine(t, vm, ctx, `msg="kubernetes node ready" part=kube node=vm-worker`, i)
	t.Logf("figures: container control plane Ready %v after the VM started; worker VM: kubelet started %v, Node Ready %v (TCG)",
		cpReady.Round(100*time.Millisecond), kubeletStarted.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
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
