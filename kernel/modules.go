package kernel

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// Module is one loadable module file, relative to the module tree.
type Module struct {
	Name string   // canonical name, dashes folded to underscores
	Path string   // e.g. "kernel/drivers/net/virtio_net.ko"
	Deps []string // names of the modules it needs loaded first
	// SoftDeps are loaded first if they can be (modules.softdep "pre:"):
	// one that fails (crc32c_intel on a CPU without SSE4.2) blocks nothing.
	SoftDeps []string
}

type depGraph struct {
	paths   map[string]string   // name → path
	deps    map[string][]string // name → names it needs (direct, as depmod lists them)
	soft    map[string][]string // name → soft "pre:" dependencies
	builtin map[string]bool
}

// addSoftDeps adds each module's "pre:" soft dependencies (modules.softdep)
// to its dependencies: a name is a module, or an alias (modules.alias,
// matched exactly) standing for every module that provides it, as modprobe
// loads them all. Names that resolve to nothing loadable (built in, or not
// shipped) add nothing.
func (g *depGraph) addSoftDeps(softdep, aliases io.Reader) error {
	byAlias := map[string][]string{}
	sc := bufio.NewScanner(aliases)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "alias" && !strings.ContainsAny(f[1], "*?[") {
			byAlias[f[1]] = append(byAlias[f[1]], ModuleName(f[2]))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	sc = bufio.NewScanner(softdep)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "softdep" {
			continue
		}
		mod := ModuleName(f[1])
		if _, ok := g.paths[mod]; !ok {
			continue
		}
		pre := false
		for _, tok := range f[2:] {
			switch tok {
			case "pre:":
				pre = true
				continue
			case "post:":
				pre = false
				continue
			}
			if !pre {
				continue
			}
			providers := byAlias[tok]
			if _, ok := g.paths[ModuleName(tok)]; ok {
				providers = []string{ModuleName(tok)}
			}
			for _, p := range providers {
				if _, ok := g.paths[p]; ok && p != mod && !g.dependsOn(p, mod) {
					if g.soft == nil {
						g.soft = map[string][]string{}
					}
					g.soft[mod] = append(g.soft[mod], p)
				}
			}
		}
	}
	return sc.Err()
}

// dependsOn reports whether a needs b, directly or not (a soft dependency
// must not close a cycle).
func (g *depGraph) dependsOn(a, b string) bool {
	seen := map[string]bool{}
	var walk func(string) bool
	walk = func(m string) bool {
		if m == b {
			return true
		}
		if seen[m] {
			return false
		}
		seen[m] = true
		for _, d := range append(slices.Clone(g.deps[m]), g.soft[m]...) {
			if walk(d) {
				return true
			}
		}
		return false
	}
	return walk(a)
}

// ModuleName folds a file name or module name to the kernel's canonical form:
// "kernel/drivers/net/virtio-net.ko.xz" → "virtio_net".
func ModuleName(s string) string {
	s = path.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

func parseDeps(dep io.Reader, builtin io.Reader) (*depGraph, error) {
	g := &depGraph{paths: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		file, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %d: missing ':'", n)
		}
		name := ModuleName(file)
		g.paths[name] = file
		for _, d := range strings.Fields(rest) {
			g.deps[name] = append(g.deps[name], ModuleName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if builtin != nil {
		sc := bufio.NewScanner(builtin)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				g.builtin[ModuleName(l)] = true
			}
		}
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Resolve returns the named modules and everything they depend on, each
// once, dependencies before their users, so loading in order never fails
// for a missing symbol. Modules built into the kernel are skipped.
func (k *Kernel) Resolve(names []string) ([]Module, error) {
	var (
		out     []Module
		state   = map[string]int{} // 0 new, 1 visiting, 2 done
		missing []string
	)
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " → "))
		case 2:
			return nil
		}
		state[name] = 1
		for _, d := range append(slices.Clone(k.dep.soft[name]), k.dep.deps[name]...) {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, Module{Name: name, Path: k.dep.paths[name], Deps: k.dep.deps[name], SoftDeps: k.dep.soft[name]})
		return nil
	}
	for _, raw := range names {
		name := ModuleName(raw)
		if _, ok := k.dep.paths[name]; !ok {
			if k.dep.builtin[name] {
				continue
			}
			missing = append(missing, raw)
			continue
		}
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("kernel %s (%s) has no module %s: check the name with `find %s -name '*.ko*'`",
			k.Release, k.Source, strings.Join(quote(missing), ", "), k.ModulesDir)
	}
	return out, nil
}

func quote(ss []string) []string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return q
}
