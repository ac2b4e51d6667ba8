// Package image turns a recipe into bootable artifacts.
//
//	r, _ := image.LoadRecipe("control-plane")
//	m, err := image.Build(ctx, image.Options{Recipe: r, OutDir: "out", SourceDir: "."})
//
// Outputs go to OutDir/<recipe>/ and are reproducible: the same recipe and
// inputs give byte-identical files (sorted archive entries, zero mtimes,
// -trimpath builds, no host paths or times).
package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/ballast-os/ballast/image/disk"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/config/source"
	"github.com/ballast-os/ballast/kernel"
	"github.com/ballast-os/ballast/netboot"
)

// Options configure one build. Zero values are documented per field.
type Options struct {
	Recipe *Recipe
	OutDir string // artifacts go to OutDir/<recipe name>/; required
	// SourceDir is the ballast module root, used to build initagent. Required unless Initagent is set.
	SourceDir string
	// Initagent is a prebuilt initagent binary; empty builds it from SourceDir.
	Initagent string
	// KernelCache holds fetched kernels; empty means kernel.CacheDir().
	KernelCache string
	// CABundle is put at /etc/ssl/certs/ca-certificates.crt; empty means the host's Debian bundle.
	CABundle string
	// Config is a machine config file embedded at source.EmbeddedPath, used
	// when the node finds no other; it is validated at build time. Empty: none.
	Config string
	// SystemImage is the squashfs for the system slots and PXE boots
	// (system.sqfs with containerd, kubelet …), copied to SystemFile.
	// Empty: a small generated one with the image description.
	SystemImage string
	// Progress receives one line per stage; nil discards them.
	Progress io.Writer
	// Log receives structured logs; nil discards them.
	Log *slog.Logger
}

// Output names, fixed so scripts and the netboot server can rely on them.
const (
	KernelFile    = "vmlinuz"
	InitramfsFile = "initramfs.img"
	IPXEFile      = "boot.ipxe"
	ManifestFile  = "manifest.json"
	SystemFile    = "system.sqfs"
	// SystemCPIOFile is the PXE initrd that puts SystemFile at /system.sqfs
	// in the node's rootfs. Boot scripts load it before InitramfsFile: the
	// kernel only finds an uncompressed cpio at a 4-byte aligned offset, and
	// the EFI stub concatenates initrds without padding (the compressed
	// initramfs.img can have any length), so it goes first, like early
	// microcode.
	SystemCPIOFile = "system.cpio"
)

// RawFile, ISOFile and UpgradeFile name the disk outputs of a recipe.
func RawFile(recipe string) string { return recipe + ".raw" }

// ISOFile is the hybrid installer/live ISO.
func ISOFile(recipe string) string { return recipe + ".iso" }

// UpgradeFile is the image nodectl upgrade sends to a node.
func UpgradeFile(recipe string) string { return recipe + ".upgrade.tar" }

// DefaultCABundle is Debian's ca-certificates bundle.
const DefaultCABundle = "/etc/ssl/certs/ca-certificates.crt"

