package qemutests

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/image/disk"
	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/coldplug"
	"github.com/ballast-os/ballast/initagent/disks"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
)

// hardwareStatus is the part of /v1/status this file reads.
type hardwareStatus struct {
	Hardware coldplug.Status `json:"hardware"`
	Disks    []disks.Disk    `json:"disks"`
	CPU      *boot.CPU       `json:"cpu"`
}

// dhcpLab is a lab bridge (192.0.2.0/24) whose dnsmasq leases addr to mac;
// a failed test shows dnsmasq's log.
func dhcpLab(t *testing.T, mac, addr string) *Lab {
	t.Helper()
	lab, err := NewLab("192.0.2.1", 24)
	must(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dnsmasq log:\n%s", lab.DHCPLog())
		}
		lab.Close()
	})
	must(t, lab.DHCP("192.0.2.100", "192.0.2.150", "--dhcp-host="+mac+","+addr))
	return lab
}

// TestRealHardwareDrivers boots the worker image (Debian's generic kernel)
// on a machine with emulated real hardware and no virtio device at all: an
// e1000e and an e1000 NIC, an ICH9 AHCI controller with a SATA disk, an
// NVMe disk, and a qemu-xhci controller with a USB stick. Coldplug must load
// each controller's driver for the device that needs it (and sd_mod for the
// disks behind them), DHCP must work on the e1000e (selected by MAC), both
// disks must be seen with their by-id names, and a USB NIC hot-plugged
// through the QEMU monitor afterwards must get its driver from a uevent.
// QEMU 7.2 (Debian 12) has no igb model, so the second NIC is an e1000.
func TestRealHardwareDrivers(t *testing.T) {
	dir := buildRecipe(t, "worker")
	const mac, addr = "52:54:00:00:00:41", "192.0.2.141"
	lab := dhcpLab(t, mac, addr)

	ca, caPair, err := pki.NewAuthority("lab CA", time.Hour)
	must(t, err)
	node, err := ca.Issue(pki.Request{CommonName: "hw-1", IPs: []net.IP{net.ParseIP(addr)}, Server: true})
	must(t, err)
	client, err := ca.Issue(pki.Request{CommonName: "ops", Client: true})
	must(t, err)
	doc := map[string]any{
		"apiVersion": "ballast.dev/v1alpha1", "kind": "MachineConfig",
		"network": map[string]any{"interfaces": []any{map[string]any{"name": "lan0", "mac": mac, "dhcp4": true}}},
		"api":     map[string]any{"tls": map[string]string{"certificate": string(node.CertPEM), "key": string(node.KeyPEM), "clientCA": string(caPair.CertPEM)}},
	}
	cfg, err := yaml.Marshal(doc)
	must(t, err)
	must(t, lab.Serve(8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(cfg) })))
	sum := sha256.Sum256(cfg)

	tmp := t.TempDir()
	disk := func(name string, size int64) string {
		p := filepath.Join(tmp, name)
		f, err := os.Create(p)
		must(t, err)
		must(t, f.Truncate(size))
		must(t, f.Close())
		return p
	}
	nic0, err := lab.TapNIC("e1000e", mac)
	must(t, err)
	nic1, err := lab.TapNIC("e1000", "52:54:00:00:00:42")
	must(t, err)
	// -cpu max: TCG's default CPU lacks RDRAND, which real servers have
	// (and the virtio RNG the other scenarios add is virtio).
	args := append(append([]string{"-cpu", "max"}, append(nic0, nic1...)...),
		"-device", "ich9-ahci,id=ahci",
		"-drive", "if=none,id=sata,format=raw,file="+disk("sata.raw", 256<<20), "-device", "ide-hd,drive=sata,bus=ahci.0,serial=ballast-sata-1",
		"-drive", "if=none,id=nvm,format=raw,file="+disk("nvme.raw", 256<<20), "-device", "nvme,drive=nvm,serial=ballast-nvme-1",
		"-device", "qemu-xhci,id=xhci",
		"-drive", "if=none,id=stick,format=raw,file="+disk("stick.raw", 64<<20), "-device", "usb-storage,bus=xhci.0,drive=stick",
	)
	r, err := image.LoadRecipe("worker")
	must(t, err)
	vm, err := StartVM(VMOptions{
		Kernel: filepath.Join(dir, image.KernelFile), Initrd: filepath.Join(dir, image.InitramfsFile), Accel: *accelFlag,
		Netns: lab.Name, NoVirtio: true, MemoryMiB: 1024, Args: args,
		Cmdline: append(append([]string{}, r.Cmdline...), "ballast.config=http://192.0.2.1:8080/node.yaml", "ballast.config.sha256="+hex.EncodeToString(sum[:])),
	})
	must(t, err)
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("last %d console lines:\n%s", consoleTail, vm.Tail(consoleTail))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*bootTimeout)
	defer cancel()
	m, _, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	if !strings.Contains(m[5], addr+"/24") {
		t.Fatalf("readiness addrs=%q, want the DHCP lease %s/24 on the e1000e", m[5], addr)
	}
	if !strings.Contains(lab.DHCPLog(), "DHCPACK(br0) "+addr+" "+mac) {
		t.Errorf("dnsmasq did not log the ACK for %s to the e1000e", addr)
	}
	if _, _, err := vm.Expect(ctx, regexp.MustCompile(`msg="node api serving mutual TLS" part=api addr=\[::\]:50000`), 0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`msg="device driver" part=coldplug .*modules=\[e1000e\]`, `msg="device driver" part=coldplug .*modules=\[ahci\]`,
		`msg=coldplug part=coldplug devices=\d+ modules=\d+`} {
		if _, _, err := vm.Expect(ctx, regexp.MustCompile(want), 0); err != nil {
			t.Errorf("console lacks %s", want)
		}
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPair.CertPEM)
	cert, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
	must(t, err)
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: lab.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}}}
	status := func() hardwareStatus {
		t.Helper()
		resp, err := c.Get("https://" + addr + ":50000/v1/status")
		must(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		must(t, err)
		var st struct {
			Sections hardwareStatus `json:"sections"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &st) != nil {
			t.Fatalf("status: %s\n%.2000s", resp.Status, body)
		}
		return st.Sections
	}
	// modulesOf says which modules were bound to devices of a subsystem.
	modulesOf := func(st hardwareStatus, subsystem, source string) []string {
		var mods []string
		for _, b := range st.Hardware.Bindings {
			if b.Subsystem == subsystem && (source == "" || b.Source == source) && b.Error == "" {
				mods = append(mods, b.Modules...)
			}
		}
		slices.Sort(mods)
		return slices.Compact(mods)
	}
	// USB enumerates after coldplug: wait for the stick.
	var st hardwareStatus
	haveTransports := func() bool {
		seen := map[string]bool{}
		for _, d := range st.Disks {
			seen[d.Transport] = true
		}
		return seen["ata"] && seen["nvme"] && seen["usb"]
	}
	for st = status(); !haveTransports() && ctx.Err() == nil; st = status() {
		time.Sleep(time.Second)
	}
	for _, b := range st.Hardware.Bindings {
		if b.Error != "" {
			t.Errorf("binding with an error: %+v", b)
		}
	}
	pci := modulesOf(st, "pci", "coldplug")
	for _, want := range []string{"ahci", "e1000", "e1000e", "nvme", "xhci_pci"} {
		if !slices.Contains(pci, want) {
			t.Errorf("PCI devices bound to %v: %s missing", pci, want)
		}
	}
	if slices.ContainsFunc(pci, func(m string) bool { return strings.HasPrefix(m, "virtio") }) {
		t.Errorf("virtio drivers bound on a machine without virtio: %v", pci)
	}
	if usb := modulesOf(st, "usb", ""); !slices.Contains(usb, "usb_storage") {
		t.Errorf("USB devices bound to %v: usb_storage missing", usb)
	}
	if scsi := modulesOf(st, "scsi", ""); !slices.Contains(scsi, "sd_mod") {
		t.Errorf("SCSI devices bound to %v: sd_mod missing", scsi)
	}
	var ids []string
	for _, d := range st.Disks {
		ids = append(ids, d.IDs...)
	}
	for _, want := range []string{"ata-QEMU_HARDDISK_ballast-sata-1", "nvme-QEMU_NVMe_Ctrl_ballast-nvme-1"} {
		if !slices.Contains(ids, want) {
			t.Errorf("disk ids %v: %s missing", ids, want)
		}
	}
	t.Logf("coldplug: %d ms, %d devices with a modalias, %d bindings; disks %v", st.Hardware.ColdplugMs, st.Hardware.Devices, len(st.Hardware.Bindings), ids)

	// The recipe's early microcode reached the kernel (QEMU cannot apply
	// a patch, so the revision stays QEMU's); the agent freed its copy.
	if c := st.CPU; c == nil || c.Vendor == "" || c.Count != 2 || !slices.Equal(c.EarlyMicrocode, []string{"AuthenticAMD.bin", "GenuineIntel.bin"}) {
		t.Errorf("status cpu = %+v, want the vendor, 2 CPUs and both vendors' early microcode", c)
	}

	// Hot-plug a USB NIC: its driver is not loaded yet, a uevent must bring it.
	must(t, vm.QMP(ctx, "netdev_add", map[string]any{"type": "user", "id": "hotnet"}))
	must(t, vm.QMP(ctx, "device_add", map[string]any{"driver": "usb-net", "bus": "xhci.0", "netdev": "hotnet", "id": "hotnic"}))
	var hot []string
	for ; ctx.Err() == nil; time.Sleep(time.Second) {
		st = status()
		if hot = modulesOf(st, "usb", "uevent"); slices.ContainsFunc(hot, func(m string) bool { return m == "cdc_ether" || m == "rndis_host" }) {
			break
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("hot-plugged USB NIC got no driver; bindings: %s", fmt.Sprint(st.Hardware.Bindings))
	}
	t.Logf("hot-plugged USB NIC bound to %v", hot)
}

// TestInstallOntoServerDisks installs the way a server is installed from a
// USB stick: the ISO on a usb-storage stick behind qemu-xhci, the install
// entry's kernel and cmdline. First with ballast.install=auto beside a
// SATA disk that holds a filesystem, so auto must pick the empty NVMe disk;
// the NVMe disk then boots alone under OVMF. Then onto an empty SATA disk
// named by its /dev/disk/by-id/ name, which boots alone under SeaBIOS
// (GRUB from the BIOS-BOOT partition; UEFI machines get systemd-boot).
func TestInstallOntoServerDisks(t *testing.T) {
	dir := buildDiskRecipe(t)
	iso := filepath.Join(dir, image.ISOFile("control-plane"))
	r, err := image.LoadRecipe("control-plane")
	must(t, err)
	tmp := t.TempDir()
	blank := func(name string, size int64) string {
		p := filepath.Join(tmp, name)
		f, err := os.Create(p)
		must(t, err)
		must(t, f.Truncate(size))
		must(t, f.Close())
		return p
	}
	used := blank("used-sata.raw", 256<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "data", used).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	nvme, sata := blank("nvme.raw", 3<<30), blank("sata.raw", 3<<30)
	stick := []string{"-device", "qemu-xhci,id=xhci", "-drive", "if=none,id=stick,format=raw,readonly=on,file=" + iso,
		"-device", "usb-storage,bus=xhci.0,drive=stick"}
	nvmeDev := []string{"-drive", "if=none,id=nvm,format=raw,file=" + nvme, "-device", "nvme,drive=nvm,serial=ballast-nvme-1"}
	sataDev := func(file, serial string, extra string) []string {
		return []string{"-device", "ich9-ahci,id=ahci", "-drive", "if=none,id=sata,format=raw,file=" + file,
			"-device", "ide-hd,drive=sata,bus=ahci.0,serial=" + serial + extra}
	}
	install := func(target string, disks ...[]string) *VM {
		args := append([]string{"-cpu", "max"}, stick...)
		for _, d := range disks {
			args = append(args, d...)
		}
		return startFirmwareVM(t, firmwareVM{
			Kernel: filepath.Join(dir, image.KernelFile), Initrd: filepath.Join(dir, image.InitramfsFile),
			Cmdline: append(append([]string{}, r.Cmdline...), disk.LiveParam, "ballast.install="+target), Args: args,
		})
	}
	finish := func(ctx context.Context, vm *VM, target string) {
		t.Helper()
		_, i := expectLine(t, vm, ctx, `msg="live medium" part=install device=/dev/sd`, 0)
		_, i = expectLine(t, vm, ctx, `msg="install target chosen" part=install target=`+regexp.QuoteMeta(target), i)
		_, i = expectLine(t, vm, ctx, `msg="image written and verified" .*target=`+regexp.QuoteMeta(target), i)
		expectLine(t, vm, ctx, `msg="install complete, rebooting into the disk"`, i)
		if err := vm.Wait(ctx); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatal(err)
			}
		}
	}
	bootsAlone := func(ctx context.Context, uefi bool, args []string) {
		t.Helper()
		vm := startFirmwareVM(t, firmwareVM{UEFI: uefi, Args: append([]string{"-cpu", "max"}, args...)})
		_, i := expectLine(t, vm, ctx, `msg="kernel cmdline" ballast="?map\[.*ballast.slot:a`, 0)
		expectLine(t, vm, ctx, `msg="STATE mounted"`, i)
		expectLine(t, vm, ctx, readiness.Pattern.String(), i)
		vm.Kill()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*diskBootTimeout)
	defer cancel()

	// auto: the SATA disk holds ext4 and the stick is the medium, so only the NVMe disk is empty.
	finish(ctx, install("auto", nvmeDev, sataDev(used, "ballast-data-1", "")), "/dev/nvme0n1")
	bootsAlone(ctx, true, []string{"-drive", "if=none,id=nvm,format=raw,file=" + nvme, "-device", "nvme,drive=nvm,serial=ballast-nvme-1,bootindex=0"})

	// by-id onto SATA, beside the NVMe disk that now holds an installation.
	const byID = "/dev/disk/by-id/ata-QEMU_HARDDISK_ballast-sata-1"
	vm := install(byID, nvmeDev, sataDev(sata, "ballast-sata-1", ""))
	expectLine(t, vm, ctx, `msg="install target resolved" part=install name=`+regexp.QuoteMeta(byID)+` device=/dev/sda`, 0)
	finish(ctx, vm, "/dev/sda")
	bootsAlone(ctx, false, sataDev(sata, "ballast-sata-1", ",bootindex=0"))
}

// TestConsolesAllGetTheImportantLines boots with the recipe's consoles
// (console=tty0 console=ttyS0: VGA and serial, serial being /dev/console)
// plus a virtio console (hvc0, its driver loaded by coldplug) standing in
// for VGA, which a test cannot read: /dev/console gets every line, the
// other console the readiness line and the warnings, not the routine lines.
// (Two serial ports cannot stand in: the 8250 driver runs one console.)
func TestConsolesAllGetTheImportantLines(t *testing.T) {
	dir := buildRecipe(t, "worker")
	other := filepath.Join(t.TempDir(), "hvc0.log")
	r, err := image.LoadRecipe("worker")
	must(t, err)
	vm, err := StartVM(VMOptions{Kernel: filepath.Join(dir, image.KernelFile), Initrd: filepath.Join(dir, image.InitramfsFile), Accel: *accelFlag,
		Args: []string{"-device", "virtio-serial-pci", "-chardev", "file,id=hvc,path=" + other, "-device", "virtconsole,chardev=hvc"},
		// A config URL nobody serves: the fetch retries are warnings.
		Cmdline: append(append([]string{"console=hvc0"}, r.Cmdline...), "ballast.config=http://192.0.2.1:9/none.yaml", "ballast.config.timeout=3s")})
	must(t, err)
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("last %d console lines:\n%s", consoleTail, vm.Tail(consoleTail))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	_, _, err = vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	for _, name := range []string{"tty0", "hvc0"} {
		if _, _, err := vm.Expect(ctx, regexp.MustCompile(`msg=consoles primary=/dev/console others="\[.*\b`+name+`\b.*\]"`), 0); err != nil {
			t.Errorf("console lacks the consoles line naming %s", name)
		}
	}
	must(t, vm.Powerdown(ctx))
	_ = vm.Wait(ctx)
	data, err := os.ReadFile(other)
	must(t, err)
	for _, want := range []string{"ballast: ready hostname=ballast-worker", `level=WARN msg="machine config fetch failed, will retry"`, "ballast: poweroff"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("hvc0 lacks %q; it got:\n%s", want, data)
		}
	}
	if strings.Contains(string(data), `level=INFO msg="nodeip decided"`) {
		t.Errorf("hvc0 got routine lines; want only the readiness line, warnings and errors:\n%s", data)
	}
}
