package qemutests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/pid1/readiness"
)

// Diskless machines PXE-boot the control-plane image from netbootd: the
// firmware's PXE (QEMU's iPXE NIC ROM under SeaBIOS, OVMF's own PXE under
// UEFI, which chainloads ipxe.efi over TFTP) gets its boot file from
// netbootd's DHCP (full, or proxy next to dnsmasq), fetches the boot script,
// kernel and initramfs over HTTP, and the node fetches its per-MAC config
// (sha256 pinned by the script) and comes up with the static address in it.

const netbootServerIP = "192.0.2.2"

// The group template gives each machine the address in its "addr" label.
const netbootGroups = `machines:
  - {mac: "52:54:00:00:00:31", hostname: pxe-bios, labels: {addr: 192.0.2.31}}
  - {mac: "52:54:00:00:00:32", hostname: pxe-uefi, labels: {addr: 192.0.2.32}}
  - {mac: "52:54:00:00:00:33", hostname: pxe-proxy, labels: {addr: 192.0.2.33}}
groups:
  - name: lab
    selector: {macs: ["52:54:00:00:00:*"]}
    template: node.yaml.tmpl
`

const netbootTemplate = `apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
# {{.Hostname}} ({{.MAC}}) in group {{.Group}}
network:
  interfaces:
    - name: eth0
      addresses: [{{index .Labels "addr"}}/24]
      routes:
        - {to: default, via: 192.0.2.1}
`

// netbootd is the server process running in its own namespace, which is
// plugged into the lab's bridge like another host on the segment.
type netbootd struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs bytes.Buffer
	done chan struct{}
}

func (n *netbootd) Write(p []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logs.Write(p)
}

func (n *netbootd) Logs() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logs.String()
}

// waitLog waits until the server logged a line matching re.
func (n *netbootd) waitLog(ctx context.Context, re *regexp.Regexp) (string, error) {
	for {
		for _, l := range strings.Split(n.Logs(), "\n") {
			if re.MatchString(l) {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("netbootd never logged %q", re)
		case <-n.done:
			return "", fmt.Errorf("netbootd exited before logging %q", re)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var buildNetbootd = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "ballast-netbootd-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "netbootd")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/ballast-os/ballast/netboot/cmd/netbootd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build netbootd: %v\n%s", err, out)
	}
	return bin, nil
})

// startNetbootd runs netbootd for the recipe's artifacts on a host
// (192.0.2.2) attached to the lab's bridge, with extra flags.
func startNetbootd(t *testing.T, lab *Lab, recipe string, flags ...string) *netbootd {
	t.Helper()
	bin, err := buildNetbootd()
	if err != nil {
		t.Fatal(err)
	}
	artifacts := buildRecipe(t, recipe)
	machines := t.TempDir()
	must(t, os.WriteFile(filepath.Join(machines, "groups.yaml"), []byte(netbootGroups), 0o644))
	must(t, os.WriteFile(filepath.Join(machines, "node.yaml.tmpl"), []byte(netbootTemplate), 0o644))

	b := make([]byte, 3)
	rand.Read(b)
	ns, peer := lab.Name+"-nb", "nbp"+hex.EncodeToString(b)
	must(t, ip("netns", "add", ns))
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, args := range [][]string{
		{"-n", lab.Name, "link", "add", peer, "type", "veth", "peer", "name", "nb0", "netns", ns},
		{"-n", lab.Name, "link", "set", peer, "master", "br0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", netbootServerIP + "/24", "dev", "nb0"},
		{"-n", ns, "link", "set", "nb0", "up"},
	} {
		must(t, ip(args...))
	}
	args := append([]string{"netns", "exec", ns, bin, "--artifacts", artifacts, "--machines", machines,
		"--listen-http", netbootServerIP + ":8080", "--tftp", netbootServerIP + ":69", "--interface", "nb0"}, flags...)
	n := &netbootd{done: make(chan struct{})}
	n.cmd = exec.Command("ip", args...)
	n.cmd.Stdout, n.cmd.Stderr = n, n
	must(t, n.cmd.Start())
	go func() { n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		n.cmd.Process.Kill()
		<-n.done
		if t.Failed() {
			t.Logf("netbootd log:\n%s", n.Logs())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.waitLog(ctx, regexp.MustCompile(`msg="netboot server up"`)); err != nil {
		t.Fatal(err)
	}
	return n
}

// startPXEVM starts QEMU without -kernel: the firmware boots from the NIC.
// (StartVM always passes -kernel, so this builds the VM itself.)
func startPXEVM(t *testing.T, lab *Lab, mac string, uefi bool) *VM {
	t.Helper()
	nic, err := lab.Tap(mac)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ballast-vm-")
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{qmpPath: filepath.Join(dir, "qmp.sock"), dir: dir, changed: make(chan struct{}), exited: make(chan struct{})}
	args := []string{"netns", "exec", lab.Name, "qemu-system-x86_64",
		"-accel", *accelFlag, "-m", "1024", "-smp", "2", "-display", "none", "-monitor", "none", "-serial", "stdio",
		"-no-reboot", "-device", "virtio-rng-pci", "-qmp", "unix:" + vm.qmpPath + ",server=on,wait=off",
		"-boot", "order=n"}
	if uefi {
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		data, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS.fd")
		if err != nil {
			t.Skipf("OVMF not found (%v): apt-get install -y ovmf", err)
		}
		must(t, os.WriteFile(vars, data, 0o644))
		args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
			"-drive", "if=pflash,format=raw,file="+vars)
	}
	if uefi {
		// Without the NIC's option ROM (QEMU's efi-virtio.rom is iPXE) OVMF
		// boots with its own PXE, which is what real UEFI machines do.
		for i, a := range nic {
			if strings.HasPrefix(a, "virtio-net-pci,") {
				nic[i] = a + ",romfile="
			}
		}
	}
	args = append(args, nic...)
	vm.cmd = exec.Command("ip", args...)
	startConsoleVM(t, vm)
	return vm
}

// expectNetbootReady waits for the node's readiness line with only the
// address its per-MAC config gives, and for the server's log of each step.
func expectNetbootReady(t *testing.T, vm *VM, srv *netbootd, mac, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*bootTimeout)
	defer cancel()
	_, next, err := vm.Expect(ctx, regexp.MustCompile(`msg="machine config accepted" source=cmdline:http://`+netbootServerIP+`:8080/config/`+
		strings.ReplaceAll(mac, ":", "-")+` sha256=[0-9a-f]{64}`), 0)
	must(t, err)
	sm, _, err := vm.Expect(ctx, pxeSystemMountedRE, 0)
	must(t, err)
	t.Log(sm[0])
	m, _, err := vm.Expect(ctx, readiness.Pattern, next)
	must(t, err)
	if m[5] != addr+"/24" {
		t.Errorf("readiness addrs=%q, want only %s/24 from the per-MAC config", m[5], addr)
	}
	for _, step := range []string{`msg="boot script" mac=` + mac, `msg=artifact mac=` + mac + ` .*kind=kernel`,
		`msg=artifact mac=` + mac + ` .*kind=initrd`, `msg=artifact mac=` + mac + ` .*file=system.cpio kind=initrd`, `msg="config served" mac=` + mac + ` .*enforced=ip:`} {
		if _, err := srv.waitLog(ctx, regexp.MustCompile(step)); err != nil {
			t.Error(err)
		}
	}
}

