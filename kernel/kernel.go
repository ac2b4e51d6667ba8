// Package kernel pins, fetches and unpacks the Debian kernel that ballast
// images boot, and resolves a recipe's module list against its modules.dep.
//
//	k, err := kernel.Fetch(ctx, kernel.CacheDir(), kernel.MustPin("cloud-amd64"), log)
//	mods, err := k.Resolve([]string{"virtio_net", "virtio_blk"})
package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Pin is one exact Debian kernel package.
type Pin struct {
	Flavour string // recipe-facing name, e.g. "cloud-amd64"
	Package string // exact binary package, e.g. "linux-image-6.1.0-50-cloud-amd64"
	Version string // Debian package version, verified by apt against the archive's signed index
	Release string // `uname -r` of the kernel inside, names /lib/modules/<Release>
}

// pins is the single place kernel versions are pinned. Versions come from
// bookworm/main (point release), which stays in the archive until the next
// point release; re-pin from `apt-cache policy linux-image-cloud-amd64` and
// `apt-cache depends linux-image-cloud-amd64=VERSION`.
func pins() []Pin {
	return []Pin{
		// Debian's generic kernel: the drivers servers need (AHCI, NVMe, SAS/RAID, USB, the data-centre NICs) as modules.
		{Flavour: "amd64", Package: "linux-image-6.1.0-50-amd64", Version: "6.1.176-1", Release: "6.1.0-50-amd64"},
		// Debian's cloud kernel: virtio and little else, for VM-only recipes.
		{Flavour: "cloud-amd64", Package: "linux-image-6.1.0-50-cloud-amd64", Version: "6.1.176-1", Release: "6.1.0-50-cloud-amd64"},
	}
}

// Flavours lists the pinned flavours in sorted order.
func Flavours() []string {
	var names []string
	for _, p := range pins() {
		names = append(names, p.Flavour)
	}
	sort.Strings(names)
	return names
}

// PinFor returns the pin for a flavour or an error listing the known ones.
func PinFor(flavour string) (Pin, error) {
	for _, p := range pins() {
		if p.Flavour == flavour {
			return p, nil
		}
	}
	return Pin{}, fmt.Errorf("unknown kernel flavour %q: pinned flavours are %v (kernel/kernel.go)", flavour, Flavours())
}

// Kernel is an unpacked kernel: its image and its module tree.
type Kernel struct {
	Release    string // e.g. "6.1.0-50-cloud-amd64"
	Vmlinuz    string // path to the bzImage
	ModulesDir string // path to lib/modules/<Release>, holding modules.dep
	Source     string // what it came from, for the manifest: "debian:<pkg>=<version>" or "local:<path>"
	dep        *depGraph
}

// CacheDir is where fetched kernels live: $BALLAST_CACHE/kernel, or
// ~/.cache/ballast/kernel.
func CacheDir() string {
	if d := os.Getenv("BALLAST_CACHE"); d != "" {
		return filepath.Join(d, "kernel")
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "ballast", "kernel")
	}
	return filepath.Join(os.TempDir(), "ballast-cache", "kernel")
}
