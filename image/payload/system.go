package payload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ballast-os/ballast/image/disk"
	"github.com/ballast-os/ballast/kernel"
)

// Node roles for Builder.System.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// Where things go inside system.sqfs.
const (
	SystemBinDir       = "/usr/bin"
	SystemCNIBinDir    = "/opt/cni/bin"
	SystemImageDir     = "/usr/share/ballast/images"
	SystemManifestPath = "/usr/share/ballast/payload.json"
	// systemLayout changes whenever this file lays out system.sqfs
	// differently or disk.SquashFS packs it differently, so cached images
	// are not reused across such changes.
	systemLayout = "9"
)

// SystemManifest is the file at SystemManifestPath: what a node finds in its system.sqfs.
type SystemManifest struct {
	Role     string   `json:"role"`
	Versions Versions `json:"versions"`
	// Images names the images of the image store at SystemImageDir.
	Images []string `json:"images"`
}

// System builds what the role needs and packs it into a system.sqfs, cached
// in CacheDir by a hash of its inputs; it returns the file's path.
// Both roles get containerd, runc, mount and umount (u-root's, for
// kubelet's volume mounts), the CNI plugins, kubelet and kubeadm, and an
// image store (ImageStore) with the pause, kube-proxy and CoreDNS images;
// control-plane adds the kube-apiserver, kube-controller-manager,
// kube-scheduler and etcd images.
func (b *Builder) System(ctx context.Context, role string) (string, error) {
	components := []string{Pause, MountTools, CNIPlugins, Runc, Containerd, CoreDNS, Kubernetes}
	switch role {
	case RoleControlPlane:
		components = append(components, Etcd)
	case RoleWorker:
	default:
		return "", fmt.Errorf("system image role %q: want %s or %s", role, RoleControlPlane, RoleWorker)
	}
	bins, err := b.Build(ctx, components...)
	if err != nil {
		return "", err
	}
	etcdTag, pauseTag, err := b.KubeadmImageTags(ctx)
	if err != nil {
		return "", err
	}
	if err := b.checkCoreDNSTag(ctx); err != nil {
		return "", err
	}
	nft, err := b.nftFiles(ctx)
	if err != nil {
		return "", err
	}
	cache, err := b.cacheDir()
	if err != nil {
		return "", err
	}
	key, err := systemKey(role, etcdTag, pauseTag, bins, nftPins())
	if err != nil {
		return "", err
	}
	out := filepath.Join(cache, "system-"+role+"-"+key+".sqfs")
	if _, err := os.Stat(out); err == nil {
		b.log().Info("system image cached", "role", role, "path", out)
		if sizes, err := ReadSizes(out); err == nil {
			b.logSizes(role, sizes)
		}
		return out, nil
	}
	start := time.Now()
	stage, err := os.MkdirTemp(cache, ".system-"+role+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil { // the squashfs root; MkdirTemp made it 0700
		return "", err
	}
	owners, err := b.stageSystem(stage, role, etcdTag, pauseTag, bins, nft)
	if err != nil {
		return "", fmt.Errorf("system image %s: %w", role, err)
	}
	if err := checkNoDuplicates(stage); err != nil {
		return "", fmt.Errorf("system image %s: %w", role, err)
	}
	b.log().Info("system tree staged", "role", role, "elapsed", time.Since(start).Round(100*time.Millisecond))
	t := time.Now()
	if err := SystemImage(ctx, stage, out); err != nil {
		return "", err
	}
	fi, err := os.Stat(out)
	if err != nil {
		return "", err
	}
	b.log().Info("system image built", "role", role, "path", out,
		"size_mb", fmt.Sprintf("%.1f", float64(fi.Size())/1e6),
		"mksquashfs", time.Since(t).Round(100*time.Millisecond), "elapsed", time.Since(start).Round(100*time.Millisecond))
	sizes, err := componentSizes(ctx, stage, owners)
	if err != nil {
		return "", fmt.Errorf("system image %s size report: %w", role, err)
	}
	sizes.Image = fi.Size()
	if err := writeSizes(out, sizes); err != nil {
		return "", err
	}
	b.logSizes(role, sizes)
	return out, nil
}

// systemKey hashes everything system.sqfs is made of: role, layout, image
// tags and each component's build record (versions, Go version, sizes).
func systemKey(role, etcdTag, pauseTag string, bins map[string]string, debs []kernel.DebPin) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "layout=%s\nrole=%s\netcd=%s\npause=%s\n", systemLayout, role, etcdTag, pauseTag)
	for _, d := range debs {
		fmt.Fprintf(h, "deb=%s=%s\n", d.Package, d.Version)
	}
	dirs := map[string]bool{}
	for _, p := range bins {
		dirs[filepath.Dir(p)] = true
	}
	sorted := make([]string, 0, len(dirs))
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted)
	for _, d := range sorted {
		rec, err := os.ReadFile(filepath.Join(d, "build.json"))
		if err != nil {
			return "", fmt.Errorf("payload cache entry %s: %w (delete the directory to rebuild it)", d, err)
		}
		fmt.Fprintf(h, "%s\n%s\n", filepath.Base(d), rec)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// stageSystem lays out system.sqfs's tree in stage and returns which
// component each host file and image layer directory belongs to (paths
// relative to stage), for the size report.
func (b *Builder) stageSystem(stage, role, etcdTag, pauseTag string, bins map[string]string, nft []File) (map[string]string, error) {
	v := b.versions()
	owners := map[string]string{}
	put := func(dir, name, component string) error {
		rel := filepath.Join(strings.TrimPrefix(dir, "/"), name)
		owners[rel] = component
		fi, err := os.Stat(bins[name])
		if err != nil {
			return err
		}
		return linkOrCopy(bins[name], filepath.Join(stage, rel), fi.Mode().Perm())
	}
	link := func(dir, name, target string) error {
		return os.Symlink(target, filepath.Join(stage, dir, name))
	}
	for _, d := range []string{SystemBinDir, SystemCNIBinDir, SystemImageDir} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return nil, err
		}
	}
	for name, component := range map[string]string{
		"containerd": Containerd, "containerd-shim-runc-v2": Containerd, "runc": Runc, KubeBinary: Kubernetes,
		"mount": MountTools, "umount": MountTools,
	} {
		if err := put(SystemBinDir, name, component); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{"kubelet", "kubeadm"} {
		if err := link(SystemBinDir, name, KubeBinary); err != nil {
			return nil, err
		}
	}
	for _, name := range CNIPluginNames() {
		if err := put(SystemCNIBinDir, name, CNIPlugins); err != nil {
			return nil, err
		}
	}
	arch := b.goarch()
	images := append([]ImageSpec{{
		Name: "registry.k8s.io/pause:" + pauseTag, Architecture: arch, Uncompressed: true,
		Layers:     []Layer{{Files: []File{{Path: "/pause", Source: bins["pause"]}}}},
		Entrypoint: []string{"/pause"},
	}}, kubeImages(role, v, etcdTag, arch, bins, nft)...)
	layers, err := ImageStore(filepath.Join(stage, SystemImageDir), images...)
	if err != nil {
		return nil, err
	}
	for rel, image := range layers {
		owners[filepath.Join(strings.TrimPrefix(SystemImageDir, "/"), rel)] = "image layer of " + image
	}
	manifest := SystemManifest{Role: role, Versions: v}
	for _, img := range images {
		manifest.Images = append(manifest.Images, img.Name)
	}
	sort.Strings(manifest.Images)
	data, err := json.MarshalIndent(manifest, "", "  ")
	if err != nil {
		return nil, err
	}
	return owners, os.WriteFile(filepath.Join(stage, SystemManifestPath), append(data, '\n'), 0o644)
}

