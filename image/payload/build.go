// Package payload builds what a node runs besides ballast itself — containerd,
// runc, CNI plugins, the Kubernetes components, etcd and a pause binary — from
// pinned upstream Go modules, packs container images as OCI archives (no
// registry needed) and puts it all into system.sqfs.
//
//	b := &payload.Builder{Log: slog.Default()}
//	sqfs, err := b.System(ctx, payload.RoleControlPlane)
//
// Upstream builds run in generated Go modules under CacheDir/src (never in
// ballast's own module) and their binaries are cached in
// CacheDir/<component>-<version>/, written atomically.
package payload

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Component names accepted by Builder.Build.
const (
	Kubernetes = "kubernetes"  // one multi-call binary "kube" + symlinks kubelet, kubeadm, kube-apiserver, ...
	Etcd       = "etcd"        // etcd
	Containerd = "containerd"  // containerd, containerd-shim-runc-v2
	Runc       = "runc"        // runc, static with seccomp (cgo)
	CNIPlugins = "cni-plugins" // bridge, host-local, loopback, portmap
	Pause      = "pause"       // pause
	// MountTools are u-root's mount and umount: kubelet execs them to mount
	// pod volumes (service-account tokens, secrets, emptyDir in memory).
	MountTools = "mount-tools"
	// Ctr is containerd's ctr, for the tests and lab tools on the build
	// machine (nodes register their images without it). Built from the
	// same pinned containerd; not in Components().
	Ctr = "ctr"
	// Kubectl is kubectl of the pinned Kubernetes, for operators and the
	// cluster tests on the build machine; not in Components() (nodes do not
	// ship it).
	Kubectl = "kubectl"
	// Agnhost is the Kubernetes e2e tests' multi-purpose test server
	// (test/images/agnhost of the pinned Kubernetes), for the cluster
	// tests; not in Components().
	Agnhost = "agnhost"
	// CoreDNS is the cluster DNS (the coredns image kubeadm deploys).
	CoreDNS = "coredns"
	// E2E is the upstream end-to-end suite of the pinned Kubernetes
	// (test/e2e with its network and node tests) as one test binary,
	// e2e.test, for `make conformance`; not in Components().
	E2E = "e2e"
)

// E2EBinary is the test binary the E2E component builds.
const E2EBinary = "e2e.test"

// Components lists every component in build order (cheapest first).
func Components() []string {
	return []string{Pause, MountTools, CNIPlugins, Runc, Containerd, CoreDNS, Etcd, Kubernetes}
}

// KubeBinary is the multi-call Kubernetes binary; KubeCommands are the names
// it answers to (basename of argv[0]).
const KubeBinary = "kube"

// KubeCommands returns the commands of the multi-call binary.
func KubeCommands() []string {
	return []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubeadm", "kubelet", "kube-proxy"}
}

// CNIPluginNames returns the CNI plugins built.
func CNIPluginNames() []string { return []string{"bridge", "host-local", "loopback", "portmap"} }

// Builder builds payload components. The zero value is usable.
type Builder struct {
	// CacheDir holds the generated modules (src/) and the built components;
	// empty means $XDG_CACHE_HOME/ballast/payload (~/.cache/ballast/payload).
	CacheDir string
	// Versions are the upstream versions; zero fields take Pinned().
	Versions Versions
	// GoBin is the go command; empty means "go" from PATH.
	GoBin string
	// GOARCH is the target architecture; empty means the host's (runtime.GOARCH).
	GOARCH string
	// Log receives progress; nil discards it.
	Log *slog.Logger
	// Stderr, if set, receives the go command's output as it runs (it is
	// otherwise kept and quoted in errors).
	Stderr io.Writer
	// Jobs is how many components may build at once; zero means half the
	// CPUs plus one (at most 5): each go command runs a compile per CPU,
	// a second one fills the CPUs while the first links or resolves.
	Jobs int
}

// DefaultCacheDir is where payload builds are cached unless Builder.CacheDir says otherwise.
func DefaultCacheDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("payload cache: %w (set Builder.CacheDir)", err)
	}
	return filepath.Join(dir, "ballast", "payload"), nil
}

func (b *Builder) cacheDir() (string, error) {
	if b.CacheDir != "" {
		return filepath.Abs(b.CacheDir)
	}
	return DefaultCacheDir()
}

