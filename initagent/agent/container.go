package agent

import (
	"path/filepath"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/runtime"
	"github.com/ballast-os/ballast/initagent/sysslot"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// A container node (Agent.Container) shares the host's kernel. What it
// cannot have is replaced by the nearest equivalent, each logged once:
//   - kernel cmdline: the keys come from boot.ContainerCmdline (the host's
//     /proc/cmdline is not the node's);
//   - kernel modules: none loaded, the host's kernel provides them;
//   - disk: STATE is a host directory the runtime mounts at /var; the
//     config slots are files on it instead of CONFIG-A/B partitions;
//     block devices are not scanned for config drives (they are the host's);
//   - system slots: the system image is mounted read-only at its usual
//     place by the runtime, so there are no upgrades or slot rollbacks;
//   - power: no power button; reboot and poweroff end the container
//     (reboot(2) in a PID namespace), the lab starts it again on reboot.

// containerConfigDir keeps a container node's config slots on STATE.
const containerConfigDir = "var/lib/ballast/config-slots"

func (a *Agent) readCmdline() (boot.Cmdline, error) {
	if !a.Container {
		return boot.ReadCmdline()
	}
	path := filepath.Join(a.Root, boot.ContainerCmdline)
	a.Log.Info("container node: kernel cmdline keys from a file, /proc/cmdline is the host's", "file", boot.ContainerCmdline)
	return boot.ReadCmdlineFile(path)
}

// containerConfigStore keeps the config slots in files on STATE: they
// survive a restart of the container as the partitions survive a reboot.
func (a *Agent) containerConfigStore() slot.Store {
	dir := filepath.Join(a.Root, containerConfigDir)
	store, err := slot.NewDir(dir)
	if err != nil {
		a.Log.Error("container node: config slots", "dir", "/"+containerConfigDir, "err", err)
		return store
	}
	a.Log.Info("container node: config slots are files on STATE, not partitions", "dir", "/"+containerConfigDir)
	return store
}

// containerSystem reports the system image the runtime mounted.
func (a *Agent) containerSystem() {
	at := filepath.Join(a.Root, sysslot.SystemMount)
	if role, version, ok := runtime.ReadPayload(at); ok {
		a.Log.Info("container node: system image mounted read-only by the runtime, no system slots or upgrades",
			"at", "/"+sysslot.SystemMount, "role", role, "kubernetes", version)
		return
	}
	a.Log.Warn("container node: no system image at its mount point, the node runs networking only",
		"at", "/"+sysslot.SystemMount)
}

// configDriveCandidates is nil (scan every block device) on a machine and
// empty on a container node, whose block devices are the host's.
func (a *Agent) configDriveCandidates() []string {
	if a.Container {
		return []string{}
	}
	return nil
}