// Build runs every stage and returns the manifest it wrote.
func Build(ctx context.Context, o Options) (*Manifest, error) {
	if o.Recipe == nil || o.OutDir == "" {
		return nil, fmt.Errorf("BUG: image.Build needs Recipe and OutDir")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.KernelCache == "" {
		o.KernelCache = kernel.CacheDir()
	}
	if o.CABundle == "" {
		o.CABundle = DefaultCABundle
	}
	r := o.Recipe
	dir := filepath.Join(o.OutDir, r.Name)
	p := NewProgress(o.Progress, 10)
	m := &Manifest{
		Recipe: ManifestRecipe{Name: r.Name, Source: recipeSource(r.File), SHA256: r.SHA256},
		Go:     runtime.Version(),
	}

	var (
		k         *kernel.Kernel
		modules   []kernel.Module
		drivers   *Drivers
		microcode []kernel.Microcode
	)
	err := p.Stage("kernel", func() (string, error) {
		var err error
		if l := r.Kernel.Local; l != nil {
			k, err = kernel.Local(l.Vmlinuz, l.Modules)
		} else {
			var pin kernel.Pin
			if pin, err = kernel.PinFor(r.Kernel.Flavour); err == nil {
				k, err = kernel.Fetch(ctx, o.KernelCache, pin, o.Log)
			}
		}
		if err != nil {
			return "", err
		}
		if modules, err = k.Resolve(r.Kernel.Modules); err != nil {
			return "", fmt.Errorf("%s: kernel.modules: %w", r.File, err)
		}
		if drivers, err = ResolveDrivers(r, k, modules); err != nil {
			return "", err
		}
		if len(drivers.firmwareWanted()) > 0 {
			fw, err := kernel.FetchFirmware(ctx, filepath.Join(filepath.Dir(o.KernelCache), "firmware"), o.Log)
			if err != nil {
				return "", err
			}
			drivers.AddFirmware(fw)
		}
		if len(r.Kernel.Microcode) > 0 {
			if microcode, err = kernel.FetchMicrocode(ctx, filepath.Join(filepath.Dir(o.KernelCache), "firmware"), r.Kernel.Microcode, o.Log); err != nil {
				return "", fmt.Errorf("%s: kernel.microcode: %w", r.File, err)
			}
		}
		detail := fmt.Sprintf("%s, %d modules at boot (%d named)", k.Release, len(modules), len(r.Kernel.Modules))
		for _, line := range drivers.Report {
			detail += "\n                      " + line
		}
		for _, mc := range microcode {
			detail += fmt.Sprintf("\n                      microcode %s: %d patches, %.1f MiB early (%s)", mc.Vendor, mc.Files, float64(len(mc.Data))/(1<<20), mc.Source)
		}
		return detail, nil
	})
	if err != nil {
		return nil, err
	}
	m.Kernel = ManifestKernel{Release: k.Release, Source: k.Source}

	agentPath := o.Initagent
	err = p.Stage("initagent", func() (string, error) {
		if agentPath != "" {
			return "prebuilt " + agentPath, nil
		}
		var err error
		agentPath, err = buildInitagent(ctx, o.SourceDir, filepath.Join(o.OutDir, ".build"))
		return "go build " + initagentPkg, err
	})
	if err != nil {
		return nil, err
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	err = p.Stage("initramfs", func() (string, error) {
		a, inputs, err := Initramfs(r, k, modules, drivers.Modules, agentPath, o.CABundle)
		if err != nil {
			return "", err
		}
		if err := addFirmware(a, drivers); err != nil {
			return "", err
		}
		if o.Config != "" {
			in, err := embedConfig(a, o.Config)
			if err != nil {
				return "", err
			}
			inputs = append(inputs, in)
		}
		m.Inputs = inputs
		for _, mod := range modules {
			m.Modules = append(m.Modules, mod.Name)
		}
		for _, mod := range drivers.Modules {
			m.Drivers = append(m.Drivers, mod.Name)
		}
		var early []EarlyFile
		for _, mc := range microcode {
			early = append(early, EarlyFile{Name: mc.Name, Data: mc.Data})
			sum := sha256.Sum256(mc.Data)
			m.Microcode = append(m.Microcode, ManifestMicrocode{Vendor: mc.Vendor, Source: mc.Source, Name: mc.Name,
				Patches: mc.Files, Size: int64(len(mc.Data)), SHA256: hex.EncodeToString(sum[:])})
		}
		var earlySize int64
		n, err := writeAtomic(filepath.Join(dir, InitramfsFile), func(w io.Writer) (int64, error) {
			if len(early) > 0 {
				var err error
				if earlySize, err = WriteEarlyCPIO(w, early); err != nil {
					return earlySize, err
				}
			}
			n, err := a.WriteTo(w)
			return earlySize + n, err
		})
		detail := fmt.Sprintf("%d entries, %.1f MiB", len(a.Names()), float64(n-earlySize)/(1<<20))
		if earlySize > 0 {
			detail += fmt.Sprintf(" after %.1f MiB of early microcode (uncompressed, as the kernel reads it)", float64(earlySize)/(1<<20))
		}
		return detail, err
	})
	if err != nil {
		return nil, err
	}

	err = p.Stage("vmlinuz", func() (string, error) {
		return KernelFile, copyAtomic(filepath.Join(dir, KernelFile), k.Vmlinuz)
	})
	if err != nil {
		return nil, err
	}

	more, known, err := cachedDisk(ctx, p, o, k, dir)
	if err != nil {
		return nil, err
	}
	outputs := append([]string{KernelFile, SystemCPIOFile, InitramfsFile, IPXEFile}, more...)

	err = p.Stage("pxe", func() (string, error) {
		cpioEntry, err := writeSystemCPIO(filepath.Join(dir, SystemCPIOFile), filepath.Join(dir, SystemFile))
		if err != nil {
			return "", err
		}
		known[SystemCPIOFile] = cpioEntry
		sums := map[string]string{SystemCPIOFile: cpioEntry.SHA256}
		for _, name := range []string{KernelFile, InitramfsFile} {
			sum, _, err := fileSHA256(filepath.Join(dir, name))
			if err != nil {
				return "", err
			}
			sums[name] = sum
		}
		script := netboot.Script(netboot.ScriptParams{
			Title: r.Name, Kernel: KernelFile, Initrds: []string{SystemCPIOFile, InitramfsFile}, Cmdline: r.Cmdline, SHA256: sums,
		})
		_, err = writeAtomic(filepath.Join(dir, IPXEFile), func(w io.Writer) (int64, error) {
			n, err := w.Write(script)
			return int64(n), err
		})
		return fmt.Sprintf("%s, %.1f MiB; %s", SystemCPIOFile, float64(cpioEntry.Size)/(1<<20), IPXEFile), err
	})
	if err != nil {
		return nil, err
	}

	err = p.Stage("manifest", func() (string, error) {
		for _, name := range outputs {
			if e, ok := known[name]; ok {
				// Hashed while it was written (the raw image is large).
				m.Outputs = append(m.Outputs, e)
				continue
			}
			sum, size, err := fileSHA256(filepath.Join(dir, name))
			if err != nil {
				return "", err
			}
			m.Outputs = append(m.Outputs, ManifestFileEntry{Name: name, Size: size, SHA256: sum})
		}
		data, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return "", err
		}
		_, err = writeAtomic(filepath.Join(dir, ManifestFile), func(w io.Writer) (int64, error) {
			n, err := w.Write(append(data, '\n'))
			return int64(n), err
		})
		return dir, err
	})
	return m, err
}

const initagentPkg = "./initagent/cmd/initagent"

// buildInitagent builds a static, reproducible initagent: no cgo, no build
// IDs, no VCS stamps, no host paths.
func buildInitagent(ctx context.Context, srcDir, buildDir string) (string, error) {
	if srcDir == "" {
		return "", fmt.Errorf("no ballast source tree to build initagent from: run imgbuild inside the ballast checkout, or pass --initagent")
	}
	if err := os.MkdirAll(buildDir, 0o755); err != nil {
		return "", err
	}
	out, err := filepath.Abs(filepath.Join(buildDir, "initagent"))
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid=", "-o", out, initagentPkg)
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", initagentPkg, err, b)
	}
	return out, nil
}

