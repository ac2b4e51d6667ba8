package payload

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ballast-os/ballast/kernel"
)

// The nft userspace kube-proxy's nftables mode execs (sigs.k8s.io/knftables
// wraps the nft CLI): Debian bookworm's nftables and the shared libraries
// nft links, down to glibc. They only ever go into the kube-proxy image; the
// host programs its own rules over netlink.
const debianMainSources = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n"

func nftPins() []kernel.DebPin {
	return []kernel.DebPin{
		{Package: "nftables", Version: "1.0.6-2+deb12u2"},
		{Package: "libnftables1", Version: "1.0.6-2+deb12u2"},
		{Package: "libmnl0", Version: "1.0.4-3"},
		{Package: "libnftnl11", Version: "1.2.4-2"},
		{Package: "libjansson4", Version: "2.14-2"},
		{Package: "libgmp10", Version: "2:6.2.1+dfsg1-1.1"},
		{Package: "libxtables12", Version: "1.8.9-2"},
		{Package: "libedit2", Version: "3.1-20221030-2"},
		{Package: "libtinfo6", Version: "6.4-4"},
		{Package: "libbsd0", Version: "0.11.7-2"},
		{Package: "libmd0", Version: "1.0.4-2"},
		{Package: "libc6", Version: "2.36-9+deb12u14"},
	}
}

// Where nft sits in the kube-proxy image, and where the libraries and the
// ELF interpreter of every Debian program sit in an image.
const (
	nftPath      = "/usr/sbin/nft"
	debianLibDir = "/lib/x86_64-linux-gnu"
	debianLoader = "/lib64/ld-linux-x86-64.so.2"
)

// nftFiles fetches the pinned packages (cached under the payload cache) and
// returns the layer files: nft, every library it needs (its DT_NEEDED
// entries, transitively, resolved in the unpacked packages) and the ELF
// interpreter.
func (b *Builder) nftFiles(ctx context.Context) ([]File, error) {
	files, err := b.debianFiles(ctx, nftPins(), []string{nftPath})
	if err != nil {
		return nil, fmt.Errorf("nft userspace: %w", err)
	}
	return files, nil
}

// debianFiles fetches pins from Debian bookworm main (cached under the
// payload cache) and returns the layer files for bins (paths inside the
// packages, kept as they are): the programs, every shared library they
// need (DT_NEEDED, transitively, resolved in the unpacked packages) and the
// ELF interpreter.
func (b *Builder) debianFiles(ctx context.Context, pins []kernel.DebPin, bins []string) ([]File, error) {
	if b.goarch() != "amd64" {
		return nil, fmt.Errorf("Debian packages are pinned for amd64 only, not %s", b.goarch())
	}
	cache, err := b.cacheDir()
	if err != nil {
		return nil, err
	}
	dirs, err := kernel.FetchDebian(ctx, filepath.Join(cache, "debian-main"), debianMainSources, pins, b.log())
	if err != nil {
		return nil, err
	}
	find := func(rel string) (string, bool) {
		for _, d := range dirs {
			if p, ok := inRoot(d, rel); ok {
				return p, true
			}
		}
		return "", false
	}
	loader, ok := find(debianLoader)
	if !ok {
		return nil, fmt.Errorf("ELF interpreter %s not in package libc6", debianLoader)
	}
	files := []File{{Path: debianLoader, Source: loader}}
	seen := map[string]bool{}
	for _, bin := range bins {
		src, ok := find(bin)
		if !ok {
			return nil, fmt.Errorf("%s is in none of the pinned packages", bin)
		}
		files = append(files, File{Path: bin, Source: src})
		libs, err := neededClosure(src, func(lib string) (string, bool) {
			for _, dir := range []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"} {
				if p, ok := find(filepath.Join(dir, lib)); ok {
					return p, true
				}
			}
			return "", false
		})
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if !seen[l.name] {
				seen[l.name] = true
				files = append(files, File{Path: debianLibDir + "/" + filepath.Base(l.name), Source: l.path, Mode: 0o644})
			}
		}
	}
	return files, nil
}

// inRoot resolves rel inside the unpacked package root, following symlinks
// (absolute ones relative to root, as the image will see them) without
// ever leaving root; ok is false when the file is not there.
func inRoot(root, rel string) (string, bool) {
	for range 16 {
		p := filepath.Join(root, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return "", false
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return p, fi.Mode().IsRegular()
		}
		target, err := os.Readlink(p)
		if err != nil {
			return "", false
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join("/", filepath.Dir(rel), target)
		}
		rel = filepath.Clean(target)
	}
	return "", false
}

type neededLib struct{ name, path string }

// neededClosure returns the shared libraries bin needs, transitively, in
// the order first needed; resolve maps a soname to a file. The dynamic
// loader itself (an interpreter, never a DT_NEEDED of nft) is left out.
func neededClosure(bin string, resolve func(soname string) (string, bool)) ([]neededLib, error) {
	var out []neededLib
	seen := map[string]bool{}
	queue := []string{bin}
	for len(queue) > 0 {
		f, err := elf.Open(queue[0])
		if err != nil {
			return nil, err
		}
		needed, err := f.ImportedLibraries()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", queue[0], err)
		}
		from := queue[0]
		queue = queue[1:]
		for _, n := range needed {
			if seen[n] || strings.HasPrefix(n, "ld-linux") {
				continue
			}
			seen[n] = true
			p, ok := resolve(n)
			if !ok {
				return nil, fmt.Errorf("%s needs %s, which no pinned package holds: add its package to the pins", filepath.Base(from), n)
			}
			out = append(out, neededLib{name: n, path: p})
			queue = append(queue, p)
		}
	}
	return out, nil
}