func (b *Builder) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

func (b *Builder) versions() Versions {
	v, p := b.Versions, Pinned()
	for _, f := range []struct {
		dst *string
		def string
	}{
		{&v.Kubernetes, p.Kubernetes}, {&v.Containerd, p.Containerd}, {&v.Runc, p.Runc},
		{&v.CNIPlugins, p.CNIPlugins}, {&v.Etcd, p.Etcd}, {&v.Pause, p.Pause}, {&v.URoot, p.URoot}, {&v.CoreDNS, p.CoreDNS},
	} {
		if *f.dst == "" {
			*f.dst = f.def
		}
	}
	return v
}

func (b *Builder) goarch() string {
	if b.GOARCH != "" {
		return b.GOARCH
	}
	return runtime.GOARCH
}

// Build builds the named components (all of Components() if none) unless
// cached and returns each binary's name → absolute path. For Kubernetes the
// map holds KubeBinary and each of KubeCommands() (symlinks to it).
//
// Components that share no Go packages build side by side (Jobs at a
// time); those that do (the Kubernetes family, containerd and ctr) build one
// after the other, since the go command would compile their shared packages
// twice at once. Progress goes to Log: each component as it starts and ends
// (done/total, elapsed, the time its last build took where the cache
// remembers one) and, every 30 s, what is still building.
func (b *Builder) Build(ctx context.Context, components ...string) (map[string]string, error) {
	if len(components) == 0 {
		components = Components()
	}
	cache, err := b.cacheDir()
	if err != nil {
		return nil, err
	}
	units := make([]*unit, len(components))
	results := make([]map[string]string, len(components))
	var todo []int
	for i, c := range components {
		u, err := b.unit(ctx, c)
		if err != nil {
			return nil, err
		}
		units[i] = u
		final := filepath.Join(cache, u.key())
		if _, err := os.Stat(final); err == nil {
			b.log().Info("payload component cached", "component", u.name, "version", u.version, "dir", final)
			results[i] = u.paths(final)
			continue
		}
		todo = append(todo, i)
	}
	if len(todo) > 0 {
		if err := b.buildAll(ctx, units, todo, results); err != nil {
			return nil, err
		}
	}
	out := map[string]string{}
	for _, bins := range results {
		for name, path := range bins {
			out[name] = path
		}
	}
	return out, nil
}

// family groups the components that compile the same Go packages.
func family(component string) string {
	switch component {
	case Kubernetes, Kubectl, Agnhost, E2E:
		return Kubernetes
	case Containerd, Ctr:
		return Containerd
	}
	return component
}

func (b *Builder) jobs() int {
	if b.Jobs > 0 {
		return b.Jobs
	}
	return min(max(runtime.NumCPU()/2, 1), 4) + 1
}

// buildAll builds units[todo...] into results, lane by lane (a lane is a
// family, built in order), the lanes with the most work first.
func (b *Builder) buildAll(ctx context.Context, units []*unit, todo []int, results []map[string]string) error {
	times := b.lastBuildTimes()
	lanes := map[string][]int{}
	var order []string
	for _, i := range todo {
		f := family(units[i].name)
		if _, ok := lanes[f]; !ok {
			order = append(order, f)
		}
		lanes[f] = append(lanes[f], i)
	}
	work := func(f string) float64 {
		var sec float64
		for _, i := range lanes[f] {
			sec += times[units[i].name]
		}
		return sec
	}
	// Lanes start longest first; without a record of its own a component
	// counts with its typical time.
	weight := func(f string) float64 {
		var sec float64
		for _, i := range lanes[f] {
			if t := times[units[i].name]; t > 0 {
				sec += t
			} else {
				sec += typicalBuildSeconds[units[i].name]
			}
		}
		return sec
	}
	sort.SliceStable(order, func(a, c int) bool { return weight(order[a]) > weight(order[c]) })
	var names []string
	for _, i := range todo {
		names = append(names, units[i].name)
	}
	b.log().Info("payload: building", "components", strings.Join(names, ","), "at_once", min(b.jobs(), len(order)),
		"last_build", estimate(work, order))

	pr := &progress{total: len(todo), running: map[string]time.Time{}, start: time.Now()}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go b.heartbeat(ctx, pr, times)
	sem := make(chan struct{}, b.jobs())
	// The first failure is the one reported; it cancels the rest, whose
	// errors (killed builds) are its consequence.
	var failed sync.Once
	var firstErr error
	fail := func(err error) { failed.Do(func() { firstErr = err; cancel() }) }
	var wg sync.WaitGroup
	// A lane holds its slot from its first component to its last; slots
	// go to the lanes in order, longest first.
	for _, f := range order {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			fail(ctx.Err())
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			for _, i := range lanes[f] {
				if ctx.Err() != nil {
					fail(ctx.Err())
					return
				}
				u := units[i]
				pr.started(u.name)
				b.log().Info("payload component building", "component", u.name, "version", u.version,
					"last_build", fmtSeconds(times[u.name]))
				t := time.Now()
				bins, err := b.buildUnit(ctx, u)
				done := pr.finished(u.name)
				if err != nil {
					fail(err)
					return
				}
				results[i] = bins
				b.recordBuildTime(u.name, time.Since(t))
				b.log().Info("payload component built", "component", u.name, "version", u.version,
					"done", fmt.Sprintf("%d/%d", done, pr.total), "elapsed", time.Since(t).Round(time.Second))
			}
		})
	}
	wg.Wait()
	return firstErr
}

