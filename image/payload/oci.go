package payload

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// OCI media types and annotations (github.com/opencontainers/image-spec,
// specs-go/v1/mediatype.go and annotations.go; containerd's images/annotations.go).
const (
	MediaTypeIndex       = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest    = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig      = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer       = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeLayerGzip   = "application/vnd.oci.image.layer.v1.tar+gzip"
	AnnotationRefName    = "org.opencontainers.image.ref.name"
	AnnotationImageName  = "io.containerd.image.name"
	ociLayoutFileContent = `{"imageLayoutVersion":"1.0.0"}`
)

// ImageSpec describes one image of an OCI archive: a scratch image of the
// given layers.
type ImageSpec struct {
	// Name is the full reference with tag, e.g. registry.k8s.io/pause:3.10.2.
	Name string
	// Layers, bottom first. Layers with the same files get the same digest
	// and are stored once, in the archive and in containerd.
	Layers []Layer
	// Entrypoint, Cmd, Env and WorkingDir go to the image config.
	Entrypoint, Cmd, Env []string
	WorkingDir           string
	// Architecture and OS of the platform; empty means amd64 and linux.
	Architecture, OS string
	// Created is the config's creation time and every file's mtime; the
	// zero value means the Unix epoch (reproducible builds).
	Created time.Time
	// Uncompressed stores layers as plain tar (MediaTypeLayer) instead of
	// gzip: smaller once the archive sits in a compressed squashfs.
	Uncompressed bool
}

// Layer is a set of files, written sorted by path with parent directories
// added, owned by root.
type Layer struct {
	Files []File
}

// File is one entry of a layer.
type File struct {
	// Path inside the image, e.g. /usr/local/bin/etcd.
	Path string
	// Source is a host file to copy; Data is the content if Source is empty.
	Source string
	Data   []byte
	// Symlink, if set, makes this a symbolic link to it (Source/Data unused).
	Symlink string
	// Mode is the permission bits; zero means 0755.
	Mode fs.FileMode
}

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *Platform         `json:"platform,omitempty"`
}

// Platform of an index entry.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Index is index.json of an OCI image layout.
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// ImageConfig is an OCI image configuration (the fields used here).
type ImageConfig struct {
	Created      string          `json:"created"`
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Config       ContainerConfig `json:"config"`
	RootFS       RootFS          `json:"rootfs"`
}

// ContainerConfig is the "config" member of ImageConfig.
type ContainerConfig struct {
	Env        []string `json:"Env,omitempty"`
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
}

// RootFS lists the uncompressed layer digests.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// OCIArchive writes an OCI image layout as a tar (oci-layout, index.json,
// blobs/sha256/...) holding the images, for `ctr images import` or the
// containerd client's Import. The index names each manifest with
// AnnotationRefName (the tag) and AnnotationImageName (the full name).
// Output is deterministic: sorted entries, fixed times, root owner.
// Blobs shared by several images are written once.
func OCIArchive(w io.Writer, images ...ImageSpec) error {
	if len(images) == 0 {
		return errors.New("oci archive: no images")
	}
	blobs := newBlobStore()
	defer blobs.close()
	index := Index{SchemaVersion: 2, MediaType: MediaTypeIndex}
	seen := map[string]bool{}
	for _, img := range images {
		if err := validateImage(img); err != nil {
			return err
		}
		if seen[img.Name] {
			return fmt.Errorf("oci archive: image %q given twice", img.Name)
		}
		seen[img.Name] = true
		desc, err := addImage(blobs, img, blobs.addLayer)
		if err != nil {
			return fmt.Errorf("oci image %s: %w", img.Name, err)
		}
		index.Manifests = append(index.Manifests, desc)
	}
	sort.Slice(index.Manifests, func(i, j int) bool {
		return index.Manifests[i].Annotations[AnnotationImageName] < index.Manifests[j].Annotations[AnnotationImageName]
	})
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}
	mtime := epoch(images[0].Created)
	tw := tar.NewWriter(w)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: mtime, Format: tar.FormatUSTAR})
	}
	file := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	for _, d := range blobs.sorted() {
		r, err := blobs.open(d)
		if err != nil {
			return err
		}
		err = file("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs.size[d], r)
		r.Close()
		if err != nil {
			return err
		}
	}
	if err := file("index.json", int64(len(indexJSON)), bytes.NewReader(indexJSON)); err != nil {
		return err
	}
	if err := file("oci-layout", int64(len(ociLayoutFileContent)), strings.NewReader(ociLayoutFileContent)); err != nil {
		return err
	}
	return tw.Close()
}

