package image

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestBuildIsReproducible builds the control-plane recipe twice into
// different directories (initagent compiled twice) and compares every output
// byte for byte, the raw disk image and the hybrid ISO included. It uses the real pinned kernel (fetched with apt on first use).
func TestBuildIsReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches the kernel and builds initagent twice")
	}
	r, err := LoadRecipe("control-plane")
	if err != nil {
		t.Fatal(err)
	}
	src, err := FindSourceDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var dirs, outs []string
	var manifests []*Manifest
	for i := 0; i < 2; i++ {
		out := t.TempDir()
		outs = append(outs, out)
		m, err := Build(context.Background(), Options{Recipe: r, OutDir: out, SourceDir: src})
		if err != nil {
			t.Fatalf("build %d: %v", i+1, err)
		}
		dirs = append(dirs, filepath.Join(out, r.Name))
		manifests = append(manifests, m)
	}
	names := []string{KernelFile, InitramfsFile, IPXEFile, ManifestFile, SystemFile,
		RawFile(r.Name), ISOFile(r.Name), UpgradeFile(r.Name)}
	for _, name := range names {
		a, sizeA, err := fileSHA256(filepath.Join(dirs[0], name))
		if err != nil {
			t.Fatal(err)
		}
		b, sizeB, err := fileSHA256(filepath.Join(dirs[1], name))
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("%s differs between two builds of the same recipe (%d vs %d bytes)", name, sizeA, sizeB)
		}
	}

	// The manifest on disk describes the files next to it.
	data, err := os.ReadFile(filepath.Join(dirs[0], ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if m.Recipe.SHA256 != r.SHA256 || m.Kernel.Release == "" || len(m.Modules) == 0 {
		t.Errorf("manifest recipe/kernel/modules incomplete: %+v", m)
	}
	if len(m.Outputs) != 7 {
		t.Fatalf("manifest lists %d outputs, want 7", len(m.Outputs))
	}
	for _, o := range m.Outputs {
		sum, size, err := fileSHA256(filepath.Join(dirs[0], o.Name))
		if err != nil {
			t.Fatal(err)
		}
		if sum != o.SHA256 || size != o.Size {
			t.Errorf("manifest says %s is %d bytes sha256 %s; file is %d bytes sha256 %s", o.Name, o.Size, o.SHA256, size, sum)
		}
	}
	for _, in := range m.Inputs {
		if bytes.Contains([]byte(in.Name), []byte(src)) {
			t.Errorf("manifest input %q contains the host path %s", in.Name, src)
		}
	}
	if bytes.Contains(data, []byte(dirs[0])) || bytes.Contains(data, []byte(src)) {
		t.Error("manifest contains a host path")
	}

	// A warm build with unchanged inputs keeps the disk artifacts and
	// writes the same manifest.
	var progress bytes.Buffer
	if _, err := Build(context.Background(), Options{Recipe: r, OutDir: outs[0], SourceDir: src, Progress: &progress}); err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(progress.Bytes(), []byte("unchanged inputs, kept")); n != 4 {
		t.Errorf("warm build reused %d of 4 disk stages:\n%s", n, progress.String())
	}
	again, err := os.ReadFile(filepath.Join(dirs[0], ManifestFile))
	if err != nil || !bytes.Equal(again, data) {
		t.Errorf("warm build changed the manifest (%v)", err)
	}
}

func TestBuildMissingModuleNamesItAndKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches the kernel")
	}
	r, err := ParseRecipe("bad.yaml", []byte(goodRecipe+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	r.Kernel.Modules = append(r.Kernel.Modules, "no_such_driver")
	_, err = Build(context.Background(), Options{Recipe: r, OutDir: t.TempDir(), Initagent: "/bin/true"})
	if err == nil {
		t.Fatal("build with a missing module succeeded")
	}
	for _, want := range []string{`"no_such_driver"`, "6.1.0-", "bad.yaml"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
