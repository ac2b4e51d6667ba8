package source

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Debian packages of the tools the tests use, for the skip message.
var toolPackage = map[string]string{
	"mkfs.vfat":   "dosfstools",
	"mcopy":       "mtools",
	"mmd":         "mtools",
	"genisoimage": "genisoimage",
	"mkfs.ext4":   "e2fsprogs",
	"losetup":     "mount",
	"dnsmasq":     "dnsmasq-base",
	"unshare":     "util-linux",
	"ip":          "iproute2",
}

func needTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s not installed (Debian package %s)", n, toolPackage[n])
		}
	}
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	r.Read(b)
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeTree writes files (slash paths relative to dir) under dir.
func writeTree(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// makeFAT builds a FAT image of sizeMiB with the given label, FAT width
// (12, 16, 32; 0 lets mkfs.vfat choose) and files, using dosfstools and
// mtools (no mount needed).
func makeFAT(t testing.TB, label string, bits, sizeMiB int, files map[string][]byte) string {
	t.Helper()
	needTools(t, "mkfs.vfat", "mcopy", "mmd")
	dir := t.TempDir()
	img := filepath.Join(dir, "fat.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, int64(sizeMiB)<<20); err != nil {
		t.Fatal(err)
	}
	args := []string{"-n", label}
	if bits != 0 {
		args = append(args, "-F", strconv.Itoa(bits))
	}
	run(t, "mkfs.vfat", append(args, img)...)
	made := map[string]bool{}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for i, name := range names {
		parts := strings.Split(name, "/")
		for j := 1; j < len(parts); j++ {
			d := strings.Join(parts[:j], "/")
			if !made[d] {
				run(t, "mmd", "-i", img, "::"+d)
				made[d] = true
			}
		}
		src := filepath.Join(dir, "src"+string(rune('a'+i)))
		if err := os.WriteFile(src, files[name], 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, "mcopy", "-i", img, src, "::"+name)
	}
	return img
}

// makeISO builds an ISO 9660 image with genisoimage; extra are name-scheme
// flags such as -J and -r.
func makeISO(t testing.TB, label string, files map[string][]byte, extra ...string) string {
	t.Helper()
	needTools(t, "genisoimage")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	writeTree(t, tree, files)
	img := filepath.Join(dir, "cd.iso")
	run(t, "genisoimage", append(append([]string{"-quiet", "-o", img, "-V", label}, extra...), tree)...)
	return img
}

// makeExt4 builds an ext4 image holding files with mkfs.ext4 -d.
func makeExt4(t testing.TB, label string, files map[string][]byte) string {
	t.Helper()
	needTools(t, "mkfs.ext4")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	writeTree(t, tree, files)
	img := filepath.Join(dir, "ext4.img")
	run(t, "mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, img, "8M")
	return img
}

// attachLoop attaches img read-only to a free loop device until the test ends.
func attachLoop(t testing.TB, img string) string {
	t.Helper()
	needRoot(t)
	needTools(t, "losetup")
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s (no loop devices here?)", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// inNetns runs fn on an OS thread that has joined the network namespace at
// nsPath. The thread stays locked, so the runtime discards it (and its
// namespace) when fn returns instead of reusing it.
func inNetns(t testing.TB, nsPath string, fn func()) {
	t.Helper()
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(nsPath)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("join netns %s: %v", nsPath, err)
	}
}
