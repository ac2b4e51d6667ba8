package payload

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/ballast-os/ballast/image/disk"
)

// ComponentSize is one line of system.sqfs's size report: a component's
// files (each inode once), their bytes, and the bytes they take packed
// alone with the system image's compression.
type ComponentSize struct {
	Component string `json:"component"`
	Files     int    `json:"files"`
	Bytes     int64  `json:"bytes"`
	Packed    int64  `json:"packed"`
}

// Sizes is the size report written next to a system image (<image>.sizes.json).
type Sizes struct {
	Image      int64           `json:"image"`
	Components []ComponentSize `json:"components"`
}

// ReadSizes reads the size report of the system image at sqfs.
func ReadSizes(sqfs string) (Sizes, error) {
	var s Sizes
	data, err := os.ReadFile(sqfs + ".sizes.json")
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(data, &s)
}

func writeSizes(sqfs string, s Sizes) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(sqfs+".sizes.json", append(data, '\n'), 0o644)
}

func (b *Builder) logSizes(role string, s Sizes) {
	for _, c := range s.Components {
		b.log().Info("system image component", "role", role, "component", c.Component, "files", c.Files,
			"mb", fmt.Sprintf("%.1f", float64(c.Bytes)/1e6), "packed_mb", fmt.Sprintf("%.1f", float64(c.Packed)/1e6))
	}
}

// componentSizes attributes every regular file of the staged tree to a
// component (owners maps a path, or a directory above it, to one; the rest
// is "other"), counting a hard-linked file once for the owner met first
// (host binaries before image layers), and packs each component's files
// alone to measure what it costs in the squashfs.
func componentSizes(ctx context.Context, stage string, owners map[string]string) (Sizes, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	files := map[string][]string{}
	var sizes Sizes
	byName := map[string]*ComponentSize{}
	owner := func(rel string) string {
		for p := rel; p != "." && p != "/"; p = filepath.Dir(p) {
			if c, ok := owners[p]; ok {
				return c
			}
		}
		return "other"
	}
	// Host paths first, so a binary hard-linked into an image layer counts for its component.
	var rels []string
	err := filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(stage, p)
		rels = append(rels, rel)
		return nil
	})
	if err != nil {
		return sizes, err
	}
	imageDir := strings.TrimPrefix(SystemImageDir, "/") + "/"
	sort.SliceStable(rels, func(i, j int) bool {
		return !strings.HasPrefix(rels[i], imageDir) && strings.HasPrefix(rels[j], imageDir)
	})
	for _, rel := range rels {
		fi, err := os.Stat(filepath.Join(stage, rel))
		if err != nil {
			return sizes, err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if seen[inode{st.Dev, st.Ino}] {
			continue
		}
		seen[inode{st.Dev, st.Ino}] = true
		c := owner(rel)
		if byName[c] == nil {
			byName[c] = &ComponentSize{Component: c}
		}
		byName[c].Files++
		byName[c].Bytes += fi.Size()
		files[c] = append(files[c], rel)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(stage), ".sizes-")
	if err != nil {
		return sizes, err
	}
	defer os.RemoveAll(tmp)
	for c, cs := range byName {
		dir := filepath.Join(tmp, fmt.Sprintf("c%d", len(sizes.Components)))
		for _, rel := range files[c] {
			dst := filepath.Join(dir, rel)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return sizes, err
			}
			if err := os.Link(filepath.Join(stage, rel), dst); err != nil {
				return sizes, err
			}
		}
		out := dir + ".sqfs"
		if err := disk.SquashFS(ctx, dir, out); err != nil {
			return sizes, err
		}
		fi, err := os.Stat(out)
		if err != nil {
			return sizes, err
		}
		cs.Packed = fi.Size()
		sizes.Components = append(sizes.Components, *cs)
	}
	sort.Slice(sizes.Components, func(i, j int) bool { return sizes.Components[i].Packed > sizes.Components[j].Packed })
	return sizes, nil
}

// checkNoDuplicates fails when two different inodes of the staged tree
// hold the same bytes (the squashfs would store them once only by luck of
// its duplicate detection; hard links are how a file is in two places), or
// when a file is a tar archive (whose members no squashfs can share).
func checkNoDuplicates(stage string) error {
	type inode struct{ dev, ino uint64 }
	bySize := map[int64][]string{}
	seen := map[inode]bool{}
	err := filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Size() == 0 || seen[inode{st.Dev, st.Ino}] {
			return nil
		}
		if isTar(p) {
			rel, _ := filepath.Rel(stage, p)
			return fmt.Errorf("%s is a tar archive: its files would be stored again inside it (images go to the image store as directories)", rel)
		}
		seen[inode{st.Dev, st.Ino}] = true
		bySize[fi.Size()] = append(bySize[fi.Size()], p)
		return nil
	})
	if err != nil {
		return err
	}
	var dups []string
	for _, paths := range bySize {
		if len(paths) < 2 {
			continue
		}
		byHash := map[[sha256.Size]byte]string{}
		for _, p := range paths {
			sum, err := fileSum(p)
			if err != nil {
				return err
			}
			if first, ok := byHash[sum]; ok {
				a, _ := filepath.Rel(stage, first)
				b, _ := filepath.Rel(stage, p)
				dups = append(dups, a+" = "+b)
				continue
			}
			byHash[sum] = p
		}
	}
	if len(dups) > 0 {
		sort.Strings(dups)
		return fmt.Errorf("the same bytes are stored twice (link the second to the first): %s", strings.Join(dups, "; "))
	}
	return nil
}

func fileSum(p string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(p)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// isTar reports whether p starts like a POSIX tar (the ustar magic at 257).
func isTar(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 5)
	_, err = f.ReadAt(magic, 257)
	return err == nil && string(magic) == "ustar"
}