// Initramfs assembles the image's initramfs with initPath as /init; the
// inputs it read from the host are returned for the manifest.
func Initramfs(r *Recipe, k *kernel.Kernel, modules []kernel.Module, drivers []boot.ModuleInfo, initPath, caBundle string) (*Archive, []ManifestFileEntry, error) {
	a := NewArchive()
	var inputs []ManifestFileEntry
	addHostFile := func(name, src string, perm uint64) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("initramfs %s: %w", name, err)
		}
		sum := sha256.Sum256(data)
		inputs = append(inputs, ManifestFileEntry{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
		return a.AddFile(name, data, perm)
	}
	for _, d := range []string{"/dev", "/proc", "/sys", "/run", "/tmp", "/var", "/root", "/mnt"} {
		if err := a.AddDir(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	if err := a.AddCharDev("/dev/console", 0o600, 5, 1); err != nil {
		return nil, nil, err
	}
	if err := a.AddCharDev("/dev/null", 0o666, 1, 3); err != nil {
		return nil, nil, err
	}
	if err := addHostFile("/init", initPath, 0o755); err != nil {
		return nil, nil, err
	}
	if caBundle != "" {
		if err := addHostFile("/etc/ssl/certs/ca-certificates.crt", caBundle, 0o644); err != nil {
			return nil, nil, fmt.Errorf("%w (install Debian's ca-certificates package)", err)
		}
	}
	info := boot.ImageInfo{Recipe: r.Name, Role: r.Role, Hostname: r.Hostname, KernelRelease: k.Release}
	modRoot := "/lib/modules/" + k.Release
	for _, mod := range modules {
		data, err := os.ReadFile(filepath.Join(k.ModulesDir, mod.Path))
		if err != nil {
			return nil, nil, fmt.Errorf("module %s of kernel %s: %w", mod.Name, k.Release, err)
		}
		if err := a.AddFile(modRoot+"/"+mod.Path, data, 0o644); err != nil {
			return nil, nil, err
		}
		info.Modules = append(info.Modules, boot.ModuleInfo{Name: mod.Name, Path: mod.Path, Deps: mod.Deps, SoftDeps: mod.SoftDeps})
	}
	for _, mod := range drivers {
		data, err := os.ReadFile(filepath.Join(k.ModulesDir, mod.Path))
		if err != nil {
			return nil, nil, fmt.Errorf("driver %s of kernel %s: %w", mod.Name, k.Release, err)
		}
		if err := a.AddFile(modRoot+"/"+mod.Path, data, 0o644); err != nil {
			return nil, nil, err
		}
	}
	info.Drivers = drivers
	infoJSON, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	if err := a.AddFile(boot.ImageInfoPath, append(infoJSON, '\n'), 0o644); err != nil {
		return nil, nil, err
	}
	osRelease := fmt.Sprintf("NAME=ballast\nID=ballast\nVARIANT_ID=%s\nPRETTY_NAME=\"ballast %s\"\n", r.Name, r.Name)
	if err := a.AddFile("/etc/os-release", []byte(osRelease), 0o644); err != nil {
		return nil, nil, err
	}
	return a, inputs, nil
}

// addFirmware puts the drivers' firmware under /lib/firmware, where the
// kernel loads it from directly, and tells the agent which packages the
// image took firmware from (for its warning about a missing blob).
func addFirmware(a *Archive, d *Drivers) error {
	if len(d.Firmware) == 0 {
		return nil
	}
	names := make([]string, 0, len(d.Firmware))
	for n := range d.Firmware {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := a.AddFile("/lib/firmware/"+n, d.Firmware[n], 0o644); err != nil {
			return err
		}
	}
	info, err := json.Marshal(boot.FirmwareInfo{Packages: d.FirmwarePackages, Missing: d.FirmwareMissing})
	if err != nil {
		return err
	}
	return a.AddFile(boot.FirmwareInfoPath, append(info, '\n'), 0o644)
}

// embedConfig validates a machine config and puts it where the agent looks
// for an embedded one, so a bad config fails the build, not the boot.
func embedConfig(a *Archive, path string) (ManifestFileEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return ManifestFileEntry{}, fmt.Errorf("--config: %w", err)
	}
	if _, _, err := config.Parse(data); err != nil {
		return ManifestFileEntry{}, fmt.Errorf("--config %s is not a valid machine config:\n%w", path, err)
	}
	sum := sha256.Sum256(data)
	if err := a.AddFile(source.EmbeddedPath, data, 0o600); err != nil {
		return ManifestFileEntry{}, err
	}
	return ManifestFileEntry{Name: source.EmbeddedPath, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}, nil
}

// writeAtomic writes path through a temporary file in the same directory,
// so a failed build never leaves a truncated artifact behind.
func writeAtomic(path string, write func(io.Writer) (int64, error)) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	n, err := write(f)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("write %s: %w", path, err)
	}
	return n, os.Rename(f.Name(), path)
}