// typicalBuildSeconds orders the lanes of a first build: each component's
// cold build on a 2-core machine (kubernetes, containerd, etcd, CNI, runc,
// pause and ctr as measured in the README's Figures; the others rough).
var typicalBuildSeconds = map[string]float64{
	Kubernetes: 872, E2E: 900, Containerd: 173, CoreDNS: 120, Kubectl: 120, Etcd: 60, Agnhost: 60,
	CNIPlugins: 47, Runc: 35, MountTools: 20, Pause: 16, Ctr: 10,
}

func estimate(work func(string) float64, lanes []string) string {
	var longest, total float64
	for _, f := range lanes {
		longest = max(longest, work(f))
		total += work(f)
	}
	if total == 0 {
		return "unknown"
	}
	return fmtSeconds(total) + " of work, longest lane " + fmtSeconds(longest)
}

func fmtSeconds(sec float64) string {
	if sec == 0 {
		return "unknown"
	}
	return time.Duration(sec * float64(time.Second)).Round(time.Second).String()
}

// progress is what Build has under way, for the heartbeat.
type progress struct {
	mu      sync.Mutex
	total   int
	done    int
	running map[string]time.Time
	start   time.Time
}

func (p *progress) started(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running[name] = time.Now()
}

func (p *progress) finished(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.running, name)
	p.done++
	return p.done
}

// heartbeat logs what is still building every 30 s.
func (b *Builder) heartbeat(ctx context.Context, p *progress, times map[string]float64) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		var parts []string
		for name, since := range p.running {
			part := name + " " + time.Since(since).Round(time.Second).String()
			if last := times[name]; last > 0 {
				part += " (last " + fmtSeconds(last) + ")"
			}
			parts = append(parts, part)
		}
		done, total := p.done, p.total
		p.mu.Unlock()
		sort.Strings(parts)
		b.log().Info("payload still building", "running", strings.Join(parts, ", "),
			"done", fmt.Sprintf("%d/%d", done, total), "elapsed", time.Since(p.start).Round(time.Second))
	}
}

// buildTimesFile remembers, per component, how long its last build took
// (any version), for the estimates.
const buildTimesFile = "build-times.json"

// buildTimesLock serializes the updates of buildTimesFile.
const buildTimesLock = "build-times.lock"

func (b *Builder) lastBuildTimes() map[string]float64 {
	times := map[string]float64{}
	cache, err := b.cacheDir()
	if err != nil {
		return times
	}
	data, err := os.ReadFile(filepath.Join(cache, buildTimesFile))
	if err == nil {
		_ = json.Unmarshal(data, &times)
	}
	return times
}