func validateImage(img ImageSpec) error {
	if _, _, ok := splitRef(img.Name); !ok {
		return fmt.Errorf("oci image name %q: want registry/repository:tag, e.g. registry.k8s.io/pause:3.10.2", img.Name)
	}
	if len(img.Layers) == 0 {
		return fmt.Errorf("oci image %s: no layers", img.Name)
	}
	for _, l := range img.Layers {
		for _, f := range l.Files {
			if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
				return fmt.Errorf("oci image %s: file path %q: want a clean absolute path like /usr/local/bin/etcd", img.Name, f.Path)
			}
		}
	}
	return nil
}

// splitRef splits registry/repo:tag at the tag's colon (not a registry port's).
func splitRef(ref string) (name, tag string, ok bool) {
	i := strings.LastIndexByte(ref, ':')
	if i <= 0 || strings.Contains(ref[i+1:], "/") || i == len(ref)-1 {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}

func epoch(t time.Time) time.Time {
	if t.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return t.UTC()
}

// layerAdder stores a layer and returns its descriptor (digest and size of
// the blob as the manifest lists it) and diff ID (digest of the plain tar).
type layerAdder func(l Layer, mtime time.Time, compress bool) (Descriptor, string, error)

func addImage(blobs *blobStore, img ImageSpec, addLayer layerAdder) (Descriptor, error) {
	arch, osName := img.Architecture, img.OS
	if arch == "" {
		arch = "amd64"
	}
	if osName == "" {
		osName = "linux"
	}
	mtime := epoch(img.Created)
	mediaType := MediaTypeLayerGzip
	if img.Uncompressed {
		mediaType = MediaTypeLayer
	}
	cfg := ImageConfig{
		Created: mtime.Format(time.RFC3339), Architecture: arch, OS: osName,
		Config: ContainerConfig{Env: img.Env, Entrypoint: img.Entrypoint, Cmd: img.Cmd, WorkingDir: img.WorkingDir},
		RootFS: RootFS{Type: "layers"},
	}
	manifest := Manifest{SchemaVersion: 2, MediaType: MediaTypeManifest}
	for i, l := range img.Layers {
		desc, diffID, err := addLayer(l, mtime, !img.Uncompressed)
		if err != nil {
			return Descriptor{}, fmt.Errorf("layer %d: %w", i, err)
		}
		desc.MediaType = mediaType
		manifest.Layers = append(manifest.Layers, desc)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return Descriptor{}, err
	}
	manifest.Config = blobs.addBytes(cfgJSON)
	manifest.Config.MediaType = MediaTypeConfig
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return Descriptor{}, err
	}
	desc := blobs.addBytes(manifestJSON)
	desc.MediaType = MediaTypeManifest
	_, tag, _ := splitRef(img.Name)
	desc.Annotations = map[string]string{AnnotationRefName: tag, AnnotationImageName: img.Name}
	desc.Platform = &Platform{Architecture: arch, OS: osName}
	return desc, nil
}

// blobStore holds blobs by digest: small ones in memory, layers in temp files.
type blobStore struct {
	mem   map[string][]byte
	files map[string]string
	size  map[string]int64
}

func newBlobStore() *blobStore {
	return &blobStore{mem: map[string][]byte{}, files: map[string]string{}, size: map[string]int64{}}
}

