package qemutests

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/disk"
	"github.com/ballast-os/ballast/initagent/agent"
	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
	"github.com/ballast-os/ballast/initagent/txn"
)

// upgradeWithCmdline writes an upgrade image of the built recipe's kernel,
// initramfs and system image whose boot entry has cmdline.
func upgradeWithCmdline(t *testing.T, dir, dst, title string, cmdline []string) {
	t.Helper()
	out, err := os.Create(dst)
	must(t, err)
	defer out.Close()
	must(t, disk.WriteUpgrade(out, disk.UpgradeSpec{
		Recipe: "control-plane", Title: title, Cmdline: cmdline,
		Kernel: filepath.Join(dir, image.KernelFile), Initramfs: filepath.Join(dir, image.InitramfsFile), System: filepath.Join(dir, image.SystemFile),
	}))
}

// TestDiskUpgradeWithoutNetworkFallsBack: a new system slot that boots
// but cannot bring up the node's committed network (its entry keeps the
// kernel from loading the NIC driver, as a kernel without the driver
// would) is never marked good: every trial boot reboots by itself, and
// once systemd-boot has spent the slot's three tries the old slot boots
// again, with its network, and names the failed slot. The same upgrade
// with the driver is marked good once its network is committed and the
// daemons stayed up through the settle period. Under OVMF systemd-boot
// counts the tries, under SeaBIOS GRUB does.
func TestDiskUpgradeWithoutNetworkFallsBack(t *testing.T) {
	t.Run("uefi", func(t *testing.T) { upgradeWithoutNetworkFallsBack(t, true) })
	t.Run("bios", func(t *testing.T) { upgradeWithoutNetworkFallsBack(t, false) })
}

func upgradeWithoutNetworkFallsBack(t *testing.T, uefi bool) {
	dir := buildDiskRecipe(t)
	tmp := t.TempDir()
	d := filepath.Join(tmp, "disk.raw")
	sparseCopy(t, filepath.Join(dir, image.RawFile("control-plane")), d, 0)
	var vars string
	if uefi {
		vars = filepath.Join(tmp, "vars.fd")
		must(t, copyFile(ovmfVars, vars))
	}
	r, err := image.LoadRecipe("control-plane")
	must(t, err)
	// Short settle and deadline: TCG boots are slow, and a hang would cost
	// the default 10 minutes three times.
	cmdline := append(append([]string{}, r.Cmdline...), agent.ConsoleAccessParam+"=rw",
		agent.BlessSettleParam+"=10s", agent.BlessDeadlineParam+"=3m")
	noNIC := filepath.Join(tmp, "no-nic.upgrade.tar")
	upgradeWithCmdline(t, dir, noNIC, "ballast without its NIC driver", append(cmdline, "module_blacklist=virtio_net"))
	good := filepath.Join(tmp, "good.upgrade.tar")
	upgradeWithCmdline(t, dir, good, "ballast", cmdline)

	sock := filepath.Join(tmp, "api.sock")
	vm := startFirmwareVM(t, firmwareVM{UEFI: uefi, Vars: vars, Reboot: true, Args: []string{
		"-drive", "if=virtio,format=raw,file=" + d,
		// QEMU's user network: its gateway 10.0.2.2 answers ARP.
		"-nic", "user,model=virtio-net-pci,mac=52:54:00:00:00:41",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=api,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=api,name=" + api.VirtioPortName,
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*diskBootTimeout)
	defer cancel()
	_, i := expectLine(t, vm, ctx, readiness.Pattern.String(), 0)
	c := apiClient(sock)

	// A static network, committed on slot A (probe: the gateway answers ARP).
	const static = `apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - name: eth0
      addresses: [10.0.2.20/24]
      routes:
        - {to: default, via: 10.0.2.2}
`
	code, ar := applyVia(t, c, static)
	if code != http.StatusOK || ar.Record.State != txn.Available {
		t.Fatalf("static network: HTTP %d %+v", code, ar)
	}

	code, out, err := upgradeVia(c, noNIC)
	must(t, err)
	if code != http.StatusOK || out["slot"] != "b" {
		t.Fatalf("upgrade: HTTP %d %v", code, out)
	}
	i = rebootVia(t, ctx, vm, sock, i)
	for try := 1; try <= 3; try++ {
		_, i = expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:b`, i)
		_, i = expectLine(t, vm, ctx, `msg="system slot on trial" .*slot b is (trying|bad)`, i)
		m, next := expectLine(t, vm, ctx, `msg="system slot not marked good: boot not healthy" .*slot=b why="([^"]*)"`, i)
		t.Logf("try %d of slot b: %s", try, m[1])
		_, i = expectLine(t, vm, ctx, `msg="rebooting to let the boot counter run out"`, next)
		_, i = expectLine(t, vm, ctx, `msg="powering down" action=reboot`, i)
	}
	_, i = expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:a`, i)
	m, i := expectLine(t, vm, ctx, readiness.Pattern.String(), i)
	if m[5] != "10.0.2.20/24" {
		t.Errorf("slot a came back with addrs=%q, want its committed 10.0.2.20/24", m[5])
	}
	_, i = expectLine(t, vm, ctx, `msg="system slots" .*running=a default=a message="slot b failed its 3 boot tries; running slot a"`, i)

	// The control: the same image with its NIC driver is marked good.
	c = apiClient(sock)
	code, out, err = upgradeVia(c, good)
	must(t, err)
	if code != http.StatusOK || out["slot"] != "b" {
		t.Fatalf("good upgrade: HTTP %d %v", code, out)
	}
	i = rebootVia(t, ctx, vm, sock, i)
	_, i = expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:b`, i)
	m, i = expectLine(t, vm, ctx, readiness.Pattern.String(), i)
	if m[5] != "10.0.2.20/24" {
		t.Errorf("slot b came up with addrs=%q, want the committed 10.0.2.20/24", m[5])
	}
	_, i = expectLine(t, vm, ctx, `msg="system slot marked good" .*slot=b entry=ballast-b.conf`, i)
	_, _ = expectLine(t, vm, ctx, `msg="system slots" .*running=b default=b`, i)
}