func (b *Builder) recordBuildTime(component string, d time.Duration) {
	cache, err := b.cacheDir()
	if err != nil {
		return
	}
	// Builders here and in other processes (`make payload` runs two) share
	// the file: one read-modify-write at a time. flock conflicts between
	// open files, in one process too.
	lock, err := os.OpenFile(filepath.Join(cache, buildTimesLock), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return
	}
	times := b.lastBuildTimes()
	times[component] = d.Round(100 * time.Millisecond).Seconds()
	data, _ := json.MarshalIndent(times, "", "  ")
	tmp := filepath.Join(cache, "."+buildTimesFile+".tmp")
	if os.WriteFile(tmp, append(data, '\n'), 0o644) == nil {
		_ = os.Rename(tmp, filepath.Join(cache, buildTimesFile))
	}
}

// unit is one component: a generated module and the binaries built from it.
type unit struct {
	name, version string
	requires      [][2]string
	replaces      []Replace
	tools         []string
	files         map[string][]byte // extra files of the generated module
	binaries      []binary
	links         []string // symlinks to binaries[0]
}

type binary struct {
	name, pkg string
	cgoStatic bool // CGO_ENABLED=1 linked with -extldflags -static; else CGO_ENABLED=0
	test      bool // a test binary (go test -c) of pkg's tests
	tags      string
	ldflags   []string
}

func (u *unit) key() string { return u.name + "-" + u.version }

//go:embed pause/main.go
var pauseSource []byte