func copyAtomic(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = writeAtomic(dst, func(w io.Writer) (int64, error) { return io.Copy(w, in) })
	return err
}

// writeSystemCPIO writes the system image as a one-file cpio archive,
// hashing it as it goes.
func writeSystemCPIO(dst, system string) (ManifestFileEntry, error) {
	in, err := os.Open(system)
	if err != nil {
		return ManifestFileEntry{}, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return ManifestFileEntry{}, err
	}
	h := sha256.New()
	n, err := writeAtomic(dst, func(w io.Writer) (int64, error) {
		return WriteFileCPIO(io.MultiWriter(w, h), SystemFile, in, fi.Size())
	})
	if err != nil {
		return ManifestFileEntry{}, err
	}
	return ManifestFileEntry{Name: SystemCPIOFile, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func fileSHA256(path string) (string, int64, error) { return disk.FileSHA256(path) }

// FindSourceDir walks up from dir to the ballast module root.
func FindSourceDir(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		data, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/ballast-os/ballast\n")) {
			return d, nil
		}
		if parent := filepath.Dir(d); parent == d {
			return "", fmt.Errorf("%s is not inside the ballast source tree", dir)
		}
	}
}

// recipeSource names a recipe without the host directory it was read from.
func recipeSource(file string) string {
	if strings.HasPrefix(file, "embedded:") {
		return file
	}
	return "file:" + filepath.Base(file)
}

