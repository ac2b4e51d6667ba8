package payload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
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
	// differently, so cached images are not reused across such changes.
	systemLayout = "7"
)

// SystemManifest is the file at SystemManifestPath: what a node finds in its system.sqfs.
type SystemManifest struct {
	Role     string   `json:"role"`
	Versions Versions `json:"versions"`
	// Images maps each OCI archive under SystemImageDir to the image names it holds.
	Images map[string][]string `json:"images"`
}

// System builds what the role needs and packs it into a system.sqfs, cached
// in CacheDir by a hash of its inputs; it returns the file's path.
// Both roles get containerd (with ctr, which the node imports the images
// with), runc, mount and umount (u-root's, for kubelet's volume mounts), the CNI plugins, kubelet and kubeadm and the pause image; control-plane adds the kube-apiserver,
// kube-controller-manager, kube-scheduler and etcd images.
func (b *Builder) System(ctx context.Context, role string) (string, error) {
	components := []string{Pause, MountTools, CNIPlugins, Runc, Containerd, Ctr, CoreDNS, Kubernetes}
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
	if err := b.stageSystem(stage, role, etcdTag, pauseTag, bins, nft); err != nil {
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

func (b *Builder) stageSystem(stage, role, etcdTag, pauseTag string, bins map[string]string, nft []File) error {
	v := b.versions()
	put := func(dir, name string) error {
		return copyFile(bins[name], filepath.Join(stage, dir, name))
	}
	link := func(dir, name, target string) error {
		return os.Symlink(target, filepath.Join(stage, dir, name))
	}
	for _, d := range []string{SystemBinDir, SystemCNIBinDir, SystemImageDir} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	for _, name := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", KubeBinary, "mount", "umount"} {
		if err := put(SystemBinDir, name); err != nil {
			return err
		}
	}
	for _, name := range []string{"kubelet", "kubeadm"} {
		if err := link(SystemBinDir, name, KubeBinary); err != nil {
			return err
		}
	}
	for _, name := range CNIPluginNames() {
		if err := put(SystemCNIBinDir, name); err != nil {
			return err
		}
	}
	arch := b.goarch()
	manifest := SystemManifest{Role: role, Versions: v, Images: map[string][]string{}}
	archives := map[string][]ImageSpec{
		"pause.tar": {{
			Name: "registry.k8s.io/pause:" + pauseTag, Architecture: arch, Uncompressed: true,
			Layers:     []Layer{{Files: []File{{Path: "/pause", Source: bins["pause"]}}}},
			Entrypoint: []string{"/pause"},
		}},
	}
	maps.Copy(archives, kubeImages(role, v, etcdTag, arch, bins, nft))
	names := make([]string, 0, len(archives))
	for n := range archives {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := writeArchive(filepath.Join(stage, SystemImageDir, n), archives[n]); err != nil {
			return err
		}
		for _, img := range archives[n] {
			manifest.Images[n] = append(manifest.Images[n], img.Name)
		}
	}
	data, err := json.MarshalIndent(manifest, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(stage, SystemManifestPath), append(data, '\n'), 0o644)
}

// kubeImages are the images kubeadm runs: the static pods' (control plane
// only) and its addons' (kube-proxy, a DaemonSet on every node; CoreDNS,
// which may land on any node). The kube-* images share one layer, the
// multi-call binary and its command names on PATH, stored once per archive
// and in containerd; kube-proxy's second layer is the nft userspace its
// nftables mode execs. A control plane's kube-proxy sits in control-plane.tar
// so the shared layer is not stored twice.
func kubeImages(role string, v Versions, etcdTag, arch string, bins map[string]string, nft []File) map[string][]ImageSpec {
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
	var kube []ImageSpec
	for _, c := range commands {
		layers := []Layer{kubeLayer}
		if c == "kube-proxy" {
			layers = append(layers, Layer{Files: nft})
		}
		kube = append(kube, ImageSpec{
			Name: "registry.k8s.io/" + c + ":" + v.Kubernetes, Architecture: arch, Uncompressed: true,
			Layers: layers, Entrypoint: []string{bin + c}, Env: env,
		})
	}
	coreDNS := ImageSpec{
		Name: "registry.k8s.io/coredns/coredns:" + v.CoreDNS, Architecture: arch, Uncompressed: true,
		Layers:     []Layer{{Files: []File{{Path: "/coredns", Source: bins[CoreDNS]}}}},
		Entrypoint: []string{"/coredns"},
	}
	if role != RoleControlPlane {
		return map[string][]ImageSpec{"cluster-addons.tar": append(kube, coreDNS)}
	}
	etcd := ImageSpec{
		Name: "registry.k8s.io/etcd:" + etcdTag, Architecture: arch, Uncompressed: true,
		Layers:     []Layer{{Files: []File{{Path: bin + "etcd", Source: bins["etcd"]}}}},
		Entrypoint: []string{bin + "etcd"}, Env: env,
	}
	return map[string][]ImageSpec{"control-plane.tar": append(kube, etcd), "cluster-addons.tar": {coreDNS}}
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

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
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
