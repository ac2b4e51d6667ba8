package payload

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func needTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not found: apt-get install %s", name, pkg)
	}
}

func TestSystemImageRoundTrip(t *testing.T) {
	needTool(t, "mksquashfs", "squashfs-tools")
	needTool(t, "unsquashfs", "squashfs-tools")
	dir := t.TempDir()
	for path, content := range map[string]string{
		"usr/bin/kube":                       "binary",
		"opt/cni/bin/bridge":                 "bridge",
		"usr/share/ballast/images/pause.tar": "oci",
		"usr/share/ballast/payload.json":     "{}",
	} {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("kube", filepath.Join(dir, "usr/bin/kubelet")); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	a, b := filepath.Join(out, "a.sqfs"), filepath.Join(out, "b.sqfs")
	if err := SystemImage(context.Background(), dir, a); err != nil {
		t.Fatal(err)
	}
	// A later mtime must not change the image (-all-time 0).
	if err := os.Chtimes(filepath.Join(dir, "usr/bin/kube"), testTime, testTime); err != nil {
		t.Fatal(err)
	}
	if err := SystemImage(context.Background(), dir, b); err != nil {
		t.Fatal(err)
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if !bytes.Equal(da, db) {
		t.Error("the same tree packed twice gave different images")
	}
	listing, err := exec.Command("unsquashfs", "-lln", a).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -lln: %v\n%s", err, listing)
	}
	for _, want := range []string{
		"squashfs-root/usr/bin/kube", "squashfs-root/usr/bin/kubelet -> kube", "squashfs-root/opt/cni/bin/bridge",
		"squashfs-root/usr/share/ballast/images/pause.tar", "squashfs-root/usr/share/ballast/payload.json",
	} {
		if !strings.Contains(string(listing), want) {
			t.Errorf("unsquashfs -lln lacks %q:\n%s", want, listing)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(string(listing)), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] != "0/0" {
			t.Errorf("not owned by root: %s", line)
		}
		if strings.Contains(line, "squashfs-root") && !strings.Contains(line, "1970-01-01 00:00") {
			t.Errorf("time not 0: %s", line)
		}
	}
	content, err := exec.Command("unsquashfs", "-cat", a, "usr/bin/kube").Output()
	if err != nil || string(content) != "binary" {
		t.Errorf("unsquashfs -cat usr/bin/kube = %q, %v; want \"binary\"", content, err)
	}
	if entries, _ := filepath.Glob(filepath.Join(out, "*.tmp")); len(entries) != 0 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestSystemImageBadDir(t *testing.T) {
	needTool(t, "mksquashfs", "squashfs-tools")
	out := filepath.Join(t.TempDir(), "x.sqfs")
	err := SystemImage(context.Background(), filepath.Join(t.TempDir(), "missing"), out)
	if err == nil {
		t.Fatal("no error for a missing directory")
	}
	if _, statErr := os.Stat(out); statErr == nil {
		t.Error("output written despite the error")
	}
}

func TestSystemUnknownRole(t *testing.T) {
	b := &Builder{CacheDir: t.TempDir()}
	if _, err := b.System(context.Background(), "master"); err == nil || !strings.Contains(err.Error(), "want control-plane or worker") {
		t.Errorf("System(master) err = %v", err)
	}
}

var testTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
