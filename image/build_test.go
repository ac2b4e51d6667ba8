package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/ballast-os/ballast/image/disk"
	"github.com/ballast-os/ballast/netboot"
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
	names := []string{KernelFile, InitramfsFile, IPXEFile, ManifestFile, SystemFile, SystemCPIOFile,
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
	if len(m.Outputs) != 8 {
		t.Fatalf("manifest lists %d outputs, want 8", len(m.Outputs))
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
	// The recipe's microcode is where the kernel's early loader finds it.
	initrd, err := os.ReadFile(filepath.Join(dirs[0], InitramfsFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Microcode) != len(r.Kernel.Microcode) || len(m.Microcode) == 0 {
		t.Errorf("manifest lists microcode %+v for the recipe's %v", m.Microcode, r.Kernel.Microcode)
	}
	for _, mc := range m.Microcode {
		got, _ := findEarly(t, initrd, mc.Name)
		sum := sha256.Sum256(got)
		if hex.EncodeToString(sum[:]) != mc.SHA256 || int64(len(got)) != mc.Size || mc.Patches == 0 {
			t.Errorf("the early scan of %s finds %s with %d bytes sha256 %x; the manifest says %+v", InitramfsFile, mc.Name, len(got), sum, mc)
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
	// writes the same manifest. It takes the initagent the first build
	// compiled, so edits to the source tree meanwhile change nothing.
	agent := filepath.Join(outs[0], ".build", "initagent")
	var progress bytes.Buffer
	if _, err := Build(context.Background(), Options{Recipe: r, OutDir: outs[0], Initagent: agent, Progress: &progress}); err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(progress.Bytes(), []byte("unchanged inputs, kept")); n != 4 {
		t.Errorf("warm build reused %d of 4 disk stages:\n%s", n, progress.String())
	}
	again, err := os.ReadFile(filepath.Join(dirs[0], ManifestFile))
	if err != nil || !bytes.Equal(again, data) {
		t.Errorf("warm build changed the manifest (%v)", err)
	}
	checkSystemCPIO(t, dirs[0])

	// A given system image is copied to system.sqfs, rebuilds the disk
	// stages and goes into system.cpio.
	tree := t.TempDir()
	must(t, os.WriteFile(filepath.Join(tree, "given"), []byte("a given system image\n"), 0o644))
	given := filepath.Join(t.TempDir(), "given.sqfs")
	must(t, disk.SquashFS(context.Background(), tree, given))
	progress.Reset()
	m2, err := Build(context.Background(), Options{Recipe: r, OutDir: outs[0], Initagent: agent, SystemImage: given, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(progress.Bytes(), []byte("unchanged inputs, kept")); n != 0 {
		t.Errorf("a new system image kept %d disk stages:\n%s", n, progress.String())
	}
	want, _, err := fileSHA256(given)
	if err != nil {
		t.Fatal(err)
	}
	var listed bool
	for _, o := range m2.Outputs {
		if o.Name == SystemFile {
			listed = o.SHA256 == want
		}
	}
	if !listed {
		t.Errorf("manifest does not list %s with the given image's sha256 %s: %+v", SystemFile, want, m2.Outputs)
	}
	checkSystemCPIO(t, dirs[0])
}

// checkSystemCPIO: system.cpio holds exactly system.sqfs, and boot.ipxe
// loads it before initramfs.img.
func checkSystemCPIO(t *testing.T, dir string) {
	t.Helper()
	sys, err := os.ReadFile(filepath.Join(dir, SystemFile))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, SystemCPIOFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Name != SystemFile {
		t.Fatalf("%s holds %v, want only %s", SystemCPIOFile, recs, SystemFile)
	}
	got, err := io.ReadAll(io.NewSectionReader(recs[0].ReaderAt, 0, int64(recs[0].FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sys) {
		t.Errorf("%s does not hold the %s next to it", SystemCPIOFile, SystemFile)
	}
	script, err := os.ReadFile(filepath.Join(dir, IPXEFile))
	if err != nil {
		t.Fatal(err)
	}
	p, err := netboot.ParseScript(script)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Initrds) != 2 || p.Initrds[0] != SystemCPIOFile || p.Initrds[1] != InitramfsFile {
		t.Errorf("boot.ipxe loads initrds %v, want %s then %s", p.Initrds, SystemCPIOFile, InitramfsFile)
	}
	sum, _, err := fileSHA256(filepath.Join(dir, SystemCPIOFile))
	if err != nil {
		t.Fatal(err)
	}
	if p.SHA256[SystemCPIOFile] != sum {
		t.Errorf("boot.ipxe lists sha256 %q for %s, the file's is %s", p.SHA256[SystemCPIOFile], SystemCPIOFile, sum)
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
