package payload

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/ballast-os/ballast/kernel"
)

// The images the upstream e2e tests run, by the names and tags the pinned
// Kubernetes refers to them (test/utils/image/manifest.go), so its tests
// find them preloaded.
const (
	e2eRegistry         = "registry.k8s.io/e2e-test-images/"
	glibcDNSTestingTag  = "2.1.1"
	busyboxTestImageTag = "1.37.0-2"
)

// TestImageArchive builds the images the cluster tests and the upstream
// conformance tests run and writes them to path as one OCI archive (for
// `ctr images import`); it returns their names, agnhost first.
//
// Upstream builds these on Alpine (agnhost), Debian (glibc-dns-testing) and
// busybox; here all three share one layer of Debian bookworm programs, the
// ones the tests exec in their pods: dash for the shell, busybox for the small
// tools, curl, OpenBSD netcat, dig/nslookup and glibc's getent, with the
// libraries they need. agnhost adds its binary on top. The tags are the
// ones the tests name, though the busybox inside is Debian's 1.35 and the
// agnhost image is glibc-based, not musl.
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
	userland, err := b.userlandFiles(ctx)
	if err != nil {
		return nil, fmt.Errorf("test image userland: %w", err)
	}
	base := Layer{Files: userland}
	images := []ImageSpec{{
		Name:         e2eRegistry + "agnhost:" + strings.TrimSpace(string(version)),
		Architecture: b.goarch(), Uncompressed: true,
		Layers: []Layer{base, {Files: []File{
			{Path: "/agnhost", Source: bins[Agnhost]},
			{Path: "/agnhost-2", Symlink: "agnhost"},
		}}},
		Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}, {
		Name:         e2eRegistry + "glibc-dns-testing:" + glibcDNSTestingTag,
		Architecture: b.goarch(), Uncompressed: true, Layers: []Layer{base},
		Cmd: []string{"sh"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}, {
		Name:         e2eRegistry + "busybox:" + busyboxTestImageTag,
		Architecture: b.goarch(), Uncompressed: true, Layers: []Layer{base},
		Cmd: []string{"sh"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}}
	if err := writeArchive(path, images); err != nil {
		return nil, err
	}
	names := make([]string, len(images))
	for i, im := range images {
		names[i] = im.Name
	}
	return names, nil
}

// userlandPins are the Debian bookworm packages of the test images'
// programs and, found by following DT_NEEDED, their libraries.
func userlandPins() []kernel.DebPin {
	return []kernel.DebPin{
		{Package: "dash", Version: "0.5.12-2"},
		{Package: "busybox-static", Version: "1:1.35.0-4+deb12u1+b1"},
		{Package: "curl", Version: "7.88.1-10+deb12u15"},
		{Package: "netcat-openbsd", Version: "1.219-1"},
		{Package: "bind9-dnsutils", Version: "1:9.18.49-1~deb12u1"},
		{Package: "libc-bin", Version: "2.36-9+deb12u14"},
		{Package: "libc6", Version: "2.36-9+deb12u14"},
		{Package: "bind9-libs", Version: "1:9.18.49-1~deb12u1"},
		{Package: "libbrotli1", Version: "1.0.9-2+b6"},
		{Package: "libbsd0", Version: "0.11.7-2"},
		{Package: "libcom-err2", Version: "1.47.0-2+b2"},
		{Package: "libcurl4", Version: "7.88.1-10+deb12u15"},
		{Package: "libedit2", Version: "3.1-20221030-2"},
		{Package: "libffi8", Version: "3.4.4-1"},
		{Package: "libfstrm0", Version: "0.6.1-1"},
		{Package: "libgcc-s1", Version: "12.2.0-14+deb12u1"},
		{Package: "libgmp10", Version: "2:6.2.1+dfsg1-1.1"},
		{Package: "libgnutls30", Version: "3.7.9-2+deb12u7"},
		{Package: "libgssapi-krb5-2", Version: "1.20.1-2+deb12u5"},
		{Package: "libhogweed6", Version: "3.8.1-2"},
		{Package: "libicu72", Version: "72.1-3+deb12u1"},
		{Package: "libidn2-0", Version: "2.3.3-1+b1"},
		{Package: "libjemalloc2", Version: "5.3.0-1"},
		{Package: "libjson-c5", Version: "0.16-2"},
		{Package: "libk5crypto3", Version: "1.20.1-2+deb12u5"},
		{Package: "libkeyutils1", Version: "1.6.3-2"},
		{Package: "libkrb5-3", Version: "1.20.1-2+deb12u5"},
		{Package: "libkrb5support0", Version: "1.20.1-2+deb12u5"},
		{Package: "libldap-2.5-0", Version: "2.5.13+dfsg-5"},
		{Package: "liblmdb0", Version: "0.9.24-1"},
		{Package: "liblzma5", Version: "5.4.1-1+deb12u1"},
		{Package: "libmaxminddb0", Version: "1.7.1-1"},
		{Package: "libmd0", Version: "1.0.4-2"},
		{Package: "libnettle8", Version: "3.8.1-2"},
		{Package: "libnghttp2-14", Version: "1.52.0-1+deb12u3"},
		{Package: "libp11-kit0", Version: "0.24.1-2"},
		{Package: "libprotobuf-c1", Version: "1.4.1-1+b1"},
		{Package: "libpsl5", Version: "0.21.2-1"},
		{Package: "librtmp1", Version: "2.4+20151223.gitfa8646d.1-2+b2"},
		{Package: "libsasl2-2", Version: "2.1.28+dfsg-10"},
		{Package: "libssh2-1", Version: "1.10.0-3+b1"},
		{Package: "libssl3", Version: "3.0.20-1~deb12u2"},
		{Package: "libstdc++6", Version: "12.2.0-14+deb12u1"},
		{Package: "libtasn1-6", Version: "4.19.0-2+deb12u1"},
		{Package: "libtinfo6", Version: "6.4-4"},
		{Package: "libunistring2", Version: "1.0-2"},
		{Package: "libuv1", Version: "1.44.2-1+deb12u1"},
		{Package: "libxml2", Version: "2.9.14+dfsg-1.3~deb12u6"},
		{Package: "libzstd1", Version: "1.5.4+dfsg2-5"},
		{Package: "zlib1g", Version: "1:1.2.13.dfsg-1"},
	}
}

// The programs the e2e tests exec in their pods, beyond busybox's applets.
var userlandPrograms = []string{"/bin/dash", "/usr/bin/curl", "/usr/bin/dig", "/usr/bin/nslookup", "/usr/bin/getent", "/bin/nc.openbsd"}

const busyboxPath = "/bin/busybox"

// userlandFiles is the test images' shared layer: the programs with their
// libraries, busybox with a link for each applet no real program above
// replaces, sh → dash, nc → OpenBSD netcat (the tests use its -v -t -u -w),
// and the /etc files glibc and the tests look for. The shell is dash, not
// busybox's: busybox's shell runs its own applets before PATH, so its nc
// and nslookup would shadow the real ones.
func (b *Builder) userlandFiles(ctx context.Context) ([]File, error) {
	files, err := b.debianFiles(ctx, userlandPins(), append([]string{busyboxPath}, userlandPrograms...))
	if err != nil {
		return nil, err
	}
	taken := map[string]bool{"/usr/bin/nc": true, "/bin/nc": true, "/bin/sh": true}
	var busybox string
	for _, f := range files {
		if f.Path == busyboxPath {
			busybox = f.Source
		}
		taken[f.Path] = true
		taken["/bin/"+filepath.Base(f.Path)] = true
		taken["/usr/bin/"+filepath.Base(f.Path)] = true
	}
	applets, err := busyboxApplets(ctx, busybox)
	if err != nil {
		return nil, err
	}
	for _, a := range applets {
		if !taken[a] && !taken["/bin/"+filepath.Base(a)] && !taken["/usr/bin/"+filepath.Base(a)] {
			taken[a] = true
			files = append(files, File{Path: a, Symlink: busyboxPath})
		}
	}
	files = append(files,
		File{Path: "/usr/bin/nc", Symlink: "/bin/nc.openbsd"},
		File{Path: "/bin/sh", Symlink: "dash"},
		File{Path: "/etc/nsswitch.conf", Data: []byte("passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\n"), Mode: 0o644},
		File{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"), Mode: 0o644},
		File{Path: "/etc/group", Data: []byte("root:x:0:\ngroup-defined-in-image:x:50000:user-defined-in-image\nnogroup:x:65534:\n"), Mode: 0o644},
	)
	return files, nil
}

var appletPath = regexp.MustCompile(`^/?(bin|sbin|usr/bin|usr/sbin)/[a-z0-9_.\[-]+$`)

// busyboxApplets lists the applets of the busybox binary at path (it is
// static and runs on the build machine) as absolute paths, those in the
// bin and sbin directories (not /linuxrc, its init).
func busyboxApplets(ctx context.Context, path string) ([]string, error) {
	out, err := exec.CommandContext(ctx, path, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", path, err)
	}
	var applets []string
	for _, l := range strings.Fields(string(out)) {
		if !appletPath.MatchString(l) {
			continue
		}
		applets = append(applets, "/"+strings.TrimPrefix(l, "/"))
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("busybox --list-full: no applets")
	}
	return applets, nil
}