// kubeImages are the images kubeadm runs: the static pods' (control plane
// only) and its addons' (kube-proxy, a DaemonSet on every node; CoreDNS,
// which may land on any node). The kube-* images share one layer, the
// multi-call binary (a hard link to the host's /usr/bin/kube) and its
// command names on PATH; kube-proxy's second layer is the nft userspace its
// nftables mode execs.
func kubeImages(role string, v Versions, etcdTag, arch string, bins map[string]string, nft []File) []ImageSpec {
	const bin = "/usr/local/bin/"
	env := []string{"PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	commands := []string{"kube-proxy"}
	if role == RoleControlPlane {
		commands = append(commands, "kube-apiserver", "kube-controller-manager", "kube-scheduler")
	}
	kubeLayer := Layer{Files: []File{{Path: bin + KubeBinary, Source: bins[KubeBinary]}}}
	for _, c := range commands {
		kubeLayer.Files = append(kubeLayer.Files, File{Path: bin + c, Symlink: KubeBinary})
	}
	var images []ImageSpec
	for _, c := range commands {
		layers := []Layer{kubeLayer}
		if c == "kube-proxy" {
			layers = append(layers, Layer{Files: nft})
		}
		images = append(images, ImageSpec{
			Name: "registry.k8s.io/" + c + ":" + v.Kubernetes, Architecture: arch, Uncompressed: true,
			Layers: layers, Entrypoint: []string{bin + c}, Env: env,
		})
	}
	images = append(images, ImageSpec{
		Name: "registry.k8s.io/coredns/coredns:" + v.CoreDNS, Architecture: arch, Uncompressed: true,
		Layers:     []Layer{{Files: []File{{Path: "/coredns", Source: bins[CoreDNS]}}}},
		Entrypoint: []string{"/coredns"},
	})
	if role != RoleControlPlane {
		return images
	}
	return append(images, ImageSpec{
		Name: "registry.k8s.io/etcd:" + etcdTag, Architecture: arch, Uncompressed: true,
		Layers:     []Layer{{Files: []File{{Path: bin + "etcd", Source: bins["etcd"]}}}},
		Entrypoint: []string{bin + "etcd"}, Env: env,
	})
}

func writeArchive(path string, images []ImageSpec) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := OCIArchive(f, images...); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return f.Close()
}

// SystemImage packs dir into the squashfs out (disk.SquashFS: zstd, root-owned,
// all times 0, so the same tree gives the same bytes), written atomically.
func SystemImage(ctx context.Context, dir, out string) error {
	tmp := out + ".tmp"
	os.Remove(tmp)
	defer os.Remove(tmp)
	if err := disk.SquashFS(ctx, dir, tmp); err != nil {
		return fmt.Errorf("system image: %w", err)
	}
	return os.Rename(tmp, out)
}
