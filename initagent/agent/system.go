package agent

import (
	"context"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/boot"
)

// systemUpgrader returns what serves upgrades and system-slot rollbacks,
// or nil on nodes without system slots (netboot, live media).
func (a *Agent) systemUpgrader(cmdline boot.Cmdline) api.Upgrader { return nil }

// afterReady runs once the node is healthy (network committed, daemons
// up): it marks the running system slot good.
func (a *Agent) afterReady(ctx context.Context, cmdline boot.Cmdline) {}

// prepareSystem runs early at boot, after kernel modules load and before
// the network: it installs to disk when asked (ballast.install=), mounts
// the running system slot and STATE at /var (creating or growing it on
// first boot), or leaves /var on tmpfs on diskless nodes.
func (a *Agent) prepareSystem(ctx context.Context, cmdline boot.Cmdline) error { return nil }
