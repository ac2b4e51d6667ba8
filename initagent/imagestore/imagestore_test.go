package imagestore

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-os/ballast/image/payload"
)

// The records are written with containerd's packages: they must be the
// version of the containerd the nodes run.
func TestLibraryIsPayloadContainerd(t *testing.T) {
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/containerd/containerd/v2" {
			if f[1] != payload.ContainerdVersion {
				t.Fatalf("go.mod has containerd %s, the payload runs %s: keep them equal", f[1], payload.ContainerdVersion)
			}
			return
		}
	}
	t.Fatal("go.mod does not require github.com/containerd/containerd/v2")
}

func TestRegisterErrors(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	if _, err := Register(ctx, Options{Store: t.TempDir(), Root: root, Namespace: "k8s.io"}); err == nil || !strings.Contains(err.Error(), "index.json") {
		t.Errorf("empty store: %v, want an error naming index.json", err)
	}
	store := t.TempDir()
	if _, err := payload.ImageStore(store, image(t, "registry.k8s.io/a:1", "/a", "a")); err != nil {
		t.Fatal(err)
	}
	layers, _ := filepath.Glob(filepath.Join(store, "layers", "*"))
	os.RemoveAll(layers[0])
	if _, err := Register(ctx, Options{Store: store, Root: root, Namespace: "k8s.io"}); err == nil || !strings.Contains(err.Error(), "has no directory") {
		t.Errorf("store without its layer: %v", err)
	}
	blobs, _ := filepath.Glob(filepath.Join(store, "blobs", "sha256", "*"))
	for _, b := range blobs {
		os.WriteFile(b, []byte("{}"), 0o644)
	}
	if _, err := Register(ctx, Options{Store: store, Root: root, Namespace: "k8s.io"}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("store with a changed blob: %v", err)
	}
}

func image(t *testing.T, name string, layerFiles ...string) payload.ImageSpec {
	img := payload.ImageSpec{Name: name, Uncompressed: true, Entrypoint: []string{"/pause"}}
	for i := 0; i+1 < len(layerFiles); i += 2 {
		img.Layers = append(img.Layers, payload.Layer{Files: []payload.File{{Path: layerFiles[i], Data: []byte(layerFiles[i+1]), Mode: 0o644}}})
	}
	return img
}

