package kernel

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// DebPin is one Debian package at one version (firmware and microcode
// from bookworm's non-free-firmware component), verified by apt like the
// kernel.
type DebPin struct {
	Package string
	Version string
}

// firmwarePins are the packages holding the blobs the driver classes'
// modules ask for: Intel ice DDP and Broadcom tg3 (misc), Realtek NICs,
// Broadcom NetXtreme II 10G.
func firmwarePins() []DebPin {
	return []DebPin{
		{Package: "firmware-misc-nonfree", Version: "20230210-5"},
		{Package: "firmware-realtek", Version: "20230210-5"},
		{Package: "firmware-bnx2x", Version: "20230210-5"},
	}
}

// Firmware is the unpacked firmware packages.
type Firmware struct {
	// Packages maps each package to its unpacked lib/firmware.
	Packages map[string]string
	// Source is what they came from, for the manifest.
	Source []string
}

// FirmwareSources is the apt source list for the firmware component; apt
// verifies it against Debian's archive key like the main archive.
const FirmwareSources = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm non-free-firmware\n"

// FetchFirmware returns the pinned firmware packages from the cache,
// downloading them on a miss with apt (its own source list and state
// under the cache, so the machine's apt configuration is left alone).
func FetchFirmware(ctx context.Context, cacheDir string, log *slog.Logger) (*Firmware, error) {
	pins := firmwarePins()
	dirs, err := FetchDebian(ctx, cacheDir, FirmwareSources, pins, log)
	if err != nil {
		return nil, err
	}
	fw := &Firmware{Packages: map[string]string{}}
	for i, p := range pins {
		fw.Packages[p.Package] = filepath.Join(dirs[i], "lib", "firmware")
		fw.Source = append(fw.Source, "debian:"+p.Package+"="+p.Version)
	}
	return fw, nil
}

// FetchDebian returns the directories the pinned packages are unpacked in
// under cacheDir (in the order of pins), downloading the ones missing with
// apt from sources (an apt source list; its own apt state lives in the
// cache, so the machine's apt configuration is left alone). One cacheDir
// holds the packages of one source list.
func FetchDebian(ctx context.Context, cacheDir, sources string, pins []DebPin, log *slog.Logger) ([]string, error) {
	var dirs []string
	var missing []DebPin
	for _, p := range pins {
		dir := filepath.Join(cacheDir, p.Package+"_"+p.Version)
		if _, err := os.Stat(filepath.Join(dir, completeMarker)); err != nil {
			missing = append(missing, p)
		}
		dirs = append(dirs, dir)
	}
	if len(missing) == 0 {
		return dirs, nil
	}
	aptDir := filepath.Join(cacheDir, ".apt")
	for _, d := range []string{"lists/partial", "parts"} {
		if err := os.MkdirAll(filepath.Join(aptDir, d), 0o755); err != nil {
			return nil, fmt.Errorf("fetch Debian packages: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(aptDir, "sources.list"), []byte(sources), 0o644); err != nil {
		return nil, fmt.Errorf("fetch Debian packages: %w", err)
	}
	apt := func(dir string, args ...string) (string, error) {
		opts := []string{"-q", "-o", "Dir::Etc::SourceList=" + filepath.Join(aptDir, "sources.list"),
			"-o", "Dir::Etc::SourceParts=" + filepath.Join(aptDir, "parts"), "-o", "Dir::State::Lists=" + filepath.Join(aptDir, "lists"),
			"-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", "-o", "APT::Sandbox::User=root"}
		return run(ctx, dir, "apt-get", append(opts, args...)...)
	}
	log.Info("fetching Debian packages", "sources", strings.TrimSpace(sources), "packages", len(missing))
	if out, err := apt(aptDir, "update"); err != nil {
		return nil, fmt.Errorf("apt-get update (%s): %w\n%s", strings.TrimSpace(sources), err, out)
	}
	for _, p := range missing {
		if err := fetchDeb(ctx, cacheDir, p, apt); err != nil {
			return nil, err
		}
	}
	return dirs, nil
}

// fetchDeb downloads one pinned package and unpacks it into the cache.
func fetchDeb(ctx context.Context, cacheDir string, p DebPin, apt func(dir string, args ...string) (string, error)) error {
	work, err := os.MkdirTemp(cacheDir, ".fetch-")
	if err != nil {
		return fmt.Errorf("fetch Debian packages: %w", err)
	}
	defer os.RemoveAll(work)
	spec := p.Package + "=" + p.Version
	if out, err := apt(work, "download", spec); err != nil {
		return fmt.Errorf("apt-get download %s: %w\n%s\nIf the version is gone from the archive, pin the one the archive has now (apt-cache policy %s)", spec, err, out, p.Package)
	}
	debs, _ := filepath.Glob(filepath.Join(work, p.Package+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s: expected one .deb, found %d", spec, len(debs))
	}
	root := filepath.Join(work, "root")
	if out, err := run(ctx, work, "dpkg-deb", "-x", debs[0], root); err != nil {
		return fmt.Errorf("unpack %s: %w\n%s", debs[0], err, out)
	}
	if err := os.WriteFile(filepath.Join(root, completeMarker), []byte(spec+"\n"), 0o644); err != nil {
		return err
	}
	dir := filepath.Join(cacheDir, p.Package+"_"+p.Version)
	_ = os.RemoveAll(dir)
	if err := os.Rename(root, dir); err != nil {
		return fmt.Errorf("fetch Debian packages: %w", err)
	}
	return nil
}

// Find returns the blob for a firmware name (as a driver requests it,
// e.g. "rtl_nic/rtl8168h-2.fw"): its bytes with symlinks inside the package
// followed, and the package holding it.
func (f *Firmware) Find(name string) (data []byte, pkg string, ok bool) {
	pkgs := make([]string, 0, len(f.Packages))
	for p := range f.Packages {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, p := range pkgs {
		root := f.Packages[p]
		path := filepath.Join(root, filepath.FromSlash(name))
		real, err := filepath.EvalSymlinks(path)
		if err != nil || !strings.HasPrefix(real, filepath.Clean(root)+string(filepath.Separator)) {
			continue
		}
		if data, err := os.ReadFile(real); err == nil {
			return data, p, true
		}
	}
	return nil, "", false
}

// Files lists every blob of every package, as name → package (for telling
// an operator which package a missing blob is in).
func (f *Firmware) Files() map[string]string {
	out := map[string]string{}
	for p, root := range f.Packages {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(root, path)
				out[filepath.ToSlash(rel)] = p
			}
			return nil
		})
	}
	return out
}

// FirmwareCacheDir is where fetched firmware packages live, beside the kernels.
func FirmwareCacheDir() string { return filepath.Join(filepath.Dir(CacheDir()), "firmware") }