func (s *blobStore) close() {
	for _, f := range s.files {
		os.Remove(f)
	}
}

func (s *blobStore) addBytes(data []byte) Descriptor {
	d := digestOf(data)
	s.mem[d], s.size[d] = data, int64(len(data))
	return Descriptor{Digest: d, Size: int64(len(data))}
}

func (s *blobStore) sorted() []string {
	out := make([]string, 0, len(s.size))
	for d := range s.size {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

func (s *blobStore) open(d string) (io.ReadCloser, error) {
	if data, ok := s.mem[d]; ok {
		return io.NopCloser(bytes.NewReader(data)), nil
	}
	return os.Open(s.files[d])
}

// addLayer writes the layer tar (gzip'd if compress) to a temp file and
// returns its descriptor and diff ID (digest of the uncompressed tar).
func (s *blobStore) addLayer(l Layer, mtime time.Time, compress bool) (Descriptor, string, error) {
	f, err := os.CreateTemp("", "ballast-layer-*")
	if err != nil {
		return Descriptor{}, "", err
	}
	keep := false
	defer func() {
		f.Close()
		if !keep {
			os.Remove(f.Name())
		}
	}()
	blobHash, diffHash := sha256.New(), sha256.New()
	blob := &countingWriter{w: io.MultiWriter(f, blobHash)}
	var tarOut io.Writer = blob
	var gz *gzip.Writer
	if compress {
		// A fresh header: no name, zero mtime, OS "unknown" — fixed bytes.
		gz, err = gzip.NewWriterLevel(blob, gzip.BestCompression)
		if err != nil {
			return Descriptor{}, "", err
		}
		tarOut = gz
	}
	if err := writeLayerTar(io.MultiWriter(tarOut, diffHash), l, mtime); err != nil {
		return Descriptor{}, "", err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return Descriptor{}, "", err
		}
	}
	if err := f.Close(); err != nil {
		return Descriptor{}, "", err
	}
	d := hashDigest(blobHash)
	if _, dup := s.size[d]; !dup {
		s.files[d], s.size[d], keep = f.Name(), blob.n, true
	}
	return Descriptor{Digest: d, Size: blob.n}, hashDigest(diffHash), nil
}

func writeLayerTar(w io.Writer, l Layer, mtime time.Time) error {
	entries := map[string]File{}
	dirs := map[string]bool{}
	for _, f := range l.Files {
		name := strings.TrimPrefix(f.Path, "/")
		if _, dup := entries[name]; dup || dirs[name] {
			return fmt.Errorf("file %s: given twice", f.Path)
		}
		entries[name] = f
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	names := make([]string, 0, len(entries)+len(dirs))
	for n := range entries {
		if dirs[n] {
			return fmt.Errorf("file %s: is also a parent directory", entries[n].Path)
		}
		names = append(names, n)
	}
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	tw := tar.NewWriter(w)
	for _, n := range names {
		hdr := &tar.Header{Name: n, ModTime: mtime, Format: tar.FormatUSTAR}
		f, isFile := entries[n]
		mode := f.Mode.Perm()
		if mode == 0 {
			mode = 0o755
		}
		switch {
		case !isFile:
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, n+"/", 0o755
		case f.Symlink != "":
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, f.Symlink, 0o777
		default:
			hdr.Typeflag, hdr.Mode = tar.TypeReg, int64(mode)
		}
		if hdr.Typeflag != tar.TypeReg {
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			continue
		}
		if err := writeLayerFile(tw, hdr, f); err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
	}
	return tw.Close()
}

func writeLayerFile(tw *tar.Writer, hdr *tar.Header, f File) error {
	if f.Source == "" {
		hdr.Size = int64(len(f.Data))
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(f.Data)
		return err
	}
	src, err := os.Open(f.Source)
	if err != nil {
		return err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("source %s: not a regular file", f.Source)
	}
	hdr.Size = fi.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.Copy(tw, src)
	return err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func hashDigest(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }
