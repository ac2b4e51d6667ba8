package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/ballast-os/ballast/initagent/config/source"
)

// Memory and CPUs of a QEMU node. Under TCG one control plane is Ready in
// about 4 minutes with 2 vCPUs; three at once on 2 cores never were.
const (
	vmControlPlaneMiB = 3072
	vmWorkerMiB       = 1536
	vmDiskBytes       = 8 << 30
)

func vmMemoryMiB(n Node) int {
	if n.Role == RoleControlPlane {
		return vmControlPlaneMiB
	}
	return vmWorkerMiB
}

// has reports whether any node is made by provisioner p.
func (s *State) has(p string) bool {
	for _, n := range s.Nodes {
		if n.Provisioner == p {
			return true
		}
	}
	return false
}

func (s *State) preflightQEMU() error {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return errors.New("the qemu provisioner needs qemu-system-x86_64: apt-get install qemu-system-x86 (tools/deps.sh test installs it)")
	}
	for what, path := range map[string]string{"kernel": s.VM.Kernel, "initramfs": s.VM.Initramfs, "raw disk image": s.VM.Disk} {
		if path == "" {
			return fmt.Errorf("no %s for the QEMU nodes: build the image (`make image`) and pass --artifacts out/control-plane", what)
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("QEMU nodes' %s: %w; build the image (`make image`)", what, err)
		}
	}
	if s.VMAccel == "kvm" {
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return fmt.Errorf("--vm-accel kvm: %w", err)
		}
	}
	return nil
}

func (s *State) vmDisk(n Node) string    { return filepath.Join(s.nodeDir(n), "disk.raw") }
func (s *State) vmInitrd(n Node) string  { return filepath.Join(s.nodeDir(n), "initrd.img") }
func (s *State) vmPIDFile(n Node) string { return filepath.Join(s.nodeDir(n), "qemu.pid") }

// makeVM prepares a QEMU node: its tap on the bridge, its own copy of the
// raw disk (sparse, grown to 8 GiB: STATE takes the rest at first boot) and
// its initrd, the image's initramfs with a second archive appended that
// holds the machine config (the kernel unpacks both; the agent reads the
// config from the embedded path, as on a container node).
func (s *State) makeVM(n Node, sec Secrets, cred NodeCredentials) error {
	if err := os.MkdirAll(s.nodeDir(n), 0o755); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"tuntap", "add", n.HostVeth, "mode", "tap"},
		{"link", "set", n.HostVeth, "master", s.Bridge},
		{"link", "set", n.HostVeth, "up"},
	} {
		if err := run("ip", args...); err != nil {
			return err
		}
	}
	mc, err := MachineConfig(s, n, sec, cred)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.nodeDir(n), "machine-config.yaml"), mc, 0o600); err != nil {
		return err
	}
	if err := run("cp", "--sparse=always", s.VM.Disk, s.vmDisk(n)); err != nil {
		return err
	}
	if err := os.Truncate(s.vmDisk(n), vmDiskBytes); err != nil {
		return err
	}
	return writeInitrdWithConfig(s.VM.Initramfs, s.vmInitrd(n), mc)
}

// writeInitrdWithConfig copies initramfs to out and appends a newc archive
// with the machine config at source.EmbeddedPath.
func writeInitrdWithConfig(initramfs, out string, config []byte) error {
	in, err := os.Open(initramfs)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := os.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := io.Copy(f, in)
	if err != nil {
		return err
	}
	// The kernel skips zeroes between concatenated archives; start on a
	// 512-byte boundary.
	if pad := (512 - size%512) % 512; pad > 0 {
		if _, err := f.Write(make([]byte, pad)); err != nil {
			return err
		}
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	rel := strings.TrimPrefix(source.EmbeddedPath, "/")
	// WriteRecordsAndDirs adds the parent directories.
	if err := cpio.WriteRecordsAndDirs(w, []cpio.Record{cpio.StaticFile(rel, string(config), 0o600)}); err != nil {
		return err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return err
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return err
	}
	return f.Close()
}

// startVM boots a QEMU node in the background: serial console appended to
// the node's console log, QEMU's pid in qemu.pid.
func (s *State) startVM(n Node) error {
	if st, _ := s.vmState(n); st == "running" {
		return fmt.Errorf("node %s is running already", n.Name)
	}
	cpus := 1
	if n.Role == RoleControlPlane {
		cpus = 2
	}
	console := s.ConsoleLog(n)
	f, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "--- lab: starting VM %s at %s\n", n.Name, time.Now().UTC().Format(time.RFC3339))
	f.Close()
	args := []string{
		"-name", n.Container, "-accel", s.VMAccel, "-cpu", "max", "-m", strconv.Itoa(vmMemoryMiB(n)), "-smp", strconv.Itoa(cpus),
		"-display", "none", "-monitor", "none", "-no-reboot",
		"-chardev", "file,id=console,path=" + console + ",append=on", "-serial", "chardev:console",
		"-device", "virtio-rng-pci",
		"-kernel", s.VM.Kernel, "-initrd", s.vmInitrd(n),
		"-append", "console=ttyS0,115200 ballast.slot=a ballast.hostname=" + n.Name,
		"-netdev", "tap,id=n0,ifname=" + n.HostVeth + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + macFor(s.Name, n.Name).String(),
		"-drive", "if=virtio,format=raw,file=" + s.vmDisk(n),
		"-daemonize", "-pidfile", s.vmPIDFile(n),
	}
	if out, err := exec.Command("qemu-system-x86_64", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu %s: %w: %s", n.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// vmState is "running" while the node's QEMU runs, "stopped" after, ""
// when it never started.
func (s *State) vmState(n Node) (string, int) {
	data, err := os.ReadFile(s.vmPIDFile(n))
	if err != nil {
		return "", 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return "", 0
	}
	if !Running(pid) || !isQEMU(pid) {
		return "stopped", 0
	}
	return "running", pid
}

func isQEMU(pid int) bool {
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(comm)), "qemu")
}

// stopVM is a power cut: QEMU gets SIGKILL.
func (s *State) stopVM(n Node) error {
	st, pid := s.vmState(n)
	if st != "running" {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	if !waitExited(pid, 30*time.Second) {
		return fmt.Errorf("VM %s: QEMU (pid %d) still runs after SIGKILL", n.Name, pid)
	}
	return nil
}