func (b *Builder) unit(ctx context.Context, name string) (*unit, error) {
	v := b.versions()
	switch name {
	case Pause:
		return &unit{
			name: Pause, version: v.Pause + "-" + shortHash(pauseSource),
			files:    map[string][]byte{"main.go": pauseSource},
			binaries: []binary{{name: "pause", pkg: ".", ldflags: []string{"-X main.version=" + v.Pause}}},
		}, nil
	case MountTools:
		const mod = "github.com/u-root/u-root"
		u := &unit{name: MountTools, version: v.URoot, requires: [][2]string{{mod, v.URoot}}}
		for _, c := range []string{"mount", "umount"} {
			pkg := mod + "/cmds/core/" + c
			u.tools = append(u.tools, pkg)
			u.binaries = append(u.binaries, binary{name: c, pkg: pkg})
		}
		return u, nil
	case CNIPlugins:
		const mod = "github.com/containernetworking/plugins"
		u := &unit{name: CNIPlugins, version: v.CNIPlugins, requires: [][2]string{{mod, v.CNIPlugins}}}
		for _, p := range CNIPluginNames() {
			dir := "main"
			if p == "host-local" {
				dir = "ipam"
			}
			if p == "portmap" {
				dir = "meta"
			}
			pkg := mod + "/plugins/" + dir + "/" + p
			u.tools = append(u.tools, pkg)
			u.binaries = append(u.binaries, binary{name: p, pkg: pkg, ldflags: []string{
				"-X " + mod + "/pkg/utils/buildversion.BuildVersion=" + v.CNIPlugins}})
		}
		return u, nil
	case Runc:
		const mod = "github.com/opencontainers/runc"
		return &unit{
			name: Runc, version: v.Runc, requires: [][2]string{{mod, v.Runc}}, tools: []string{mod},
			binaries: []binary{{name: "runc", pkg: mod, cgoStatic: true, tags: "seccomp netgo osusergo"}},
		}, nil
	case Containerd:
		const mod = "github.com/containerd/containerd/v2"
		ld := []string{"-X " + mod + "/version.Version=" + v.Containerd, "-X " + mod + "/version.Package=" + mod}
		return &unit{
			name: Containerd, version: v.Containerd, requires: [][2]string{{mod, v.Containerd}},
			tools: []string{mod + "/cmd/containerd", mod + "/cmd/containerd-shim-runc-v2"},
			binaries: []binary{
				{name: "containerd", pkg: mod + "/cmd/containerd", ldflags: ld},
				{name: "containerd-shim-runc-v2", pkg: mod + "/cmd/containerd-shim-runc-v2", ldflags: ld},
			},
		}, nil
	case Ctr:
		const mod = "github.com/containerd/containerd/v2"
		return &unit{
			name: Ctr, version: v.Containerd, requires: [][2]string{{mod, v.Containerd}}, tools: []string{mod + "/cmd/ctr"},
			binaries: []binary{{name: "ctr", pkg: mod + "/cmd/ctr", ldflags: []string{"-X " + mod + "/version.Version=" + v.Containerd}}},
		}, nil
	case Etcd:
		const mod = "go.etcd.io/etcd/server/v3"
		return &unit{
			name: Etcd, version: v.Etcd, requires: [][2]string{{mod, v.Etcd}},
			files:    map[string][]byte{"main.go": []byte(etcdMain)},
			binaries: []binary{{name: "etcd", pkg: "."}},
		}, nil
	case CoreDNS:
		const mod = "github.com/coredns/coredns"
		return &unit{
			name: CoreDNS, version: v.CoreDNS + "-" + shortHash([]byte(coreDNSMain())), requires: [][2]string{{mod, v.CoreDNS}},
			files:    map[string][]byte{"main.go": []byte(coreDNSMain())},
			binaries: []binary{{name: CoreDNS, pkg: ".", ldflags: []string{"-X " + mod + "/coremain.GitCommit=" + v.CoreDNS}}},
		}, nil
	case Kubernetes, Kubectl, Agnhost, E2E:
		info, err := b.download(ctx, "k8s.io/kubernetes", v.Kubernetes)
		if err != nil {
			return nil, err
		}
		gomod, err := os.ReadFile(info.GoMod)
		if err != nil {
			return nil, fmt.Errorf("k8s.io/kubernetes go.mod: %w", err)
		}
		replaces, err := StagingReplaces(gomod, v.Kubernetes)
		if err != nil {
			return nil, err
		}
		ld, err := kubeVersionLdflags(v.Kubernetes)
		if err != nil {
			return nil, err
		}
		if name == E2E {
			return &unit{
				name: E2E, version: v.Kubernetes + "-" + shortHash([]byte(e2eSuite)),
				requires: [][2]string{{"k8s.io/kubernetes", v.Kubernetes}}, replaces: replaces,
				files:    map[string][]byte{"e2e_test.go": []byte(e2eSuite)},
				binaries: []binary{{name: E2EBinary, pkg: ".", test: true, ldflags: ld}},
			}, nil
		}
		if name == Kubectl || name == Agnhost {
			pkg := "k8s.io/kubernetes/cmd/" + name
			if name == Agnhost {
				pkg = "k8s.io/kubernetes/test/images/agnhost"
			}
			return &unit{
				name: name, version: v.Kubernetes,
				requires: [][2]string{{"k8s.io/kubernetes", v.Kubernetes}}, replaces: replaces, tools: []string{pkg},
				binaries: []binary{{name: name, pkg: pkg, ldflags: ld}},
			}, nil
		}
		return &unit{
			name: Kubernetes, version: v.Kubernetes,
			requires: [][2]string{{"k8s.io/kubernetes", v.Kubernetes}}, replaces: replaces,
			files:    map[string][]byte{"main.go": []byte(kubeMain)},
			binaries: []binary{{name: KubeBinary, pkg: ".", ldflags: ld}},
			links:    KubeCommands(),
		}, nil
	}
	return nil, fmt.Errorf("payload component %q: unknown, want one of %s", name, strings.Join(append(Components(), Ctr, Kubectl, Agnhost, E2E), ", "))
}

// kubeVersionLdflags sets what `kubelet --version` etc. print, as
// hack/lib/version.sh does, with a fixed build date for reproducibility.
func kubeVersionLdflags(version string) ([]string, error) {
	m := kubernetesVersionRE.FindStringSubmatch(version)
	if m == nil {
		return nil, fmt.Errorf("kubernetes version %q: want v1.N.M", version)
	}
	var ld []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ld = append(ld,
			"-X "+pkg+".gitVersion="+version,
			"-X "+pkg+".gitMajor=1",
			"-X "+pkg+".gitMinor="+m[1],
			"-X "+pkg+".gitTreeState=clean",
			"-X "+pkg+".buildDate=1970-01-01T00:00:00Z")
	}
	return ld, nil
}

