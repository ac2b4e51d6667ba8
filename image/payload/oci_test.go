package payload

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readArchive returns the members of a tar by name, checking tar-level
// determinism rules on the way (root owner, epoch mtimes, sorted order).
func readArchive(t *testing.T, data []byte) (names []string, files map[string][]byte, headers map[string]*tar.Header) {
	t.Helper()
	files, headers = map[string][]byte{}, map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("tar entry %s: uid %d gid %d mtime %v, want 0 0 epoch", hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
		if len(names) > 0 && hdr.Name < names[len(names)-1] {
			t.Errorf("tar entry %s after %s: not sorted", hdr.Name, names[len(names)-1])
		}
		names = append(names, hdr.Name)
		headers[hdr.Name] = hdr
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = body
	}
	return names, files, headers
}

func sha(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blob(t *testing.T, files map[string][]byte, d Descriptor) []byte {
	t.Helper()
	data, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	if sha(data) != d.Digest || int64(len(data)) != d.Size {
		t.Fatalf("blob %s: content digest %s size %d, descriptor says %s %d", d.Digest, sha(data), len(data), d.Digest, d.Size)
	}
	return data
}

func testImages(t *testing.T, uncompressed bool) []ImageSpec {
	dir := t.TempDir()
	bin := filepath.Join(dir, "kube")
	if err := os.WriteFile(bin, bytes.Repeat([]byte("multi-call binary "), 4096), 0o755); err != nil {
		t.Fatal(err)
	}
	shared := Layer{Files: []File{
		{Path: "/usr/local/bin/kube", Source: bin},
		{Path: "/usr/local/bin/kube-apiserver", Symlink: "kube"},
		{Path: "/usr/local/bin/kube-scheduler", Symlink: "kube"},
	}}
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	return []ImageSpec{
		{Name: "registry.k8s.io/kube-scheduler:v1.37.2", Layers: []Layer{shared}, Entrypoint: []string{"/usr/local/bin/kube-scheduler"}, Env: env, Uncompressed: uncompressed},
		{Name: "registry.k8s.io/kube-apiserver:v1.37.2", Layers: []Layer{shared}, Entrypoint: []string{"/usr/local/bin/kube-apiserver"}, Env: env, Uncompressed: uncompressed},
		{Name: "localhost:5000/pause:3.10.2", Layers: []Layer{{Files: []File{{Path: "/pause", Data: []byte("#!pause"), Mode: 0o555}}}}, Entrypoint: []string{"/pause"}, Uncompressed: uncompressed},
	}
}

func TestOCIArchive(t *testing.T) {
	for _, uncompressed := range []bool{false, true} {
		name := "gzip"
		if uncompressed {
			name = "uncompressed"
		}
		t.Run(name, func(t *testing.T) { testOCIArchive(t, uncompressed) })
	}
}

func testOCIArchive(t *testing.T, uncompressed bool) {
	images := testImages(t, uncompressed)
	var first, second bytes.Buffer
	if err := OCIArchive(&first, images...); err != nil {
		t.Fatal(err)
	}
	if err := OCIArchive(&second, images...); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Error("two runs with the same input gave different archives")
	}
	names, files, _ := readArchive(t, first.Bytes())
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", files["oci-layout"])
	}
	var index Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if index.SchemaVersion != 2 || index.MediaType != MediaTypeIndex || len(index.Manifests) != 3 {
		t.Fatalf("index.json = %s", files["index.json"])
	}
	wantLayerType := MediaTypeLayerGzip
	if uncompressed {
		wantLayerType = MediaTypeLayer
	}
	layerDigests := map[string]bool{}
	for _, desc := range index.Manifests {
		full := desc.Annotations[AnnotationImageName]
		if desc.MediaType != MediaTypeManifest || desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != "amd64" {
			t.Errorf("index entry %s: %+v", full, desc)
		}
		if !strings.HasSuffix(full, ":"+desc.Annotations[AnnotationRefName]) || desc.Annotations[AnnotationRefName] == "" {
			t.Errorf("index entry %s: ref.name %q is not its tag", full, desc.Annotations[AnnotationRefName])
		}
		var m Manifest
		if err := json.Unmarshal(blob(t, files, desc), &m); err != nil {
			t.Fatal(err)
		}
		if m.SchemaVersion != 2 || m.MediaType != MediaTypeManifest || m.Config.MediaType != MediaTypeConfig || len(m.Layers) != 1 {
			t.Fatalf("manifest of %s: %+v", full, m)
		}
		var cfg ImageConfig
		if err := json.Unmarshal(blob(t, files, m.Config), &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.OS != "linux" || cfg.Architecture != "amd64" || cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != 1 || cfg.Created != "1970-01-01T00:00:00Z" {
			t.Errorf("config of %s: %+v", full, cfg)
		}
		var wantEntry string
		for _, img := range images {
			if img.Name == full {
				wantEntry = img.Entrypoint[0]
			}
		}
		if len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != wantEntry {
			t.Errorf("config of %s: entrypoint %v, want [%s]", full, cfg.Config.Entrypoint, wantEntry)
		}
		layer := m.Layers[0]
		if layer.MediaType != wantLayerType {
			t.Errorf("layer of %s: media type %s, want %s", full, layer.MediaType, wantLayerType)
		}
		layerDigests[layer.Digest] = true
		tarData := blob(t, files, layer)
		if !uncompressed {
			zr, err := gzip.NewReader(bytes.NewReader(tarData))
			if err != nil {
				t.Fatal(err)
			}
			if zr.Name != "" || !zr.ModTime.IsZero() {
				t.Errorf("layer of %s: gzip header name %q mtime %v, want empty and zero", full, zr.Name, zr.ModTime)
			}
			if tarData, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		if sha(tarData) != cfg.RootFS.DiffIDs[0] {
			t.Errorf("layer of %s: diff_id %s, uncompressed tar is %s", full, cfg.RootFS.DiffIDs[0], sha(tarData))
		}
		layerNames, layerFiles, layerHeaders := readArchive(t, tarData)
		if strings.Contains(full, "pause") {
			if got := strings.Join(layerNames, " "); got != "pause" {
				t.Errorf("pause layer entries %q", got)
			}
			if layerHeaders["pause"].Mode != 0o555 || string(layerFiles["pause"]) != "#!pause" {
				t.Errorf("pause layer: mode %o content %q", layerHeaders["pause"].Mode, layerFiles["pause"])
			}
			continue
		}
		want := "usr/ usr/local/ usr/local/bin/ usr/local/bin/kube usr/local/bin/kube-apiserver usr/local/bin/kube-scheduler"
		if got := strings.Join(layerNames, " "); got != want {
			t.Errorf("kube layer entries %q, want %q", got, want)
		}
		if h := layerHeaders["usr/local/bin/kube-apiserver"]; h.Typeflag != tar.TypeSymlink || h.Linkname != "kube" {
			t.Errorf("kube-apiserver entry: type %c link %q, want a symlink to kube", h.Typeflag, h.Linkname)
		}
		if h := layerHeaders["usr/local/bin/kube"]; h.Mode != 0o755 || h.Size != 18*4096 {
			t.Errorf("kube entry: mode %o size %d", h.Mode, h.Size)
		}
	}
	if len(layerDigests) != 2 {
		t.Errorf("%d distinct layers, want 2 (kube layer shared)", len(layerDigests))
	}
	blobs := 0
	for _, n := range names {
		if strings.HasPrefix(n, "blobs/sha256/") && n != "blobs/sha256/" {
			blobs++
		}
	}
	// 3 manifests + 3 configs + 2 layers: the shared layer is stored once.
	if blobs != 8 {
		t.Errorf("%d blobs, want 8", blobs)
	}
}

func TestOCIArchiveErrors(t *testing.T) {
	ok := Layer{Files: []File{{Path: "/a", Data: []byte("a")}}}
	for _, tc := range []struct {
		name    string
		images  []ImageSpec
		wantErr string
	}{
		{"none", nil, "no images"},
		{"no tag", []ImageSpec{{Name: "registry.k8s.io/pause", Layers: []Layer{ok}}}, "want registry/repository:tag"},
		{"port only", []ImageSpec{{Name: "localhost:5000/pause", Layers: []Layer{ok}}}, "want registry/repository:tag"},
		{"no layers", []ImageSpec{{Name: "x/pause:1"}}, "no layers"},
		{"relative path", []ImageSpec{{Name: "x/pause:1", Layers: []Layer{{Files: []File{{Path: "pause"}}}}}}, "clean absolute path"},
		{"duplicate file", []ImageSpec{{Name: "x/pause:1", Layers: []Layer{{Files: []File{{Path: "/a"}, {Path: "/a"}}}}}}, "given twice"},
		{"file is dir", []ImageSpec{{Name: "x/pause:1", Layers: []Layer{{Files: []File{{Path: "/a"}, {Path: "/a/b"}}}}}}, "parent directory"},
		{"duplicate image", []ImageSpec{{Name: "x/pause:1", Layers: []Layer{ok}}, {Name: "x/pause:1", Layers: []Layer{ok}}}, "given twice"},
		{"missing source", []ImageSpec{{Name: "x/pause:1", Layers: []Layer{{Files: []File{{Path: "/a", Source: "/nonexistent/a"}}}}}}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := OCIArchive(io.Discard, tc.images...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
