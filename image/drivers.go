package image

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/kernel"
)

// Drivers is what a recipe's driver classes and drivers resolve to: the
// modules initagent loads when a device matches one of their aliases.
type Drivers struct {
	Modules []boot.ModuleInfo // dependencies before their users
	// Firmware holds the blobs the modules may request, by name
	// (lib/firmware relative), from the pinned firmware packages.
	Firmware map[string][]byte
	// FirmwareMissing are blobs the modules name that no package has.
	FirmwareMissing []string
	// FirmwarePackages are the packages the blobs came from.
	FirmwarePackages []string
	// Report says, per class, what was added and what the kernel lacks or
	// has built in: imgbuild prints it.
	Report []string
}

// ResolveDrivers resolves the recipe's kernel.driverClasses and
// kernel.drivers against the kernel, leaving out modules the boot list
// (modules, already resolved) loads anyway.
func ResolveDrivers(r *Recipe, k *kernel.Kernel, bootModules []kernel.Module) (*Drivers, error) {
	atBoot := map[string]bool{}
	for _, m := range bootModules {
		atBoot[m.Name] = true
	}
	d := &Drivers{}
	classOf := map[string]string{}
	var named []string
	want := func(class string, mods []string) {
		var added, builtin, absent []string
		for _, m := range mods {
			name := kernel.ModuleName(m)
			switch {
			case !k.Has(name):
				absent = append(absent, name)
			case k.BuiltIn(name):
				builtin = append(builtin, name)
			case atBoot[name]:
				builtin = append(builtin, name+" (kernel.modules)")
			default:
				if _, dup := classOf[name]; !dup {
					classOf[name] = class
					named = append(named, name)
					added = append(added, name)
				}
			}
		}
		line := fmt.Sprintf("drivers %s: %s", class, strings.Join(added, " "))
		if len(builtin) > 0 {
			line += "; loaded anyway: " + strings.Join(builtin, " ")
		}
		if len(absent) > 0 {
			line += fmt.Sprintf("; not in kernel %s: %s", k.Release, strings.Join(absent, " "))
		}
		d.Report = append(d.Report, line)
	}
	for i, c := range r.Kernel.DriverClasses {
		mods, err := kernel.DriverClass(c)
		if err != nil {
			return nil, fmt.Errorf("%s: kernel.driverClasses[%d]: %w", r.File, i, err)
		}
		want(c, mods)
	}
	if len(r.Kernel.Drivers) > 0 {
		for i, m := range r.Kernel.Drivers {
			if !k.Has(m) {
				return nil, fmt.Errorf("%s: kernel.drivers[%d]: kernel %s has no module %q", r.File, i, k.Release, m)
			}
		}
		want("kernel.drivers", r.Kernel.Drivers)
	}
	if len(named) == 0 {
		return d, nil
	}
	resolved, err := k.Resolve(named)
	if err != nil {
		return nil, fmt.Errorf("%s: kernel.driverClasses: %w", r.File, err)
	}
	var names []string
	for _, m := range resolved {
		if !atBoot[m.Name] {
			names = append(names, m.Name)
		}
	}
	aliases, err := k.Aliases(names)
	if err != nil {
		return nil, err
	}
	deps := 0
	for _, m := range resolved {
		if atBoot[m.Name] {
			continue
		}
		fw, err := k.Firmware(m.Path)
		if err != nil {
			return nil, err
		}
		class, ok := classOf[m.Name]
		if !ok {
			class, deps = "dependency", deps+1
		}
		d.Modules = append(d.Modules, boot.ModuleInfo{Name: m.Name, Path: m.Path, Deps: m.Deps, SoftDeps: m.SoftDeps, Aliases: aliases[m.Name], Class: class, Firmware: fw})
	}
	d.Report = append(d.Report, fmt.Sprintf("drivers: %d modules for coldplug (%d named, %d dependencies), %d aliases",
		len(d.Modules), len(d.Modules)-deps, deps, countAliases(d.Modules)))
	return d, nil
}

func countAliases(mods []boot.ModuleInfo) int {
	n := 0
	for _, m := range mods {
		n += len(m.Aliases)
	}
	return n
}

// AddFirmware takes the blobs the drivers may request from fw and reports
// what it took and what no package has.
func (d *Drivers) AddFirmware(fw *kernel.Firmware) {
	d.Firmware = map[string][]byte{}
	d.FirmwarePackages = fw.Source
	size := 0
	from := map[string]int{}
	for _, name := range d.firmwareWanted() {
		data, pkg, ok := fw.Find(name)
		if !ok {
			d.FirmwareMissing = append(d.FirmwareMissing, name)
			continue
		}
		d.Firmware[name] = data
		size += len(data)
		from[pkg]++
	}
	var pkgs []string
	for p, n := range from {
		pkgs = append(pkgs, fmt.Sprintf("%s %d", p, n))
	}
	slices.Sort(pkgs)
	line := fmt.Sprintf("firmware: %d blobs, %.1f MiB (%s)", len(d.Firmware), float64(size)/(1<<20), strings.Join(pkgs, ", "))
	if len(d.FirmwareMissing) > 0 {
		line += fmt.Sprintf("; %d named by drivers but in none of %s: %s", len(d.FirmwareMissing), strings.Join(fw.Source, " "), strings.Join(d.FirmwareMissing, " "))
	}
	d.Report = append(d.Report, line)
}

// firmwareWanted lists, sorted and once each, the firmware files the
// drivers may request.
func (d *Drivers) firmwareWanted() []string {
	var fw []string
	for _, m := range d.Modules {
		fw = append(fw, m.Firmware...)
	}
	slices.Sort(fw)
	return slices.Compact(fw)
}