// buildUnit builds u into the cache (atomically) and returns its paths.
func (b *Builder) buildUnit(ctx context.Context, u *unit) (map[string]string, error) {
	cache, err := b.cacheDir()
	if err != nil {
		return nil, err
	}
	final := filepath.Join(cache, u.key())
	src := filepath.Join(cache, "src", u.key())
	if err := b.generate(ctx, u, src); err != nil {
		return nil, fmt.Errorf("payload %s %s: %w", u.name, u.version, err)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(cache, "."+u.key()+".tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp) // after a successful rename there is nothing left to remove
	record := buildRecord{Component: u.name, Version: u.version, GoVersion: b.goVersion(ctx), GOARCH: b.goarch()}
	for _, bin := range u.binaries {
		t := time.Now()
		args, env := b.goBuildArgs(bin, filepath.Join(tmp, bin.name))
		if err := b.run(ctx, src, env, args...); err != nil {
			return nil, fmt.Errorf("payload %s %s: build %s: %w", u.name, u.version, bin.name, err)
		}
		fi, err := os.Stat(filepath.Join(tmp, bin.name))
		if err != nil {
			return nil, err
		}
		recorded, _ := b.goBuildArgs(bin, filepath.Join(final, bin.name))
		record.Binaries = append(record.Binaries, builtBinary{
			Name: bin.name, Size: fi.Size(), Seconds: time.Since(t).Round(100 * time.Millisecond).Seconds(),
			Command: append(envDiff(env), append([]string{"go"}, recorded...)...)})
		b.log().Info("payload binary built", "component", u.name, "binary", bin.name,
			"size_mb", fmt.Sprintf("%.1f", float64(fi.Size())/1e6), "elapsed", time.Since(t).Round(time.Second))
	}
	for _, l := range u.links {
		if err := os.Symlink(u.binaries[0].name, filepath.Join(tmp, l)); err != nil {
			return nil, err
		}
	}
	rec, _ := json.MarshalIndent(record, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "build.json"), append(rec, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		if _, statErr := os.Stat(final); statErr != nil {
			return nil, fmt.Errorf("payload %s: %w", u.key(), err)
		}
		// A concurrent build got there first; its result is as good as ours.
	}
	return u.paths(final), nil
}

func (u *unit) paths(dir string) map[string]string {
	out := map[string]string{}
	for _, bin := range u.binaries {
		out[bin.name] = filepath.Join(dir, bin.name)
	}
	for _, l := range u.links {
		out[l] = filepath.Join(dir, l)
	}
	return out
}

// buildRecord is CacheDir/<component>-<version>/build.json.
type buildRecord struct {
	Component string        `json:"component"`
	Version   string        `json:"version"`
	GoVersion string        `json:"go_version"`
	GOARCH    string        `json:"goarch"`
	Binaries  []builtBinary `json:"binaries"`
}

type builtBinary struct {
	Name    string   `json:"name"`
	Size    int64    `json:"size"`
	Seconds float64  `json:"seconds"`
	Command []string `json:"command"`
}

// generate writes the component's module into src and resolves its
// dependencies (go.sum) with go mod tidy.
func (b *Builder) generate(ctx context.Context, u *unit, src string) error {
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	files := map[string][]byte{"go.mod": goModFile("ballast.local/payload/"+u.name, u.requires, u.replaces, u.tools)}
	for name, data := range u.files {
		files[name] = data
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := os.WriteFile(filepath.Join(src, name), files[name], 0o644); err != nil {
			return err
		}
	}
	t := time.Now()
	if err := b.run(ctx, src, b.env(false), "mod", "tidy"); err != nil {
		return fmt.Errorf("go mod tidy in %s: %w", src, err)
	}
	b.log().Info("payload module resolved", "component", u.name, "elapsed", time.Since(t).Round(time.Second))
	return nil
}

func (b *Builder) goBuildArgs(bin binary, out string) (args, env []string) {
	ldflags := append([]string{"-s", "-w"}, bin.ldflags...)
	if bin.cgoStatic {
		ldflags = append(ldflags, "-linkmode=external", "-extldflags=-static")
	}
	args = []string{"build", "-trimpath", "-buildvcs=false", "-o", out}
	if bin.test {
		args = []string{"test", "-c", "-vet=off", "-trimpath", "-buildvcs=false", "-o", out}
	}
	if bin.tags != "" {
		args = append(args, "-tags", bin.tags)
	}
	args = append(args, "-ldflags", strings.Join(ldflags, " "), bin.pkg)
	return args, b.env(bin.cgoStatic)
}

// env is the go command's environment: the caller's, with the settings that
// make generated-module builds self-contained and static.
func (b *Builder) env(cgo bool) []string {
	override := map[string]string{
		"GOFLAGS": "-mod=mod", "GOWORK": "off", "GOOS": "linux", "GOARCH": b.goarch(), "CGO_ENABLED": "0",
	}
	if cgo {
		override["CGO_ENABLED"] = "1"
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := override[k]; !ok {
			env = append(env, kv)
		}
	}
	keys := make([]string, 0, len(override))
	for k := range override {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+override[k])
	}
	return env
}

// envDiff returns the settings env adds to the caller's environment, for the build record.
func envDiff(env []string) []string {
	var out []string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if os.Getenv(k) != v || k == "CGO_ENABLED" || k == "GOFLAGS" {
			out = append(out, kv)
		}
	}
	return out
}