// diskCacheFile remembers what the disk stages were built from, so a build
// whose inputs did not change keeps its raw image, upgrade and ISO.
const diskCacheFile = ".disk-inputs.json"

type diskCache struct {
	Key     string              `json:"key"`
	Outputs []ManifestFileEntry `json:"outputs"`
}

// diskStages are the stages buildDisk reports, for a cache hit.
var diskStages = []string{"system", "raw", "upgrade", "iso"}

// cachedDisk runs buildDisk unless the kernel, initramfs, system image,
// recipe and the builder itself are those of the last build in dir and its
// outputs are still there with their sizes.
func cachedDisk(ctx context.Context, p *Progress, o Options, k *kernel.Kernel, dir string) ([]string, map[string]ManifestFileEntry, error) {
	key, err := diskKey(o, dir)
	if err != nil {
		return nil, nil, err
	}
	cachePath := filepath.Join(dir, diskCacheFile)
	var c diskCache
	if data, err := os.ReadFile(cachePath); err == nil && json.Unmarshal(data, &c) == nil && c.Key == key && len(c.Outputs) > 0 {
		fresh := true
		for _, e := range c.Outputs {
			if fi, err := os.Stat(filepath.Join(dir, e.Name)); err != nil || fi.Size() != e.Size {
				fresh = false
			}
		}
		if fresh {
			known := map[string]ManifestFileEntry{}
			var outs []string
			for _, e := range c.Outputs {
				known[e.Name] = e
				outs = append(outs, e.Name)
			}
			for _, st := range diskStages {
				if err := p.Stage(st, func() (string, error) { return "unchanged inputs, kept", nil }); err != nil {
					return nil, nil, err
				}
			}
			return outs, known, nil
		}
	}
	outs, known, err := buildDisk(ctx, p, o, k, dir)
	if err != nil {
		return nil, nil, err
	}
	c = diskCache{Key: key}
	for _, name := range outs {
		e, ok := known[name]
		if !ok {
			sum, size, err := fileSHA256(filepath.Join(dir, name))
			if err != nil {
				return nil, nil, err
			}
			e = ManifestFileEntry{Name: name, Size: size, SHA256: sum}
			known[name] = e
		}
		c.Outputs = append(c.Outputs, e)
	}
	data, _ := json.Marshal(c)
	if err := os.WriteFile(cachePath, data, 0o644); err != nil {
		return nil, nil, err
	}
	return outs, known, nil
}

