package payload

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// TestImageArchive builds the images the cluster tests run and writes them
// to path as one OCI archive (for `ctr images import`); it returns their
// names. agnhost carries its upstream e2e name and version
// (test/images/agnhost/VERSION), so the pods the tests create look like
// the upstream tests' pods. Unlike upstream's image it holds agnhost alone:
// no shell or network tools.
func (b *Builder) TestImageArchive(ctx context.Context, path string) ([]string, error) {
	bins, err := b.Build(ctx, Agnhost)
	if err != nil {
		return nil, err
	}
	info, err := b.download(ctx, "k8s.io/kubernetes", b.versions().Kubernetes)
	if err != nil {
		return nil, err
	}
	version, err := os.ReadFile(filepath.Join(info.Dir, "test", "images", "agnhost", "VERSION"))
	if err != nil {
		return nil, fmt.Errorf("agnhost version: %w", err)
	}
	image := ImageSpec{
		Name:         "registry.k8s.io/e2e-test-images/agnhost:" + strings.TrimSpace(string(version)),
		Architecture: b.goarch(), Uncompressed: true,
		Layers:     []Layer{{Files: []File{{Path: "/agnhost", Source: bins[Agnhost]}}}},
		Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
	}
	if err := writeArchive(path, []ImageSpec{image}); err != nil {
		return nil, err
	}
	return []string{image.Name}, nil
}