func (b *Builder) goBin() string {
	if b.GoBin != "" {
		return b.GoBin
	}
	return "go"
}

func (b *Builder) goVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, b.goBin(), "env", "GOVERSION").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// run runs the go command in dir; its output goes to b.Stderr and, on
// failure, the tail of it into the error.
func (b *Builder) run(ctx context.Context, dir string, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, b.goBin(), args...)
	cmd.Dir, cmd.Env = dir, env
	var buf tailBuffer
	var w io.Writer = &buf
	if b.Stderr != nil {
		w = io.MultiWriter(&buf, b.Stderr)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s %s: %w\n%s", args[0], args[len(args)-1], err, buf.String())
	}
	return nil
}

// tailBuffer keeps the last 16 KiB written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 16<<10 {
		t.b = t.b[len(t.b)-16<<10:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(bytes.TrimSpace(t.b)) }

// moduleInfo is the part of `go mod download -json` output used here.
type moduleInfo struct {
	Path, Version, GoMod, Dir, Error string
}

// download fetches module@version into the module cache.
func (b *Builder) download(ctx context.Context, module, version string) (*moduleInfo, error) {
	cmd := exec.CommandContext(ctx, b.goBin(), "mod", "download", "-json", module+"@"+version)
	cmd.Dir, cmd.Env = os.TempDir(), b.env(false)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var info moduleInfo
	if jsonErr := json.Unmarshal(out, &info); jsonErr == nil && info.Error != "" {
		return nil, fmt.Errorf("download %s@%s: %s", module, version, info.Error)
	}
	if err != nil {
		return nil, fmt.Errorf("go mod download %s@%s: %w: %s", module, version, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if info.Dir == "" || info.GoMod == "" {
		return nil, errors.New("go mod download " + module + "@" + version + ": no Dir/GoMod in its output")
	}
	return &info, nil
}

// KubeadmImageTags returns the etcd and pause image tags kubeadm of the pinned
// Kubernetes version pulls (constants.DefaultEtcdVersion, constants.PauseVersion).
func (b *Builder) KubeadmImageTags(ctx context.Context) (etcd, pause string, err error) {
	info, err := b.download(ctx, "k8s.io/kubernetes", b.versions().Kubernetes)
	if err != nil {
		return "", "", err
	}
	src, err := os.ReadFile(filepath.Join(info.Dir, "cmd", "kubeadm", "app", "constants", "constants.go"))
	if err != nil {
		return "", "", err
	}
	return kubeadmImageTags(src)
}

// checkCoreDNSTag makes sure the pinned CoreDNS is the version kubeadm's
// addon phase deploys (its image tag), so the preloaded image is the one used.
func (b *Builder) checkCoreDNSTag(ctx context.Context) error {
	info, err := b.download(ctx, "k8s.io/kubernetes", b.versions().Kubernetes)
	if err != nil {
		return err
	}
	src, err := os.ReadFile(filepath.Join(info.Dir, "cmd", "kubeadm", "app", "constants", "constants.go"))
	if err != nil {
		return err
	}
	want := constantValue(src, "CoreDNSVersion")
	if want != b.versions().CoreDNS {
		return fmt.Errorf("CoreDNS %s is pinned, but kubeadm %s deploys coredns:%s: set CoreDNSVersion in image/payload/versions.go to it",
			b.versions().CoreDNS, b.versions().Kubernetes, want)
	}
	return nil
}
