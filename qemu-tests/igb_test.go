package qemutests

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ballast-os/ballast/image"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
	"github.com/ballast-os/ballast/kernel"
)

// backportsQEMU is the first QEMU with an igb model (8.0) that Debian 12
// has: bookworm-backports' build, unpacked into the cache and run from
// there, so every other test keeps the distribution's QEMU 7.2.
var backportsQEMU = kernel.DebPin{Package: "qemu-system-x86", Version: "1:10.0.2+ds-2+deb13u1~bpo12+1"}

const backportsSources = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main\n"

func fetchBackportsQEMU(t *testing.T) string {
	t.Helper()
	cache := filepath.Join(filepath.Dir(kernel.CacheDir()), "qemu-backports")
	dirs, err := kernel.FetchDebian(context.Background(), cache, backportsSources, []kernel.DebPin{backportsQEMU},
		slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatalf("QEMU from bookworm-backports (for its igb model): %v", err)
	}
	return filepath.Join(dirs[0], "usr/bin/qemu-system-x86_64")
}

// TestIGBNIC boots the worker image with an Intel 82576 (igb) as its only
// NIC, on the QEMU from bookworm-backports (QEMU 7.2 has no igb model):
// coldplug must load igb for it and the node must get its DHCP lease on it.
// (That QEMU prints warnings about the system's 7.2 modules, which it does
// not need for this machine.)
func TestIGBNIC(t *testing.T) {
	qemu := fetchBackportsQEMU(t)
	dir := buildRecipe(t, "worker")
	const mac, addr = "52:54:00:00:00:61", "192.0.2.161"
	lab := dhcpLab(t, mac, addr)
	nic, err := lab.TapNIC("igb", mac)
	must(t, err)
	r, err := image.LoadRecipe("worker")
	must(t, err)
	vm, err := StartVM(VMOptions{
		QEMU: qemu, Kernel: filepath.Join(dir, image.KernelFile), Initrd: filepath.Join(dir, image.InitramfsFile),
		Accel: *accelFlag, Netns: lab.Name, NoVirtio: true, MemoryMiB: 1024,
		Args:    append([]string{"-cpu", "max"}, nic...),
		Cmdline: append([]string{}, r.Cmdline...),
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
	if _, _, err := vm.Expect(ctx, regexp.MustCompile(`msg="device driver" part=coldplug .*modules=\[igb\]`), 0); err != nil {
		t.Fatalf("no igb binding: %v", err)
	}
	m, _, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	if !strings.Contains(m[5], addr+"/24") {
		t.Fatalf("readiness addrs=%q, want the DHCP lease %s/24 on the igb NIC", m[5], addr)
	}
	if !strings.Contains(lab.DHCPLog(), "DHCPACK(br0) "+addr+" "+mac) {
		t.Errorf("dnsmasq did not log the ACK for %s to the igb NIC", addr)
	}
}