// TestRegisterWithContainerd registers two image sets in turn the way an
// upgrade does and checks with the real containerd (built by the payload)
// that the images are there, mount, run, and that the removed one is gone.
func TestRegisterWithContainerd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd and mount overlayfs")
	}
	ctx := context.Background()
	b := &payload.Builder{Log: slog.New(slog.DiscardHandler)}
	bins, err := b.Build(ctx, payload.Containerd, payload.Ctr, payload.Runc, payload.Pause)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	t.Cleanup(func() { unmountUnder(t, work) })
	root := filepath.Join(work, "root")
	pause := payload.File{Path: "/pause", Source: bins["pause"]}
	build := func(dir string, images ...payload.ImageSpec) string {
		store := filepath.Join(work, dir)
		if _, err := payload.ImageStore(store, images...); err != nil {
			t.Fatal(err)
		}
		return store
	}
	pauseImage := payload.ImageSpec{Name: "registry.k8s.io/pause:3.10.2", Uncompressed: true, Entrypoint: []string{"/pause"},
		Layers: []payload.Layer{{Files: []payload.File{pause}}}}
	app := func(version string) payload.ImageSpec {
		return payload.ImageSpec{Name: "registry.example/app:1", Uncompressed: true, Entrypoint: []string{"/pause"},
			Layers: []payload.Layer{{Files: []payload.File{pause}}, {Files: []payload.File{{Path: "/etc/app-version", Data: []byte(version), Mode: 0o644}}}}}
	}
	first := build("first", pauseImage, app("one"), image(t, "registry.example/old:1", "/old", "old"))
	second := build("second", pauseImage, app("two"))

	res, err := Register(ctx, Options{Store: first, Root: root, Namespace: "k8s.io"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Added) != 3 || res.Layers != 3 {
		t.Errorf("first registration: %+v, want 3 images added and 3 layers (pause's shared)", res)
	}
	again, err := Register(ctx, Options{Store: first, Root: root, Namespace: "k8s.io"})
	if err != nil || len(again.Added) != 0 || again.Layers != 0 || len(again.Removed) != 0 {
		t.Errorf("second registration of the same store: %+v, %v; want nothing to do", again, err)
	}

	c := startContainerd(t, bins, root, filepath.Join(work, "state"))
	c.wantImages(t, "registry.example/app:1", "registry.example/old:1", "registry.k8s.io/pause:3.10.2")
	if got := c.imageFile(t, "registry.example/app:1", "etc/app-version"); got != "one" {
		t.Errorf("app:1's /etc/app-version = %q, want one", got)
	}
	if out, err := c.ctr("run", "--rm", "registry.example/app:1", "imagestore-test", "/pause", "-v"); err != nil || !strings.Contains(out, payload.PauseVersion) {
		t.Errorf("ctr run app:1 /pause -v = %q, %v; want %s", out, err, payload.PauseVersion)
	}
	c.stop(t)

	res, err = Register(ctx, Options{Store: second, Root: root, Namespace: "k8s.io"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Removed, []string{"registry.example/old:1"}) || !slices.Equal(res.Added, []string{"registry.example/app:1"}) {
		t.Errorf("upgrade registration: %+v, want app:1 changed and old:1 removed", res)
	}
	c = startContainerd(t, bins, root, filepath.Join(work, "state"))
	c.wantImages(t, "registry.example/app:1", "registry.k8s.io/pause:3.10.2")
	if got := c.imageFile(t, "registry.example/app:1", "etc/app-version"); got != "two" {
		t.Errorf("after the upgrade app:1's /etc/app-version = %q, want two", got)
	}
	if out, err := c.ctr("run", "--rm", "registry.example/app:1", "imagestore-test-2", "/pause", "-v"); err != nil || !strings.Contains(out, payload.PauseVersion) {
		t.Errorf("after the upgrade, ctr run app:1 /pause -v = %q, %v; want %s", out, err, payload.PauseVersion)
	}
	// The collection took the old snapshots: one per remaining layer is left.
	if out, _ := c.ctr("snapshots", "--snapshotter", Snapshotter, "ls"); strings.Count(out, "Committed") != 2 {
		t.Errorf("snapshots after the upgrade:\n%s\nwant 2 committed (pause, app:1's second layer)", out)
	}
	c.stop(t)
}

type containerd struct {
	cmd  *exec.Cmd
	sock string
	ctrP string
	log  string
}

func startContainerd(t *testing.T, bins map[string]string, root, state string) *containerd {
	t.Helper()
	dir := t.TempDir()
	c := &containerd{sock: filepath.Join(dir, "containerd.sock"), ctrP: bins["ctr"], log: filepath.Join(dir, "containerd.log")}
	config := fmt.Sprintf("version = 3\nroot = %q\nstate = %q\n"+
		"disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \"io.containerd.cri.v1.runtime\"]\n"+
		"[grpc]\n  address = %q\n", root, state, c.sock)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bins["containerd"], "--config", filepath.Join(dir, "config.toml"))
	c.cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bins["containerd"])+":"+filepath.Dir(bins["runc"])+":"+os.Getenv("PATH"))
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stop(t)
		if t.Failed() {
			log, _ := os.ReadFile(c.log)
			t.Logf("containerd log:\n%s", log)
		}
	})
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := c.ctr("version"); err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not answer within 2 minutes")
		}
	}
}

func (c *containerd) stop(t *testing.T) {
	if c.cmd.Process == nil || c.cmd.ProcessState != nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	c.cmd.Wait()
}

func (c *containerd) ctr(args ...string) (string, error) {
	out, err := exec.Command(c.ctrP, append([]string{"--address", c.sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *containerd) wantImages(t *testing.T, want ...string) {
	t.Helper()
	out, err := exec.Command(c.ctrP, "--address", c.sock, "--namespace", "k8s.io", "images", "ls", "-q").Output()
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	got := strings.Fields(string(out))
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("containerd lists %v, want %v", got, want)
	}
}

// imageFile mounts the image's root filesystem the way a container gets
// it (overlayfs over the registered snapshots) and reads one file.
func (c *containerd) imageFile(t *testing.T, image, file string) string {
	t.Helper()
	mnt := t.TempDir()
	if out, err := c.ctr("images", "mount", "--snapshotter", Snapshotter, image, mnt); err != nil {
		t.Fatalf("ctr images mount %s: %v\n%s", image, err, out)
	}
	defer func() {
		if out, err := c.ctr("images", "unmount", "--rm", mnt); err != nil {
			t.Errorf("ctr images unmount: %v\n%s", err, out)
		}
	}()
	data, err := os.ReadFile(filepath.Join(mnt, file))
	if err != nil {
		t.Errorf("%s in %s: %v", file, image, err)
	}
	return string(data)
}

// unmountUnder unmounts what containerd's mount manager left under dir
// (it finishes `ctr images unmount` asynchronously; the test stops it first).
func unmountUnder(t *testing.T, dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	slices.Reverse(points)
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", p, err)
		}
	}
}

// Register leaves nothing running and nothing open: it is a step of PID 1.
func TestRegisterLeavesNoGoroutines(t *testing.T) {
	ctx := context.Background()
	store := t.TempDir()
	if _, err := payload.ImageStore(store, image(t, "registry.k8s.io/a:1", "/a", "a", "/b", "b")); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	root := t.TempDir()
	for range 2 {
		if _, err := Register(ctx, Options{Store: store, Root: root, Namespace: "k8s.io"}); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(2 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before Register, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
	}
}
