package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

const completeMarker = ".ballast-complete"

// Fetch returns the pinned kernel from the cache, downloading it with
// `apt-get download` (apt verifies the package against the signed archive
// index) and unpacking it with dpkg-deb on a miss. depmod generates
// modules.dep, which the .deb does not ship.
func Fetch(ctx context.Context, cacheDir string, pin Pin, log *slog.Logger) (*Kernel, error) {
	dir := filepath.Join(cacheDir, pin.Package+"_"+pin.Version)
	if _, err := os.Stat(filepath.Join(dir, completeMarker)); err == nil {
		return open(dir, pin)
	}
	for _, tool := range []struct{ bin, pkg string }{{"apt-get", "apt"}, {"dpkg-deb", "dpkg"}, {"depmod", "kmod"}} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			return nil, fmt.Errorf("fetch kernel %s: %s not found: run `apt-get install -y %s` (or `make deps`)", pin.Package, tool.bin, tool.pkg)
		}
	}
	log.Info("fetching kernel", "package", pin.Package, "version", pin.Version, "cache", dir)
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("fetch kernel: %w", err)
	}
	work, err := os.MkdirTemp(cacheDir, ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("fetch kernel: %w", err)
	}
	defer os.RemoveAll(work)
	// apt drops privileges to _apt for downloads; a private directory it can write to avoids the unsandboxed warning.
	_ = os.Chmod(work, 0o777)

	spec := pin.Package + "=" + pin.Version
	if _, err := run(ctx, work, "apt-get", "download", "-q", spec); err != nil {
		// A fresh machine may have no or stale package lists.
		log.Info("apt-get download failed, updating package lists and retrying", "package", spec)
		if out, err := run(ctx, work, "apt-get", "update", "-q"); err != nil {
			return nil, fmt.Errorf("apt-get update: %w\n%s", err, out)
		}
		if out, err := run(ctx, work, "apt-get", "download", "-q", spec); err != nil {
			return nil, fmt.Errorf("apt-get download %s: %w\n%s\nIf the version is gone from the archive, re-pin it in kernel/kernel.go (apt-cache policy linux-image-cloud-amd64 shows what is there)", spec, err, out)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(work, pin.Package+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", spec, work, len(debs))
	}
	root := filepath.Join(work, "root")
	if out, err := run(ctx, work, "dpkg-deb", "-x", debs[0], root); err != nil {
		return nil, fmt.Errorf("unpack %s: %w\n%s", debs[0], err, out)
	}
	if out, err := run(ctx, work, "depmod", "-b", root, pin.Release); err != nil {
		return nil, fmt.Errorf("depmod %s: %w\n%s", pin.Release, err, out)
	}
	if err := os.WriteFile(filepath.Join(root, completeMarker), []byte(spec+"\n"), 0o644); err != nil {
		return nil, err
	}
	_ = os.RemoveAll(dir) // a partial earlier attempt without the marker
	if err := os.Rename(root, dir); err != nil {
		return nil, fmt.Errorf("fetch kernel: %w", err)
	}
	return open(dir, pin)
}

func open(dir string, pin Pin) (*Kernel, error) {
	k := &Kernel{
		Release:    pin.Release,
		Vmlinuz:    filepath.Join(dir, "boot", "vmlinuz-"+pin.Release),
		ModulesDir: filepath.Join(dir, "lib", "modules", pin.Release),
		Source:     "debian:" + pin.Package + "=" + pin.Version,
	}
	return k, k.load()
}

// Local uses a kernel image and a module tree from disk (a recipe's
// kernel.local). The module tree's base name is the kernel release; it needs
// a modules.dep (run `depmod -b ROOT RELEASE` if it lacks one).
func Local(vmlinuz, modulesDir string) (*Kernel, error) {
	if _, err := os.Stat(vmlinuz); err != nil {
		return nil, fmt.Errorf("local kernel: %w", err)
	}
	k := &Kernel{
		Release:    filepath.Base(filepath.Clean(modulesDir)),
		Vmlinuz:    vmlinuz,
		ModulesDir: modulesDir,
		Source:     "local:" + vmlinuz,
	}
	return k, k.load()
}

func (k *Kernel) load() error {
	f, err := os.Open(filepath.Join(k.ModulesDir, "modules.dep"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kernel %s: no modules.dep in %s: run `depmod -b <root> %s`", k.Release, k.ModulesDir, k.Release)
		}
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	defer f.Close()
	var builtin *os.File
	if b, err := os.Open(filepath.Join(k.ModulesDir, "modules.builtin")); err == nil {
		builtin = b
		defer b.Close()
	}
	g, err := parseDeps(f, builtin)
	if err != nil {
		return fmt.Errorf("kernel %s: modules.dep: %w", k.Release, err)
	}
	// Soft dependencies: modules a module's init asks the kernel for by name
	// (request_module, e.g. libcrc32c for "crc32c"). ballast has no modprobe
	// for the kernel to run, so they are loaded first, like hard ones.
	if sf, err := os.Open(filepath.Join(k.ModulesDir, "modules.softdep")); err == nil {
		defer sf.Close()
		af, err := os.Open(filepath.Join(k.ModulesDir, "modules.alias"))
		if err != nil {
			return fmt.Errorf("kernel %s: modules.softdep needs modules.alias: %w", k.Release, err)
		}
		defer af.Close()
		if err := g.addSoftDeps(sf, af); err != nil {
			return fmt.Errorf("kernel %s: modules.softdep: %w", k.Release, err)
		}
	}
	k.dep = g
	return nil
}

func run(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
