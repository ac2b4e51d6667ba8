package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/coldplug"
	"github.com/ballast-os/ballast/initagent/pid1"
)

// coldplugWait bounds how long boot waits for the drivers of the devices
// present; a driver stuck in its probe must not hold the node off the network.
const coldplugWait = 30 * time.Second

// startColdplug starts loading the drivers the hardware present needs (and,
// for devices that appear later, keeps loading them). The returned function
// waits until the devices present at boot have their drivers or
// coldplugWait has passed.
func (a *Agent) startColdplug(ctx context.Context, info *boot.ImageInfo) (wait func()) {
	if len(info.Drivers) == 0 {
		return func() {}
	}
	l := &coldplug.Loader{Dir: filepath.Join(a.Root, "lib/modules", info.KernelRelease), Drivers: info.Drivers, Boot: info.Modules,
		Sys: filepath.Join(a.Root, "sys"), Kmsg: filepath.Join(a.Root, "dev/kmsg"), Log: a.Log.With("part", "coldplug")}
	if data, err := os.ReadFile(filepath.Join(a.Root, boot.FirmwareInfoPath)); err == nil {
		if err := json.Unmarshal(data, &l.Firmware); err != nil {
			a.Log.Warn("firmware description unreadable", "path", boot.FirmwareInfoPath, "err", err)
		}
	}
	a.hardware = l
	a.sup.Start(ctx, pid1.Daemon{Name: "coldplug", Run: l.Run})
	started := time.Now()
	return func() {
		select {
		case <-l.Ready():
		case <-time.After(coldplugWait - time.Since(started)):
			a.Log.Error("drivers for the devices present still loading, booting on", "waited", coldplugWait)
		case <-ctx.Done():
		}
	}
}

// readCPU logs the processors and their microcode revision (the updated
// one when the kernel applied the image's early microcode) and frees the
// RAM the early microcode files hold in rootfs.
func (a *Agent) readCPU() {
	var early []string
	if !a.Container {
		var err error
		if early, err = boot.DropEarlyMicrocode(a.Root); err != nil {
			a.Log.Warn("early microcode files left in rootfs", "err", err)
		}
	}
	cpu, err := boot.ReadCPU(filepath.Join(a.Root, "proc/cpuinfo"))
	if err != nil {
		a.Log.Warn("cpu description unreadable", "err", err)
		return
	}
	cpu.EarlyMicrocode = early
	a.cpu = &cpu
	a.Log.Info("cpu", "vendor", cpu.Vendor, "model", cpu.Model, "signature", cpu.Signature,
		"microcode", cpu.Microcode, "count", cpu.Count, "earlyMicrocode", early)
}
