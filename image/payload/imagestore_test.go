package payload

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The image store describes the same images an OCI archive holds: equal
// indexes, manifests and configs, and each layer's directory holds the
// files of the layer tar whose digest the manifest names.
func TestImageStoreMatchesArchive(t *testing.T) {
	images := testImages(t, true)
	var archive bytes.Buffer
	if err := OCIArchive(&archive, images...); err != nil {
		t.Fatal(err)
	}
	_, files, _ := readArchive(t, archive.Bytes())
	store := t.TempDir()
	owners, err := ImageStore(store, images...)
	if err != nil {
		t.Fatal(err)
	}
	index, err := os.ReadFile(filepath.Join(store, ImageStoreIndex))
	if err != nil || !bytes.Equal(index, files["index.json"]) {
		t.Fatalf("store index.json = %s (%v), archive's = %s", index, err, files["index.json"])
	}
	var stored []string
	for name, data := range files {
		digest, isBlob := strings.CutPrefix(name, "blobs/sha256/")
		if !isBlob || digest == "" {
			continue
		}
		got, err := os.ReadFile(filepath.Join(store, ImageStoreBlobs, digest))
		layer := filepath.Join(store, ImageStoreLayers, digest)
		switch {
		case err == nil:
			if !bytes.Equal(got, data) {
				t.Errorf("blob %s differs from the archive's", digest)
			}
			stored = append(stored, digest)
		case dirExists(layer):
			_, layerFiles, _ := readArchive(t, data)
			for member, content := range layerFiles {
				if strings.HasSuffix(member, "/") {
					continue
				}
				p := filepath.Join(layer, member)
				fi, err := os.Lstat(p)
				if err != nil {
					t.Errorf("layer %s lacks %s", digest[:12], member)
					continue
				}
				if fi.Mode()&os.ModeSymlink == 0 {
					if got, _ := os.ReadFile(p); !bytes.Equal(got, content) {
						t.Errorf("layer %s %s differs from the tar member", digest[:12], member)
					}
				}
			}
			if owners[filepath.Join(ImageStoreLayers, digest)] == "" {
				t.Errorf("layer %s has no owner in %v", digest[:12], owners)
			}
		default:
			t.Errorf("archive blob %s is neither a store blob nor a layer directory", digest)
		}
	}
	if len(stored) != 6 { // 3 manifests, 3 configs
		t.Errorf("store has %d manifest and config blobs, want 6", len(stored))
	}
}

// A layer file from a host file is a hard link to it: one inode, stored
// once in the squashfs.
func TestImageStoreLinksSources(t *testing.T) {
	images := testImages(t, true)
	src := images[0].Layers[0].Files[0].Source
	store := t.TempDir()
	if _, err := ImageStore(store, images...); err != nil {
		t.Fatal(err)
	}
	matches, _ := filepath.Glob(filepath.Join(store, ImageStoreLayers, "*", "usr/local/bin/kube"))
	if len(matches) != 1 {
		t.Fatalf("kube in %d layers, want 1 (the shared layer stored once)", len(matches))
	}
	if !sameInode(t, src, matches[0]) {
		t.Error("the layer's kube is a copy, want a hard link to the source")
	}
	if fi, _ := os.Stat(filepath.Join(filepath.Dir(matches[0]), "..", "..", "..")); fi.Mode().Perm() != 0o755 {
		t.Errorf("layer directory mode %v, want 0755", fi.Mode().Perm())
	}
	if _, err := ImageStore(t.TempDir(), testImages(t, false)...); err == nil || !strings.Contains(err.Error(), "Uncompressed") {
		t.Errorf("gzip layers: %v, want an error naming Uncompressed", err)
	}
}

func TestCheckNoDuplicates(t *testing.T) {
	stage := t.TempDir()
	write := func(rel, content string) string {
		p := filepath.Join(stage, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kube := write("usr/bin/kube", "the multi-call binary")
	write("usr/bin/containerd", "containerd")
	os.MkdirAll(filepath.Join(stage, "layers/a/usr/local/bin"), 0o755)
	if err := os.Link(kube, filepath.Join(stage, "layers/a/usr/local/bin/kube")); err != nil {
		t.Fatal(err)
	}
	if err := checkNoDuplicates(stage); err != nil {
		t.Errorf("hard links only: %v", err)
	}
	write("layers/b/usr/local/bin/kube", "the multi-call binary")
	err := checkNoDuplicates(stage)
	if err == nil || !strings.Contains(err.Error(), "layers/b/usr/local/bin/kube") {
		t.Errorf("a copied binary: %v, want an error naming it", err)
	}
	os.Remove(filepath.Join(stage, "layers/b/usr/local/bin/kube"))
	var archive bytes.Buffer
	if err := OCIArchive(&archive, testImages(t, true)...); err != nil {
		t.Fatal(err)
	}
	write("images/control-plane.tar", archive.String())
	if err := checkNoDuplicates(stage); err == nil || !strings.Contains(err.Error(), "control-plane.tar is a tar archive") {
		t.Errorf("an image archive: %v, want an error naming it", err)
	}
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func sameInode(t *testing.T, a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return fa.Sys().(*syscall.Stat_t).Ino == fb.Sys().(*syscall.Stat_t).Ino
}

// The size report counts a hard-linked binary once, for the host component
// that owns it, and packs each component.
func TestComponentSizes(t *testing.T) {
	needTool(t, "mksquashfs", "squashfs-tools")
	stage := filepath.Join(t.TempDir(), "stage")
	kube := filepath.Join(stage, "usr/bin/kube")
	layer := filepath.Join(stage, "usr/share/ballast/images/layers/abc/usr/local/bin/kube")
	for _, d := range []string{filepath.Dir(kube), filepath.Dir(layer), filepath.Join(stage, "opt/cni/bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(kube, bytes.Repeat([]byte("kube binary "), 50000), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(kube, layer); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, "opt/cni/bin/bridge"), []byte("bridge"), 0o755); err != nil {
		t.Fatal(err)
	}
	sizes, err := componentSizes(context.Background(), stage, map[string]string{
		"usr/bin/kube": Kubernetes, "usr/share/ballast/images/layers/abc": "image layer of kube-apiserver",
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]ComponentSize{}
	for _, c := range sizes.Components {
		got[c.Component] = c
	}
	if k := got[Kubernetes]; k.Files != 1 || k.Bytes != 600000 || k.Packed <= 0 || k.Packed >= k.Bytes {
		t.Errorf("kubernetes: %+v, want 1 file of 600000 bytes packed smaller", k)
	}
	if _, ok := got["image layer of kube-apiserver"]; ok {
		t.Errorf("the layer's hard link to kube counted again: %+v", sizes.Components)
	}
	if o := got["other"]; o.Files != 1 || o.Bytes != 6 {
		t.Errorf("unowned files: %+v, want bridge under other", o)
	}
}
