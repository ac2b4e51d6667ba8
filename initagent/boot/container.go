package boot

import (
	"fmt"
	"os"
)

// A container node runs the agent as PID 1 of a container on the host's
// kernel (nodectl lab --provisioner container), the way kind and Talos's
// docker provisioner run nodes. The runtime marks it with the environment
// variable systemd reads for the same purpose (container=<manager>).
const (
	ContainerEnv   = "container"
	ContainerValue = "ballast"
	// ContainerCmdline holds the kernel cmdline keys of a container node,
	// whose /proc/cmdline is the host's.
	ContainerCmdline = "/etc/ballast/cmdline"
)

// InContainer reports whether the agent runs as a container node.
func InContainer() bool { return os.Getenv(ContainerEnv) == ContainerValue }

// ReadCmdlineFile reads cmdline keys from a file (a container node's
// ContainerCmdline); a missing file is an empty cmdline.
func ReadCmdlineFile(path string) (Cmdline, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return Cmdline{}, nil
	}
	if err != nil {
		return Cmdline{}, fmt.Errorf("read container cmdline: %w", err)
	}
	return ParseCmdline(string(data)), nil
}
