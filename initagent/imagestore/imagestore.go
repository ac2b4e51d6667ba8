// Package imagestore registers the images a system image carries with
// containerd in place, before containerd starts: each layer directory of
// the image store (image/payload.ImageStore) becomes a committed overlayfs
// snapshot whose fs is a symlink into the read-only system image, and the
// manifests and configs (a few KB) go to containerd's content store with
// the references its garbage collector follows. Nothing is hashed or
// unpacked, so first boot and every boot start the control plane at once;
// a system image with other images replaces them (ones it no longer
// carries are deleted, their snapshots collected).
//
// It uses containerd's own metadata, content and snapshotter packages on
// containerd's root, so the records are the ones containerd writes; the
// library version must be the payload's containerd version.
package imagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// Where containerd keeps its state under its root (its plugin IDs).
const (
	metadataDir    = "io.containerd.metadata.v1.bolt"
	contentDir     = "io.containerd.content.v1.content"
	snapshotterDir = "io.containerd.snapshotter.v1.overlayfs"
)

const (
	// Snapshotter is the snapshotter the images are registered with (the CRI plugin's).
	Snapshotter = "overlayfs"
	// LabelSystemImage marks an image registered from the system image.
	LabelSystemImage = "ballast.io/system-image"
	// labelPinned keeps kubelet's image garbage collection off the system images.
	labelPinned      = "io.cri-containerd.pinned"
	annotationName   = "io.containerd.image.name"
	storeLayers      = "layers"
	registerKeyShape = "ballast-register %s"
)

// Options says what to register where.
type Options struct {
	// Store is the image store directory of the mounted system image.
	Store string
	// Root is containerd's root; containerd must not be running.
	Root string
	// Namespace is the containerd namespace, k8s.io for the CRI.
	Namespace string
	Log       *slog.Logger
}

// Result says what Register did.
type Result struct {
	// Images are the names registered; Added and Removed the changes.
	Images, Added, Removed []string
	// Layers counts snapshots created this time (0 when all were there).
	Layers int
}

type storeImage struct {
	name             string
	manifest, config ocispec.Descriptor
	manifestData     []byte
	configData       []byte
	diffIDs          []digest.Digest
}

// Register makes the store's images containerd's (see the package comment).
// It is idempotent: a second run with the same store changes nothing.
func Register(ctx context.Context, o Options) (Result, error) {
	var res Result
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	imgs, err := readStore(o.Store)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(filepath.Join(o.Root, metadataDir), 0o711); err != nil {
		return res, err
	}
	opts := *bolt.DefaultOptions
	opts.NoFreelistSync, opts.Timeout = true, 5*time.Second // as containerd opens it
	bdb, err := bolt.Open(filepath.Join(o.Root, metadataDir, "meta.db"), 0o644, &opts)
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return res, fmt.Errorf("containerd's metadata %s is locked: containerd must not run while images are registered", filepath.Join(o.Root, metadataDir))
		}
		return res, fmt.Errorf("containerd metadata: %w", err)
	}
	defer bdb.Close()
	cs, err := local.NewStore(filepath.Join(o.Root, contentDir))
	if err != nil {
		return res, fmt.Errorf("containerd content store: %w", err)
	}
	overlayRoot := filepath.Join(o.Root, snapshotterDir)
	sn, err := overlay.NewSnapshotter(overlayRoot)
	if err != nil {
		return res, fmt.Errorf("containerd overlayfs snapshotter: %w", err)
	}
	defer sn.Close()
	db := metadata.NewDB(bdb, cs, map[string]snapshots.Snapshotter{Snapshotter: sn})
	if err := db.Init(ctx); err != nil {
		return res, fmt.Errorf("containerd metadata: %w", err)
	}
	ctx = namespaces.WithNamespace(ctx, o.Namespace)
	r := registrar{store: o.Store, snapshotsDir: filepath.Join(overlayRoot, "snapshots"),
		sn: db.Snapshotter(Snapshotter), cs: db.ContentStore(), is: metadata.NewImageStore(db)}
	for _, img := range imgs {
		added, err := r.image(ctx, img)
		if err != nil {
			return res, fmt.Errorf("register image %s: %w", img.name, err)
		}
		res.Images = append(res.Images, img.name)
		if added {
			res.Added = append(res.Added, img.name)
		}
	}
	res.Layers = r.layers
	existing, err := r.is.List(ctx, "labels."+quoteFilter(LabelSystemImage))
	if err != nil {
		return res, err
	}
	for _, e := range existing {
		if slices.Contains(res.Images, e.Name) {
			continue
		}
		if err := r.is.Delete(ctx, e.Name); err != nil && !errdefs.IsNotFound(err) {
			return res, fmt.Errorf("remove image %s, which the system image no longer carries: %w", e.Name, err)
		}
		res.Removed = append(res.Removed, e.Name)
	}
	if len(res.Removed) > 0 {
		// What only the removed images used goes now, not at containerd's next collection.
		if _, err := db.GarbageCollect(ctx); err != nil {
			return res, fmt.Errorf("containerd garbage collection: %w", err)
		}
	}
	log.Debug("images registered", "images", len(res.Images), "added", res.Added, "removed", res.Removed, "layers", res.Layers)
	return res, nil
}