// diskKey hashes every input of the disk stages.
func diskKey(o Options, dir string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "recipe %s\n", o.Recipe.SHA256)
	inputs := []string{filepath.Join(dir, KernelFile), filepath.Join(dir, InitramfsFile)}
	if o.SystemImage != "" {
		inputs = append(inputs, o.SystemImage)
	}
	if self, err := os.Executable(); err == nil {
		inputs = append(inputs, self) // the disk writers are part of the builder
	}
	for _, in := range inputs {
		sum, _, err := fileSHA256(in)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %s\n", filepath.Base(in), sum)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// buildDisk writes the system image (a copy of the given one or a
// placeholder), the raw disk image, the upgrade image and the hybrid ISO,
// and returns their output names and the manifest entries of those it
// already hashed.
func buildDisk(ctx context.Context, p *Progress, o Options, k *kernel.Kernel, dir string) ([]string, map[string]ManifestFileEntry, error) {
	known := map[string]ManifestFileEntry{}
	r := o.Recipe
	d := r.Disk.WithDefaults()
	var outs []string
	sys := filepath.Join(dir, SystemFile)
	outs = append(outs, SystemFile)
	err := p.Stage("system", func() (string, error) {
		if o.SystemImage != "" {
			if err := copyAtomic(sys, o.SystemImage); err != nil {
				return "", fmt.Errorf("system image: %w", err)
			}
			return "given " + o.SystemImage, nil
		}
		tree, err := os.MkdirTemp(dir, ".system-tree-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tree)
		info, err := json.MarshalIndent(map[string]string{"recipe": r.Name, "role": r.Role, "kernelRelease": k.Release}, "", "  ")
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(filepath.Join(tree, "etc/ballast"), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(tree, "etc/ballast/system.json"), append(info, '\n'), 0o644); err != nil {
			return "", err
		}
		return "placeholder " + SystemFile, disk.SquashFS(ctx, tree, sys)
	})
	if err != nil {
		return nil, nil, err
	}
	title := "ballast " + r.Name
	kernelPath, initrdPath := filepath.Join(dir, KernelFile), filepath.Join(dir, InitramfsFile)
	rawPath := filepath.Join(dir, RawFile(r.Name))
	err = p.Stage("raw", func() (string, error) {
		spec := disk.RawSpec{
			Sizes: disk.Sizes{Disk: d.SizeMiB << 20, ESP: d.ESPMiB << 20, System: d.SystemMiB << 20},
			Seed:  r.SHA256, Title: title, Kernel: kernelPath, Initramfs: initrdPath, SystemImage: sys, Cmdline: r.Cmdline,
		}
		err := writeFileAtomic(rawPath, func(f *os.File) error { return disk.WriteRaw(ctx, f, spec) })
		outs = append(outs, RawFile(r.Name))
		return fmt.Sprintf("%s, %d MiB", RawFile(r.Name), d.SizeMiB), err
	})
	if err != nil {
		return nil, nil, err
	}
	err = p.Stage("upgrade", func() (string, error) {
		spec := disk.UpgradeSpec{Recipe: r.Name, Title: title, Cmdline: r.Cmdline, Kernel: kernelPath, Initramfs: initrdPath, System: sys}
		n, err := writeAtomic(filepath.Join(dir, UpgradeFile(r.Name)), func(w io.Writer) (int64, error) {
			cw := &countWriter{w: w}
			err := disk.WriteUpgrade(cw, spec)
			return cw.n, err
		})
		outs = append(outs, UpgradeFile(r.Name))
		return fmt.Sprintf("%s, %.1f MiB", UpgradeFile(r.Name), float64(n)/(1<<20)), err
	})
	if err != nil {
		return nil, nil, err
	}
	err = p.Stage("iso", func() (string, error) {
		spec := disk.ISOSpec{Volume: r.Name, Title: title, Kernel: kernelPath, Initramfs: initrdPath, System: sys,
			Raw: rawPath, Cmdline: r.Cmdline}
		err := writeFileAtomic(filepath.Join(dir, ISOFile(r.Name)), func(f *os.File) error {
			info, err := disk.WriteISO(ctx, f, spec)
			if err == nil {
				known[RawFile(r.Name)] = ManifestFileEntry{Name: RawFile(r.Name), Size: info.Size, SHA256: info.SHA256}
			}
			return err
		})
		outs = append(outs, ISOFile(r.Name))
		return ISOFile(r.Name), err
	})
	return outs, known, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeFileAtomic is writeAtomic for writers that need the file itself
// (sparse images written at offsets).
func writeFileAtomic(path string, write func(*os.File) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	err = write(f)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(f.Name(), path)
}
