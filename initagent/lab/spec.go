package lab

import (
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/sysslot"
)

// allCapabilities lists the capabilities by number. A container node keeps
// all that its maker has (kind's and Talos's node containers run
// privileged): the agent mounts, configures links and routes, and its
// kubelet runs containers of its own.
var allCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
	"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
	"CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// SpecInput is what a node's OCI runtime spec is made of.
type SpecInput struct {
	Hostname string
	// Netns is the path of the node's network namespace (made by the lab,
	// holding eth0), e.g. /run/netns/ballast-lab-cp-1.
	Netns string
	// CgroupsPath is the node's cgroup under each hierarchy; with a cgroup
	// namespace the node sees it as its root, so each node's kubelet puts
	// its pods in its own subtree.
	CgroupsPath string
	// System is the host directory holding the system image's files
	// (mounted read-only where the agent expects its system image).
	System string
	// State is the host directory that is the node's STATE (/var); on a
	// filesystem where containerd's overlayfs snapshotter works (ext4).
	State string
	// NoFile is the open-files limit (soft and hard) of the node; it cannot
	// exceed the caller's hard limit. Zero leaves runc's default.
	NoFile uint64
	// Capabilities the node keeps; nil means all of allCapabilities. A
	// node cannot have what its maker lacks (see BoundingCapabilities).
	Capabilities []string
}

// BoundingCapabilities are the capabilities in bounding, a CapBnd mask
// from /proc/self/status.
func BoundingCapabilities(bounding uint64) []string {
	var caps []string
	for i, name := range allCapabilities {
		if bounding&(1<<i) != 0 {
			caps = append(caps, name)
		}
	}
	return caps
}

// ContainerSpec is the OCI runtime spec (config.json) of a container node:
// the agent as PID 1 of its own PID, mount, UTS, IPC, network and cgroup
// namespaces on the host's kernel, with the rootfs in the bundle's rootfs/.
func ContainerSpec(in SpecInput) *specs.Spec {
	const (
		nosuid, nodev, noexec = "nosuid", "nodev", "noexec"
	)
	caps := append([]string(nil), allCapabilities...)
	if in.Capabilities != nil {
		caps = append([]string(nil), in.Capabilities...)
	}
	fileMode := func(m os.FileMode) *os.FileMode { return &m }
	var zero uint32
	spec := &specs.Spec{
		Version:  specs.Version,
		Hostname: in.Hostname,
		Root:     &specs.Root{Path: "rootfs"},
		Process: &specs.Process{
			Args: []string{"/init"},
			Env: []string{
				boot.ContainerEnv + "=" + boot.ContainerValue,
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			},
			Cwd:  "/",
			User: specs.User{UID: 0, GID: 0},
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{nosuid, noexec, nodev}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{nosuid, noexec, nodev, "rw"}},
			// With the cgroup namespace runc mounts each v1 hierarchy (or
			// cgroup2) rooted at the node's own cgroup, writable.
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{nosuid, noexec, nodev, "relatime", "rw"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{nosuid, "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{nosuid, noexec, "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{nosuid, noexec, nodev, "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{nosuid, noexec, nodev}},
			// /run is mounted here (not by the agent) so the system image
			// mounted below it stays visible.
			{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{nosuid, nodev, "mode=755"}},
			{Destination: "/" + sysslot.SystemMount, Type: "bind", Source: in.System, Options: []string{"rbind", "ro", nosuid, nodev}},
			{Destination: "/var", Type: "bind", Source: in.State, Options: []string{"rbind", "rw"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{nosuid, nodev, "mode=1777"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: in.Netns},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.CgroupNamespace},
			},
			CgroupsPath: in.CgroupsPath,
			Resources: &specs.LinuxResources{
				// Every device: the node's own runc applies its pods' rules below this.
				Devices: []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}},
			},
			Devices: []specs.LinuxDevice{
				// kubelet's OOM watcher reads the kernel log.
				{Path: "/dev/kmsg", Type: "c", Major: 1, Minor: 11, FileMode: fileMode(0o600), UID: &zero, GID: &zero},
				{Path: "/dev/net/tun", Type: "c", Major: 10, Minor: 200, FileMode: fileMode(0o666), UID: &zero, GID: &zero},
			},
			// Mounts the node makes (containerd's overlays, pod volumes)
			// stay in its mount namespace; the host's reach it.
			RootfsPropagation: "rslave",
		},
	}
	if in.NoFile > 0 {
		// containerd, kubelet and etcd hold many files and watches open.
		spec.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: in.NoFile, Soft: in.NoFile}}
	}
	return spec
}

// bundleRootfs is the rootfs directory of a bundle.
func bundleRootfs(bundle string) string { return filepath.Join(bundle, "rootfs") }
