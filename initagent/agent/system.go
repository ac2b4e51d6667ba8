package agent

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/sysslot"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// Kernel command line keys of the system slots and the installer.
const (
	installParam     = "ballast.install"      // =DEVICE: install the live medium's image there
	installWipeParam = "ballast.install.wipe" // =true: install over a disk that holds partitions
)

// runningSlot is the system slot this boot came from, "" when the node
// booted from the network or live media.
func runningSlot(cmdline boot.Cmdline) string {
	s, _ := cmdline.Get(sysslot.SlotParam)
	return s
}

// systemUpgrader returns what serves upgrades and system-slot rollbacks,
// or nil on nodes without system slots (netboot, live media).
func (a *Agent) systemUpgrader(cmdline boot.Cmdline) api.Upgrader {
	s := runningSlot(cmdline)
	if s == "" {
		return nil
	}
	m, _, err := sysslot.Node{Root: a.Root, Log: a.Log.With("part", "sysslot")}.Open(s)
	if err != nil {
		a.Log.Error("system slots unavailable: upgrades disabled", "err", err)
		return nil
	}
	return upgrader{m}
}

// upgrader adapts sysslot.Manager to the API.
type upgrader struct{ m *sysslot.Manager }

func (u upgrader) Upgrade(ctx context.Context, image io.Reader, sum string) (string, error) {
	return u.m.Upgrade(ctx, image, sum)
}

func (u upgrader) Rollback(ctx context.Context) (string, error) { return u.m.Rollback() }

// Status reports both system slots (for the API's status sections).
func (u upgrader) Status() sysslot.Status { return u.m.Status() }

// afterReady runs once the node is healthy (network committed, daemons
// up): it marks the running system slot good, or, on live media booted with
// ballast.install=, installs to disk and reboots into it.
func (a *Agent) afterReady(ctx context.Context, cmdline boot.Cmdline) {
	if target, ok := cmdline.Get(installParam); ok {
		a.install(ctx, cmdline, target)
		return
	}
	s := runningSlot(cmdline)
	if s == "" {
		return
	}
	m, _, err := sysslot.Node{Root: a.Root, Log: a.Log.With("part", "sysslot")}.Open(s)
	if err != nil {
		a.Log.Error("system slot not marked good", "slot", s, "err", err)
		return
	}
	if _, err := m.Bless(); err != nil {
		a.Log.Error("system slot not marked good", "slot", s, "err", err)
	}
	st := m.Status()
	a.Log.Info("system slots", "running", st.Running, "default", st.Default, "message", st.Message)
}

// install writes the live medium's disk image to target with the config
// this live node runs, then reboots.
func (a *Agent) install(ctx context.Context, cmdline boot.Cmdline, target string) {
	wipe, _ := cmdline.Get(installWipeParam)
	var cfg []byte
	if a.txn != nil {
		if _, data, err := slot.Active(a.txn.Store); err == nil {
			cfg = data
		} else if !errors.Is(err, slot.ErrNoSlot) {
			a.Log.Error("install: no machine config to carry over", "err", err)
		}
	}
	in := sysslot.Installer{Root: a.Root, Log: a.Log.With("part", "install")}
	if err := in.Install(ctx, sysslot.InstallOptions{Target: target, Wipe: wipe == "true", Config: cfg}); err != nil {
		a.Log.Error("install failed; the live system keeps running", "target", target, "err", err)
		return
	}
	a.Log.Info("install complete, rebooting into the disk", "target", target)
	// The reboot goes through the normal shutdown path (daemons stop first).
	_ = unix.Kill(os.Getpid(), unix.SIGINT)
}

// prepareSystem runs early at boot, after kernel modules load and before
// the network: on a node booted from a system slot it mounts the ESP, the
// slot's system image and STATE at /var (growing it on first boot); on
// diskless nodes and live media /var stays on tmpfs, and a PXE or
// direct-kernel boot that brought /system.sqfs (imgbuild's system.cpio
// initrd) gets it loop-mounted at /run/ballast/system.
func (a *Agent) prepareSystem(ctx context.Context, cmdline boot.Cmdline) error {
	s := runningSlot(cmdline)
	if s == "" {
		source := "/" + sysslot.NetbootSystemImage
		if _, err := os.Stat(filepath.Join(a.Root, source)); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		dev, err := sysslot.Node{Root: a.Root, Log: a.Log.With("part", "sysslot")}.MountSystemImage(source)
		if err != nil {
			a.Log.Error("system image not mounted: the node runs without its system image (containerd, kubelet); "+
				"check that the recipe's kernel.modules has loop and squashfs and that the boot loads imgbuild's system.cpio unchanged",
				"source", source, "at", "/"+sysslot.SystemMount, "err", err)
			return nil
		}
		a.Log.Info("system image mounted", "source", source, "device", dev, "at", "/"+sysslot.SystemMount)
		return nil
	}
	_, err := sysslot.Node{Root: a.Root, Log: a.Log.With("part", "sysslot")}.Prepare(s)
	return err
}
