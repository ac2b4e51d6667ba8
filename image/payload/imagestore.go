package payload

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// An image store is how system.sqfs carries its images: an OCI image layout
// (oci-layout, index.json, blobs/sha256/ with the manifests and configs)
// whose layers are not tar blobs but directories, layers/<diff ID hex>/,
// each holding its layer's files the way containerd's overlayfs snapshotter
// keeps a committed snapshot. A node registers them with containerd in place
// (initagent/imagestore): nothing is hashed or unpacked at boot, and a layer
// file that is also a host binary is a hard link to it, one copy in the
// squashfs. The manifests still describe each layer by the digest and size
// of its plain tar, so the images are the ones an OCI archive would give.
const (
	ImageStoreIndex  = "index.json"
	ImageStoreBlobs  = "blobs/sha256"
	ImageStoreLayers = "layers"
)

// ImageStore writes the images into dir as an image store (see above).
// Layers must be uncompressed (ImageSpec.Uncompressed). It returns, for
// each layer directory under dir, the name of the first image using it.
func ImageStore(dir string, images ...ImageSpec) (map[string]string, error) {
	if len(images) == 0 {
		return nil, errors.New("image store: no images")
	}
	blobs := newBlobStore()
	defer blobs.close()
	layers := map[string]Layer{}
	layerImage := map[string]string{}
	var current string
	addLayer := func(l Layer, mtime time.Time, compress bool) (Descriptor, string, error) {
		if compress {
			return Descriptor{}, "", errors.New("image store layers are directories: set ImageSpec.Uncompressed")
		}
		h := sha256.New()
		cw := &countingWriter{w: h}
		if err := writeLayerTar(cw, l, mtime); err != nil {
			return Descriptor{}, "", err
		}
		d := hashDigest(h)
		if _, seen := layers[d]; !seen {
			layers[d], layerImage[d] = l, current
		}
		return Descriptor{Digest: d, Size: cw.n}, d, nil
	}
	index := Index{SchemaVersion: 2, MediaType: MediaTypeIndex}
	seen := map[string]bool{}
	for _, img := range images {
		if err := validateImage(img); err != nil {
			return nil, err
		}
		if seen[img.Name] {
			return nil, fmt.Errorf("image store: image %q given twice", img.Name)
		}
		seen[img.Name], current = true, img.Name
		desc, err := addImage(blobs, img, addLayer)
		if err != nil {
			return nil, fmt.Errorf("oci image %s: %w", img.Name, err)
		}
		index.Manifests = append(index.Manifests, desc)
	}
	sort.Slice(index.Manifests, func(i, j int) bool {
		return index.Manifests[i].Annotations[AnnotationImageName] < index.Manifests[j].Annotations[AnnotationImageName]
	})
	if err := os.MkdirAll(filepath.Join(dir, ImageStoreBlobs), 0o755); err != nil {
		return nil, err
	}
	for _, d := range blobs.sorted() {
		if err := os.WriteFile(filepath.Join(dir, ImageStoreBlobs, strings.TrimPrefix(d, "sha256:")), blobs.mem[d], 0o644); err != nil {
			return nil, err
		}
	}
	owners := map[string]string{}
	for d, l := range layers {
		rel := path.Join(ImageStoreLayers, strings.TrimPrefix(d, "sha256:"))
		if err := writeLayerDir(filepath.Join(dir, rel), l); err != nil {
			return nil, fmt.Errorf("image store layer of %s: %w", layerImage[d], err)
		}
		owners[rel] = layerImage[d]
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ImageStoreIndex), indexJSON, 0o644); err != nil {
		return nil, err
	}
	return owners, os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(ociLayoutFileContent), 0o644)
}

// writeLayerDir lays out a layer's files under root as its tar would
// unpack: parents 0755, symlinks, files with their modes. A file from a
// host file with the same mode is a hard link to it.
func writeLayerDir(root string, l Layer) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for _, f := range l.Files {
		dst := filepath.Join(root, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		mode := f.Mode.Perm()
		if mode == 0 {
			mode = 0o755
		}
		var err error
		switch {
		case f.Symlink != "":
			err = os.Symlink(f.Symlink, dst)
		case f.Source != "":
			err = linkOrCopy(f.Source, dst, mode)
		default:
			err = os.WriteFile(dst, f.Data, mode)
			if err == nil {
				err = os.Chmod(dst, mode) // WriteFile's mode passes the umask
			}
		}
		if err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
	}
	return filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.IsDir() {
			return err
		}
		return os.Chmod(p, 0o755)
	})
}

// linkOrCopy makes dst the file src with mode: a hard link when src has
// that mode and both are on one filesystem (the squashfs then stores it
// once), otherwise a copy.
func linkOrCopy(src, dst string, mode os.FileMode) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("source %s: not a regular file", src)
	}
	if fi.Mode().Perm() == mode && os.Link(src, dst) == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}
