package kernel

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// driverClasses are the driver sets a recipe can ask for by name: the
// hardware servers have. Each module is loaded only when a device matches
// one of its aliases (coldplug), so a class costs initramfs bytes, not boot
// time. A module the kernel flavour lacks is skipped and reported.
var driverClasses = map[string][]string{
	// Virtual hardware under QEMU/KVM and most clouds.
	"virtio": {"virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_console", "virtio_rng"},
	// Disk controllers and the disk, CD-ROM and card drivers behind them:
	// AHCI/SATA and legacy IDE, NVMe, SAS HBAs and RAID (Broadcom/LSI
	// mpt3sas and megaraid_sas, Microchip smartpqi, HPE hpsa, Adaptec
	// aacraid), USB mass storage (BOT and UAS), SD/MMC.
	"storage": {"ahci", "ata_piix", "ata_generic", "nvme", "mpt3sas", "megaraid_sas", "smartpqi", "hpsa", "aacraid",
		"sd_mod", "sr_mod", "usb_storage", "uas", "sdhci_pci", "sdhci_acpi", "mmc_block"},
	// The NICs data centres use (Intel 1/10/25/40/100G, Mellanox/NVIDIA,
	// Broadcom, Realtek) and USB Ethernet adapters.
	"nic": {"e1000", "e1000e", "igb", "igc", "ixgbe", "i40e", "ice", "mlx4_en", "mlx5_core", "bnxt_en", "tg3", "bnx2x",
		"r8169", "cdc_ether", "rndis_host", "r8152", "ax88179_178a"},
	// USB host controllers: the keyboard, sticks and USB NICs sit behind them.
	"usb": {"xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd"},
	// Console keyboards (USB HID; the PS/2 one is built in).
	"hid": {"usbhid", "hid_generic"},
}

// DriverClasses lists the class names in sorted order.
func DriverClasses() []string {
	names := make([]string, 0, len(driverClasses))
	for n := range driverClasses {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DriverClass returns the modules of a class, or an error naming the classes.
func DriverClass(name string) ([]string, error) {
	mods, ok := driverClasses[name]
	if !ok {
		return nil, fmt.Errorf("unknown driver class %q: the classes are %s", name, strings.Join(DriverClasses(), ", "))
	}
	return slices.Clone(mods), nil
}

// Has reports whether the kernel has the module, as a file or built in.
func (k *Kernel) Has(name string) bool {
	name = ModuleName(name)
	_, file := k.dep.paths[name]
	return file || k.dep.builtin[name]
}

// BuiltIn reports whether the module is built into the kernel image.
func (k *Kernel) BuiltIn(name string) bool { return k.dep.builtin[ModuleName(name)] }

// Aliases returns the modalias patterns (modules.alias) of the named
// modules, by module name.
func (k *Kernel) Aliases(names []string) (map[string][]string, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[ModuleName(n)] = true
	}
	f, err := os.Open(filepath.Join(k.ModulesDir, "modules.alias"))
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w (run depmod on the module tree)", k.Release, err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 || fields[0] != "alias" {
			continue
		}
		if m := ModuleName(fields[2]); want[m] {
			out[m] = append(out[m], fields[1])
		}
	}
	return out, sc.Err()
}

// Firmware lists the firmware files a module may request (its modinfo
// "firmware=" entries), read from the module's .modinfo section.
func (k *Kernel) Firmware(path string) ([]string, error) {
	f, err := elf.Open(filepath.Join(k.ModulesDir, path))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: .modinfo: %w", path, err)
	}
	var fw []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("firmware=")); ok && len(v) > 0 {
			fw = append(fw, string(v))
		}
	}
	return fw, nil
}
