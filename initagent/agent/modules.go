package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/boottime"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/sysslot"
)

// The image's boot modules load in the background (startModules); what
// needs one waits for that one. Readiness with DHCP on every NIC needs none:
// the drivers for the devices present come from coldplug, which goes first.

// startModules starts loading the image's boot modules and logs their
// summary once every one was tried.
func (a *Agent) startModules(ctx context.Context, info *boot.ImageInfo, order boot.ModuleOrder) {
	a.modules = boot.StartModules(filepath.Join(a.Root, "lib/modules", info.KernelRelease), info.Modules, order, a.Log)
	go func() {
		select {
		case <-a.modules.Done():
		case <-ctx.Done():
			return
		}
		res := a.modules.Result()
		a.Log.Info("kernel modules", "loaded", res.Loaded, "already", res.AlreadyLoaded,
			"failed", len(res.Failed), "took", res.Duration.Round(time.Millisecond))
		a.timeline.Mark(boottime.ModulesLoaded)
	}()
}

// mountsFirst are the modules behind what this boot mounts before it is
// ready: the system slots' filesystems on a disk boot, the system image
// on netboot. They load side by side with coldplug, the others after it.
func (a *Agent) mountsFirst(cmdline boot.Cmdline) []string {
	if runningSlot(cmdline) != "" {
		return slices.Concat(filesystemModules("vfat"), filesystemModules("ext4"), filesystemModules("squashfs"))
	}
	if _, err := os.Stat(filepath.Join(a.Root, sysslot.NetbootSystemImage)); err == nil {
		return filesystemModules("squashfs")
	}
	return nil
}

// needModules waits for the named boot modules; why says what for. A
// module that failed is logged where it failed: what needs it fails next
// and says so.
func (a *Agent) needModules(ctx context.Context, why string, names ...string) error {
	start := time.Now()
	err := a.modules.Wait(ctx, names...)
	if waited := time.Since(start); waited > time.Millisecond {
		a.Log.Debug("waited for kernel modules", "for", why, "modules", names, "waited", waited.Round(time.Millisecond))
	}
	return err
}

// needAllModules waits until every boot module was tried: Kubernetes,
// containerd and nftables rules use most of them.
func (a *Agent) needAllModules(ctx context.Context, why string) error {
	start := time.Now()
	err := a.modules.WaitAll(ctx)
	if waited := time.Since(start); waited > time.Millisecond {
		a.Log.Debug("waited for kernel modules", "for", why, "modules", "all", "waited", waited.Round(time.Millisecond))
	}
	return err
}

// filesystemModules are the modules behind a filesystem the agent mounts.
func filesystemModules(fstype string) []string {
	switch fstype {
	case "ext4":
		return []string{"ext4"}
	case "vfat":
		// The ESP is mounted with codepage 437 and iocharset ascii.
		return []string{"vfat", "nls_cp437", "nls_ascii", "nls_utf8"}
	case "iso9660":
		return []string{"isofs"}
	case "squashfs":
		return []string{"squashfs", "loop"}
	case "overlay":
		return []string{"overlay"}
	}
	return nil
}

func (a *Agent) needFilesystems(ctx context.Context, fstypes ...string) error {
	var names []string
	for _, t := range fstypes {
		names = append(names, filesystemModules(t)...)
	}
	return a.needModules(ctx, "mount", names...)
}

// linkKindModules are the modules behind a kind of virtual link.
func linkKindModules(kind string) []string {
	switch kind {
	case config.TypeBond:
		return []string{"bonding"}
	case config.TypeVLAN:
		return []string{"8021q"}
	case config.TypeBridge:
		return []string{"bridge"}
	case config.TypeDummy:
		return []string{"dummy"}
	}
	return nil
}

func (a *Agent) needLinkKinds(ctx context.Context, kinds []string) error {
	var names []string
	for _, k := range kinds {
		names = append(names, linkKindModules(k)...)
	}
	return a.needModules(ctx, "links", names...)
}
