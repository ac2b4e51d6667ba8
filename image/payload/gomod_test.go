package payload

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestStagingReplacesSample(t *testing.T) {
	gomod, err := os.ReadFile("testdata/sample.go.mod")
	if err != nil {
		t.Fatal(err)
	}
	got, err := StagingReplaces(gomod, "v1.37.2")
	if err != nil {
		t.Fatal(err)
	}
	want := []Replace{
		{"k8s.io/api", "k8s.io/api", "v0.37.2"},
		{"k8s.io/apimachinery", "k8s.io/apimachinery", "v0.37.2"},
		{"k8s.io/client-go", "k8s.io/client-go", "v0.37.2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("StagingReplaces(sample) = %v, want %v", got, want)
	}
}

// TestStagingReplacesKubernetes checks the real go.mod of k8s.io/kubernetes
// v1.37.2: every k8s.io/* required at v0.0.0 maps to v0.37.2, nothing else.
func TestStagingReplacesKubernetes(t *testing.T) {
	gomod, err := os.ReadFile("testdata/kubernetes-v1.37.2.go.mod")
	if err != nil {
		t.Fatal(err)
	}
	got, err := StagingReplaces(gomod, "v1.37.2")
	if err != nil {
		t.Fatal(err)
	}
	staging := regexp.MustCompile(`(?m)^\t(k8s\.io/\S+) v0\.0\.0(\s|$)`).FindAllStringSubmatch(string(gomod), -1)
	if len(got) != len(staging) || len(got) < 25 {
		t.Fatalf("got %d replaces, want %d (one per k8s.io/* v0.0.0 requirement)", len(got), len(staging))
	}
	byModule := map[string]Replace{}
	for _, r := range got {
		byModule[r.Old] = r
		if r.New != r.Old || r.NewVersion != "v0.37.2" {
			t.Errorf("replace %v, want %s => %s v0.37.2", r, r.Old, r.Old)
		}
	}
	for _, m := range staging {
		if _, ok := byModule[m[1]]; !ok {
			t.Errorf("no replace for %s", m[1])
		}
	}
	for _, notStaging := range []string{"k8s.io/utils", "k8s.io/kube-openapi", "k8s.io/klog/v2"} {
		if _, ok := byModule[notStaging]; ok {
			t.Errorf("%s has a replace, but it is a real versioned dependency", notStaging)
		}
	}
}

func TestStagingReplacesErrors(t *testing.T) {
	for _, tc := range []struct {
		name, gomod, version, wantErr string
	}{
		{"bad version", "require k8s.io/api v0.0.0\n", "1.37.2", "want v1.N.M"},
		{"v2", "require k8s.io/api v0.0.0\n", "v2.0.0", "want v1.N.M"},
		{"no staging", "module x\nrequire example.com/a v1.0.0\n", "v1.37.2", "no k8s.io/* v0.0.0 requirement"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := StagingReplaces([]byte(tc.gomod), tc.version)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestStagingVersionPrerelease(t *testing.T) {
	got, err := stagingVersion("v1.38.0-alpha.1")
	if err != nil || got != "v0.38.0-alpha.1" {
		t.Errorf("stagingVersion(v1.38.0-alpha.1) = %q, %v; want v0.38.0-alpha.1", got, err)
	}
}

func TestKubeadmImageTags(t *testing.T) {
	src, err := os.ReadFile("testdata/kubeadm-constants.go.txt")
	if err != nil {
		t.Fatal(err)
	}
	etcd, pause, err := kubeadmImageTags(src)
	if err != nil || etcd != "3.7.0-0" || pause != "3.10.2" {
		t.Errorf("kubeadmImageTags = %q, %q, %v; want 3.7.0-0, 3.10.2", etcd, pause, err)
	}
	if _, _, err := kubeadmImageTags([]byte("package constants\n")); err == nil {
		t.Error("kubeadmImageTags(no constants): no error")
	}
}

// TestGoModFileGoModEdit has the go command read a generated go.mod back.
func TestGoModFileGoModEdit(t *testing.T) {
	dir := t.TempDir()
	mod := goModFile("ballast.local/payload/x", [][2]string{{"k8s.io/kubernetes", "v1.37.2"}},
		[]Replace{{"k8s.io/api", "k8s.io/api", "v0.37.2"}}, []string{"example.com/cmd/x"})
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), mod, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "mod", "edit", "-json")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod edit -json: %v\n%s", err, mod)
	}
	var got struct {
		Module  struct{ Path string }
		Require []struct{ Path, Version string }
		Replace []struct {
			Old, New struct{ Path, Version string }
		}
		Tool []struct{ Path string }
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if got.Module.Path != "ballast.local/payload/x" || len(got.Require) != 1 || got.Require[0].Version != "v1.37.2" ||
		len(got.Replace) != 1 || got.Replace[0].Old.Path != "k8s.io/api" || got.Replace[0].New.Version != "v0.37.2" ||
		len(got.Tool) != 1 || got.Tool[0].Path != "example.com/cmd/x" {
		t.Errorf("go mod edit -json of the generated go.mod = %s", out)
	}
}
