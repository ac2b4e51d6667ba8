package agent

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/pid1"
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
	if m := a.systemSlots(cmdline); m != nil {
		return upgrader{m}
	}
	return nil
}

// systemSlots is the manager of the system slots this boot came from, nil
// on nodes without them.
func (a *Agent) systemSlots(cmdline boot.Cmdline) *sysslot.Manager {
	if a.system != nil {
		return a.system
	}
	s := runningSlot(cmdline)
	if s == "" {
		return nil
	}
	m, _, err := sysslot.Node{Root: a.Root, Log: a.Log.With("part", "sysslot")}.Open(s)
	if err != nil {
		a.Log.Error("system slots unavailable: upgrades disabled, the running slot is not marked good", "slot", s, "err", err)
		return nil
	}
	a.system = m
	return m
}

// upgrader adapts sysslot.Manager to the API.
type upgrader struct{ m *sysslot.Manager }

func (u upgrader) Upgrade(ctx context.Context, image io.Reader, sum string) (string, error) {
	return u.m.Upgrade(ctx, image, sum)
}

func (u upgrader) Rollback(ctx context.Context) (string, error) { return u.m.Rollback() }

// Status reports both system slots (for the API's status sections).
func (u upgrader) Status() sysslot.Status { return u.m.Status() }

// armBlessing runs early at boot on a node booted from a system slot: a
// slot on trial gets its deadline (see blessing), a good one is reported.
func (a *Agent) armBlessing(ctx context.Context, cmdline boot.Cmdline, requests chan<- pid1.Request) {
	m := a.systemSlots(cmdline)
	if m == nil {
		return
	}
	b := &blessing{
		Log: a.Log.With("part", "sysslot"), Slots: m, Daemons: a.sup.Status, Clock: wallClock{},
		Settle:   durationParam(cmdline, BlessSettleParam, defaultBlessSettle, a.Log),
		Deadline: durationParam(cmdline, BlessDeadlineParam, defaultBlessDeadline, a.Log),
		Reboot: func(reason string) {
			select {
			case requests <- pid1.Request{Action: pid1.Reboot, Reason: reason}:
			default:
				a.Log.Warn("a power request is already pending; not asking for the reboot", "reason", reason)
			}
		},
	}
	if running, _, _ := b.slots(); running.State == "good" {
		return // nothing to judge: the slots are reported once ready
	}
	if onTrial, desc := b.trial(); onTrial {
		a.Log.Info("system slot on trial", "slots", desc, "settle", b.Settle, "deadline", b.Deadline)
		go b.watch(ctx)
	} else {
		a.Log.Info("system slot not good and nothing to fall back to: judged, but not rebooted when unhealthy", "slots", desc)
	}
	a.bless = b
}

// afterReady runs once the node reported ready: on a system slot that is
// not yet good it starts judging the boot (network committed, probes,
// daemons steady; see blessing), on a good one it reports the slots; on live
// media booted with ballast.install= it installs to disk and reboots into it.
func (a *Agent) afterReady(ctx context.Context, cmdline boot.Cmdline, net bootNetwork) {
	if target, ok := cmdline.Get(installParam); ok {
		if err := a.needFilesystems(ctx, "iso9660", "vfat", "ext4", "squashfs"); err != nil {
			a.Log.Warn("install: filesystem modules", "err", err)
		}
		a.install(ctx, cmdline, target)
		return
	}
	m := a.systemSlots(cmdline)
	if m == nil {
		return
	}
	if b := a.bless; b != nil {
		b.Network = net.verdict
		if cfg := net.Running; cfg != nil && a.txn != nil {
			probes := a.txn.Probes
			b.Probe = func(ctx context.Context) error { return probeConfig(ctx, probes, cfg) }
		}
		go b.judge(ctx)
		return
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
	if a.Container {
		a.containerSystem()
		return nil
	}
	s := runningSlot(cmdline)
	if s == "" {
		source := "/" + sysslot.NetbootSystemImage
		if _, err := os.Stat(filepath.Join(a.Root, source)); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err := a.needFilesystems(ctx, "squashfs"); err != nil {
			a.Log.Warn("system image: filesystem modules", "err", err)
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
	if err := a.needFilesystems(ctx, "vfat", "ext4", "squashfs"); err != nil {
		a.Log.Warn("system slots: filesystem modules", "err", err)
	}
	node := sysslot.Node{Root: a.Root, Log: a.Log.With("part", "sysslot")}
	m, err := node.Prepare(s)
	// The boot disk may sit behind a bus that is still being enumerated
	// (USB, a SAS expander): wait for it as the kernel's rootwait does.
	if errors.Is(err, sysslot.ErrNoDisk) {
		a.Log.Info("waiting for the boot disk", "slot", s, "upTo", bootDiskWait)
	}
	for deadline := time.Now().Add(bootDiskWait); errors.Is(err, sysslot.ErrNoDisk) && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		m, err = node.Prepare(s)
	}
	if err == nil {
		a.system = m
		// A BIOS boot went through GRUB, which counted the tries in its
		// environment block; a UEFI boot leaves it alone.
		if _, err := m.ReconcileGrub(); err != nil {
			a.Log.Error("boot counting: GRUB's spent tries not folded into the entries", "err", err)
		}
	}
	return err
}

// bootDiskWait bounds the wait for the disk a slot booted from.
const bootDiskWait = 30 * time.Second
