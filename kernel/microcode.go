package kernel

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// MicrocodeDir is where the kernel's early loader looks for CPU microcode:
// an uncompressed cpio at the very start of the initrd holding
// kernel/x86/microcode/<vendor id>.bin (Documentation/arch/x86/microcode.rst).
const MicrocodeDir = "kernel/x86/microcode"

// microcodeVendor is one CPU vendor's microcode package.
type microcodeVendor struct {
	pin DebPin
	// dir is the package's directory of blobs under lib/firmware, and
	// match picks the files the kernel reads from it (Debian's
	// amd64-microcode also ships SEV firmware beside the patches).
	dir, match string
	// cpuID is the CPUID vendor string the kernel names the early file by.
	cpuID string
}

var microcodeVendors = map[string]microcodeVendor{
	"intel": {pin: DebPin{Package: "intel-microcode", Version: "3.20251111.1~deb12u1"},
		// Every file: Debian ships some CPUs' patches only as
		// FF-MM-SS.initramfs, for early loading alone.
		dir: "intel-ucode", match: "*", cpuID: "GenuineIntel"},
	"amd": {pin: DebPin{Package: "amd64-microcode", Version: "3.20250311.1~deb12u1"},
		dir: "amd-ucode", match: "microcode_amd*.bin", cpuID: "AuthenticAMD"},
}

// MicrocodeVendors lists the vendors a recipe can name in kernel.microcode.
func MicrocodeVendors() []string {
	var vs []string
	for v := range microcodeVendors {
		vs = append(vs, v)
	}
	sort.Strings(vs)
	return vs
}

// CheckMicrocodeVendor says whether a recipe may name vendor.
func CheckMicrocodeVendor(vendor string) error {
	if _, ok := microcodeVendors[vendor]; !ok {
		return fmt.Errorf("unknown CPU vendor %q: one of %s", vendor, strings.Join(MicrocodeVendors(), ", "))
	}
	return nil
}

// Microcode is one vendor's early microcode file.
type Microcode struct {
	Vendor string
	// Name is the file's path in the early cpio,
	// "kernel/x86/microcode/GenuineIntel.bin".
	Name string
	// Data is every patch of the package, concatenated as the loader
	// expects (it picks the one for the CPU it runs on).
	Data   []byte
	Files  int    // patch files that went into Data
	Source string // "debian:intel-microcode=<version>"
}

// FetchMicrocode returns the early microcode files of vendors (in the
// order given), fetching Debian's microcode packages like the firmware.
func FetchMicrocode(ctx context.Context, cacheDir string, vendors []string, log *slog.Logger) ([]Microcode, error) {
	var pins []DebPin
	for _, v := range vendors {
		if err := CheckMicrocodeVendor(v); err != nil {
			return nil, err
		}
		pins = append(pins, microcodeVendors[v].pin)
	}
	dirs, err := FetchDebian(ctx, cacheDir, FirmwareSources, pins, log)
	if err != nil {
		return nil, err
	}
	var out []Microcode
	for i, v := range vendors {
		mv := microcodeVendors[v]
		mc, err := concatMicrocode(filepath.Join(dirs[i], "lib", "firmware", mv.dir), mv.match)
		if err != nil {
			return nil, fmt.Errorf("microcode for %s (%s): %w", v, mv.pin.Package, err)
		}
		mc.Vendor = v
		mc.Name = MicrocodeDir + "/" + mv.cpuID + ".bin"
		mc.Source = "debian:" + mv.pin.Package + "=" + mv.pin.Version
		out = append(out, mc)
	}
	return out, nil
}

// concatMicrocode joins the patch files in dir matching pattern, in name
// order, so equal packages give equal bytes.
func concatMicrocode(dir, pattern string) (Microcode, error) {
	files, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		return Microcode{}, err
	}
	sort.Strings(files)
	var b bytes.Buffer
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return Microcode{}, err
		}
		b.Write(data)
	}
	if len(files) == 0 {
		return Microcode{}, fmt.Errorf("no patch files %s in %s", pattern, dir)
	}
	return Microcode{Data: b.Bytes(), Files: len(files)}, nil
}