func netbootLab(t *testing.T) *Lab {
	t.Helper()
	lab, err := NewLab("192.0.2.1", 24)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dnsmasq log:\n%s", lab.DHCPLog())
		}
		lab.Close()
	})
	return lab
}

func fullDHCPFlags() []string {
	// No --dns: nothing answers DNS in this lab, and the node probes the DNS servers it is given.
	return []string{"--dhcp-mode", "full", "--range", "192.0.2.100-192.0.2.150", "--router", "192.0.2.1"}
}

// TestNetbootBIOS: SeaBIOS with QEMU's iPXE NIC ROM, netbootd as the lab's
// only DHCP server.
func TestNetbootBIOS(t *testing.T) {
	lab := netbootLab(t)
	srv := startNetbootd(t, lab, "control-plane", fullDHCPFlags()...)
	vm := startPXEVM(t, lab, "52:54:00:00:00:31", false)
	expectNetbootReady(t, vm, srv, "52:54:00:00:00:31", "192.0.2.31")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	must(t, lab.Ping(ctx, "192.0.2.31"))
}

// TestNetbootUEFI: OVMF's PXE is not iPXE, so netbootd hands it ipxe.efi
// over TFTP first; that iPXE then gets the boot script URL.
func TestNetbootUEFI(t *testing.T) {
	lab := netbootLab(t)
	srv := startNetbootd(t, lab, "control-plane", fullDHCPFlags()...)
	vm := startPXEVM(t, lab, "52:54:00:00:00:32", true)
	expectNetbootReady(t, vm, srv, "52:54:00:00:00:32", "192.0.2.32")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	for _, step := range []string{`msg="tftp transfer done" mac=52:54:00:00:00:32 .*file=ipxe.efi`,
		`msg="boot script" mac=52:54:00:00:00:32 .*platform=efi`} {
		if _, err := srv.waitLog(ctx, regexp.MustCompile(step)); err != nil {
			t.Error(err)
		}
	}
}

// TestNetbootProxyDHCP: dnsmasq hands out the addresses, netbootd only the
// boot file (proxyDHCP); the node still gets its per-MAC config.
func TestNetbootProxyDHCP(t *testing.T) {
	lab := netbootLab(t)
	must(t, lab.DHCP("192.0.2.100", "192.0.2.150", "--dhcp-option=option:dns-server,192.0.2.1"))
	srv := startNetbootd(t, lab, "control-plane", "--dhcp-mode", "proxy")
	vm := startPXEVM(t, lab, "52:54:00:00:00:33", false)
	expectNetbootReady(t, vm, srv, "52:54:00:00:00:33", "192.0.2.33")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	if _, err := srv.waitLog(ctx, regexp.MustCompile(`msg="dhcp: proxy (OFFER|ACK)" mac=52:54:00:00:00:33 `)); err != nil {
		t.Error(err)
	}
	if !regexp.MustCompile(`DHCPACK\(br0\) 192\.0\.2\.1\d\d 52:54:00:00:00:33`).MatchString(lab.DHCPLog()) {
		t.Error("dnsmasq did not lease an address to the PXE client")
	}
	if strings.Contains(srv.Logs(), `msg="dhcp: offer"`) {
		t.Error("netbootd in proxy mode offered an address")
	}
}
