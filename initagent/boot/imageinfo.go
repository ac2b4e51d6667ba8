// Package boot brings up the early userspace of a ballast node: the
// essential mounts, kernel modules, the kernel command line and the
// hostname. Essential steps return errors; optional ones are logged and boot
// continues, so a node stays reachable for repair.
package boot

import (
	"encoding/json"
	"fmt"
	"os"
)

// ImageInfoPath is where imgbuild describes the image to the agent.
const ImageInfoPath = "/etc/ballast/image.json"

// ImageInfo is what imgbuild tells initagent about the image it runs in.
type ImageInfo struct {
	Recipe        string       `json:"recipe"`
	Role          string       `json:"role"`
	Hostname      string       `json:"hostname,omitempty"`
	KernelRelease string       `json:"kernelRelease"`
	Modules       []ModuleInfo `json:"modules"` // in an order where dependencies come first
	// Drivers are loaded when a device needs them (coldplug): the recipe's
	// driver classes and the modules they depend on.
	Drivers []ModuleInfo `json:"drivers,omitempty"`
}

// ModuleInfo is one kernel module to load at boot.
type ModuleInfo struct {
	Name string   `json:"name"`
	Path string   `json:"path"`           // under /lib/modules/<release>
	Deps []string `json:"deps,omitempty"` // names of modules that must be loaded first
	// SoftDeps are loaded first if they load at all; one that fails (a
	// CPU-specific variant on another CPU) blocks nothing.
	SoftDeps []string `json:"softDeps,omitempty"`
	// Aliases are the module's modalias patterns (modules.alias), for drivers.
	Aliases []string `json:"aliases,omitempty"`
	// Class is the recipe's driver class that brought the module in.
	Class string `json:"class,omitempty"`
	// Firmware lists the blobs the module may request (modinfo firmware=).
	Firmware []string `json:"firmware,omitempty"`
}

// FirmwareInfoPath is where imgbuild says where the image's firmware came from.
const FirmwareInfoPath = "/lib/firmware/ballast-firmware.json"

// FirmwareInfo names the firmware packages the image's blobs came from and
// the blobs its drivers name that none of them has.
type FirmwareInfo struct {
	Packages []string `json:"packages"`
	Missing  []string `json:"missing,omitempty"`
}

// ReadImageInfo reads the image description at path.
func ReadImageInfo(path string) (*ImageInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read image info: %w", err)
	}
	var info ImageInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("parse image info %s: %w", path, err)
	}
	return &info, nil
}
