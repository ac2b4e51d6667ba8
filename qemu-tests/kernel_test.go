package qemutests

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/image"
)

// vmTestPackages are unit-test packages that need kernel features the CI
// host kernel may lack (bonding, 8021q, dummy); they run here on the
// image's own kernel, with the control-plane recipe's modules loaded.
var vmTestPackages = []string{"./initagent/netconf"}

// TestPackagesOnImageKernel compiles each package's tests, boots them as the
// only program of a VM and requires them to pass without skipping.
func TestPackagesOnImageKernel(t *testing.T) {
	src, err := image.FindSourceDir(".")
	if err != nil {
		t.Fatal(err)
	}
	g := &GoTestVM{SourceDir: src, Accel: *accelFlag, Workdir: t.TempDir()}
	for _, pkg := range vmTestPackages {
		t.Run(strings.TrimPrefix(pkg, "./"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			out, code, err := g.Run(ctx, pkg, "-test.v", "-test.count=1")
			if err != nil || code != 0 {
				t.Fatalf("tests in VM: exit %d, %v:\n%s", code, err, out)
			}
			if skips := regexp.MustCompile(`(?m)^\s*--- SKIP: .*$`).FindAllString(out, -1); len(skips) > 0 {
				t.Errorf("tests skipped on the image kernel:\n%s\n\nfull output:\n%s", strings.Join(skips, "\n"), out)
			}
			passes := regexp.MustCompile(`(?m)^--- PASS: `).FindAllString(out, -1)
			t.Logf("%d tests passed on kernel %s", len(passes), g.KernelRelease())
		})
	}
}