// quoteFilter quotes a label key for a containerd filter (its dots and slashes).
func quoteFilter(key string) string { return `"` + key + `"` }

// readStore reads and checks the store's index, manifests and configs.
func readStore(store string) ([]storeImage, error) {
	data, err := os.ReadFile(filepath.Join(store, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(data, &index); err != nil {
		return nil, fmt.Errorf("image store %s/index.json: %w", store, err)
	}
	var out []storeImage
	for _, m := range index.Manifests {
		img := storeImage{name: m.Annotations[annotationName], manifest: m}
		if img.name == "" {
			return nil, fmt.Errorf("image store %s/index.json: manifest %s has no %s annotation", store, m.Digest, annotationName)
		}
		img.manifest.Annotations, img.manifest.Platform = nil, nil
		if img.manifestData, err = readBlob(store, m); err != nil {
			return nil, fmt.Errorf("image %s: %w", img.name, err)
		}
		var manifest ocispec.Manifest
		if err := json.Unmarshal(img.manifestData, &manifest); err != nil {
			return nil, fmt.Errorf("image %s manifest: %w", img.name, err)
		}
		img.config = manifest.Config
		if img.configData, err = readBlob(store, manifest.Config); err != nil {
			return nil, fmt.Errorf("image %s: %w", img.name, err)
		}
		var config ocispec.Image
		if err := json.Unmarshal(img.configData, &config); err != nil {
			return nil, fmt.Errorf("image %s config: %w", img.name, err)
		}
		img.diffIDs = config.RootFS.DiffIDs
		if len(img.diffIDs) == 0 || len(img.diffIDs) != len(manifest.Layers) {
			return nil, fmt.Errorf("image %s: %d layers but %d diff IDs", img.name, len(manifest.Layers), len(img.diffIDs))
		}
		for _, d := range img.diffIDs {
			if err := d.Validate(); err != nil {
				return nil, fmt.Errorf("image %s diff ID %q: %w", img.name, d, err)
			}
			if fi, err := os.Stat(layerDir(store, d)); err != nil || !fi.IsDir() {
				return nil, fmt.Errorf("image %s: layer %s has no directory in the image store", img.name, d)
			}
		}
		out = append(out, img)
	}
	return out, nil
}

// readBlob reads a small blob (manifest or config) and checks its digest.
func readBlob(store string, d ocispec.Descriptor) ([]byte, error) {
	if err := d.Digest.Validate(); err != nil || d.Digest.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("blob digest %q: want sha256:<hex>", d.Digest)
	}
	data, err := os.ReadFile(filepath.Join(store, "blobs", "sha256", d.Digest.Encoded()))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != d.Digest.Encoded() || int64(len(data)) != d.Size {
		return nil, fmt.Errorf("blob %s: content does not match its digest and size", d.Digest)
	}
	return data, nil
}

func layerDir(store string, diffID digest.Digest) string {
	return filepath.Join(store, storeLayers, diffID.Encoded())
}

type registrar struct {
	store, snapshotsDir string
	sn                  snapshots.Snapshotter
	cs                  content.Store
	is                  images.Store
	layers              int
}

// image registers one image's snapshots, blobs and record; it reports
// whether the name is new or pointed at something else before.
func (r *registrar) image(ctx context.Context, img storeImage) (bool, error) {
	chain := identity.ChainIDs(slices.Clone(img.diffIDs))
	for i, diffID := range img.diffIDs {
		parent := ""
		if i > 0 {
			parent = chain[i-1].String()
		}
		if err := r.layer(ctx, chain[i].String(), parent, diffID); err != nil {
			return false, fmt.Errorf("layer %s: %w", diffID, err)
		}
	}
	if err := r.blob(ctx, img.config, img.configData, map[string]string{
		"containerd.io/gc.ref.snapshot." + Snapshotter: chain[len(chain)-1].String(),
	}); err != nil {
		return false, err
	}
	if err := r.blob(ctx, img.manifest, img.manifestData, map[string]string{
		"containerd.io/gc.ref.content.config": img.config.Digest.String(),
	}); err != nil {
		return false, err
	}
	record := images.Image{Name: img.name, Target: img.manifest, Labels: map[string]string{LabelSystemImage: "true", labelPinned: "pinned"}}
	old, err := r.is.Get(ctx, img.name)
	switch {
	case errdefs.IsNotFound(err):
		_, err = r.is.Create(ctx, record)
		return true, err
	case err != nil:
		return false, err
	case old.Target.Digest == record.Target.Digest && old.Labels[LabelSystemImage] == "true" && old.Labels[labelPinned] == "pinned":
		return false, nil
	}
	_, err = r.is.Update(ctx, record, "target", "labels."+LabelSystemImage, "labels."+labelPinned)
	return old.Target.Digest != record.Target.Digest, err
}

// blob puts a small blob into the content store with GC labels.
func (r *registrar) blob(ctx context.Context, desc ocispec.Descriptor, data []byte, labels map[string]string) error {
	if err := content.WriteBlob(ctx, r.cs, "ballast-register-"+desc.Digest.Encoded(), bytes.NewReader(data), desc,
		content.WithLabels(labels)); err != nil {
		return fmt.Errorf("content %s: %w", desc.Digest, err)
	}
	// A blob already there keeps its labels through WriteBlob: set ours.
	info := content.Info{Digest: desc.Digest, Labels: labels}
	var paths []string
	for k := range labels {
		paths = append(paths, "labels."+k)
	}
	if _, err := r.cs.Update(ctx, info, paths...); err != nil {
		return fmt.Errorf("content %s labels: %w", desc.Digest, err)
	}
	return nil
}

// layer makes chainID a committed snapshot whose fs is a symlink to the
// layer's directory in the store, or checks (and repoints) the one there.
// A snapshot unpacked by an earlier import is a real directory: kept.
func (r *registrar) layer(ctx context.Context, chainID, parent string, diffID digest.Digest) error {
	target := layerDir(r.store, diffID)
	if _, err := r.sn.Stat(ctx, chainID); err == nil {
		return r.repoint(ctx, chainID, target)
	} else if !errdefs.IsNotFound(err) {
		return err
	}
	key := fmt.Sprintf(registerKeyShape, chainID)
	labels := map[string]string{snapshots.LabelSnapshotRef: chainID, snapshots.LabelSnapshotDiffID: diffID.String()}
	mounts, err := r.sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
	if errdefs.IsAlreadyExists(err) { // left by an interrupted registration
		if err := r.sn.Remove(ctx, key); err != nil {
			return err
		}
		mounts, err = r.sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
	}
	if err != nil {
		return err
	}
	fs, err := r.upperDir(mounts)
	if err == nil {
		err = os.Remove(fs)
	}
	if err == nil {
		err = os.Symlink(target, fs)
	}
	if err == nil {
		err = r.sn.Commit(ctx, chainID, key, snapshots.WithLabels(labels))
	}
	if err != nil {
		if rerr := r.sn.Remove(ctx, key); rerr != nil && !errdefs.IsNotFound(rerr) {
			err = errors.Join(err, rerr)
		}
		return err
	}
	r.layers++
	return nil
}

// repoint makes a registered snapshot's fs symlink point at target (the
// system image may be mounted elsewhere than when it was registered).
func (r *registrar) repoint(ctx context.Context, chainID, target string) error {
	key := fmt.Sprintf(registerKeyShape, chainID) + " view"
	mounts, err := r.sn.View(ctx, key, chainID)
	if errdefs.IsAlreadyExists(err) {
		if err := r.sn.Remove(ctx, key); err != nil {
			return err
		}
		mounts, err = r.sn.View(ctx, key, chainID)
	}
	if err != nil {
		return err
	}
	defer r.sn.Remove(ctx, key)
	// A view of one layer binds its fs; of more, the first lowerdir is the top layer's.
	fs := ""
	if len(mounts) == 1 && mounts[0].Type == "bind" {
		fs = mounts[0].Source
	} else if len(mounts) == 1 && mounts[0].Type == "overlay" {
		for _, o := range mounts[0].Options {
			if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				fs, _, _ = strings.Cut(v, ":")
			}
		}
	}
	if !strings.HasPrefix(fs, r.snapshotsDir+string(filepath.Separator)) || filepath.Base(fs) != "fs" {
		return fmt.Errorf("view of %s: unexpected mounts %v", chainID, mounts)
	}
	fi, err := os.Lstat(fs)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink == 0 {
		return nil // unpacked by an import: its own copy
	}
	if now, err := os.Readlink(fs); err == nil && now == target {
		return nil
	}
	tmp := fs + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, fs)
}

// upperDir is the directory a prepared snapshot writes to: the bind
// source of a first layer, the overlay upperdir of a later one.
func (r *registrar) upperDir(mounts []mount.Mount) (string, error) {
	if len(mounts) == 1 {
		m := mounts[0]
		dir := ""
		switch m.Type {
		case "bind":
			dir = m.Source
		case "overlay":
			for _, o := range m.Options {
				if v, ok := strings.CutPrefix(o, "upperdir="); ok {
					dir = v
				}
			}
		}
		if dir != "" && strings.HasPrefix(dir, r.snapshotsDir+string(filepath.Separator)) && filepath.Base(dir) == "fs" {
			return dir, nil
		}
	}
	return "", fmt.Errorf("prepared snapshot: unexpected mounts %v", mounts)
}
