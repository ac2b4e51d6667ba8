package boot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ModuleResult summarises loading a set of modules.
type ModuleResult struct {
	Loaded, AlreadyLoaded int
	Failed                []error
	Duration              time.Duration
}

// ModuleOrder says which modules load at once and which wait.
type ModuleOrder struct {
	// First load at once, with their dependencies; the others wait until
	// Later is closed. A nil Later holds nothing back.
	First []string
	Later <-chan struct{}
}

// Modules is a set of modules loading in the background (StartModules).
// What needs one of them waits for it alone; the rest of boot goes on.
// A nil *Modules has nothing to wait for.
type Modules struct {
	done map[string]chan struct{} // closed once the module was tried
	all  chan struct{}            // closed once every module was tried

	mu     sync.Mutex
	failed map[string]error
	res    ModuleResult
}

// LoadModules loads modules (paths relative to dir) and returns when each
// was tried: StartModules, then WaitAll.
func LoadModules(dir string, modules []ModuleInfo, log *slog.Logger) ModuleResult {
	m := StartModules(dir, modules, ModuleOrder{}, log)
	<-m.all
	return m.Result()
}

// StartModules starts loading modules (paths relative to dir), each once
// all its dependencies are in, up to one load per CPU at a time: the kernel
// verifies signatures and relocates modules in parallel. Loads start in
// the list's order. A failure is recorded and loading goes on: a missing
// NIC driver must not stop the node from reporting it. Modules depending
// on a failed one are not tried.
func StartModules(dir string, modules []ModuleInfo, order ModuleOrder, log *slog.Logger) *Modules {
	start := time.Now()
	m := &Modules{done: make(map[string]chan struct{}, len(modules)), all: make(chan struct{}), failed: map[string]error{}}
	optional := map[string]bool{} // soft dependencies of some module
	byName := make(map[string]ModuleInfo, len(modules))
	for _, mod := range modules {
		m.done[mod.Name] = make(chan struct{})
		byName[mod.Name] = mod
		for _, d := range mod.SoftDeps {
			optional[d] = true
		}
	}
	// The modules named first and what they depend on do not wait for Later.
	first := map[string]bool{}
	var mark func(string)
	mark = func(name string) {
		if first[name] {
			return
		}
		first[name] = true
		for _, d := range append(slices.Clone(byName[name].Deps), byName[name].SoftDeps...) {
			mark(d)
		}
	}
	for _, n := range order.First {
		if _, ok := byName[n]; ok {
			mark(n)
		}
	}
	slots := make(chan struct{}, runtime.NumCPU())
	var wg sync.WaitGroup
	for _, mod := range modules {
		wg.Go(func() {
			defer close(m.done[mod.Name])
			if order.Later != nil && !first[mod.Name] {
				<-order.Later
			}
			for _, d := range append(slices.Clone(mod.Deps), mod.SoftDeps...) {
				if ch, ok := m.done[d]; ok {
					<-ch
				}
			}
			m.mu.Lock()
			var blocked string
			for _, d := range mod.Deps {
				if m.failed[d] != nil {
					blocked = d
				}
			}
			m.mu.Unlock()
			var err error
			if blocked != "" {
				err = fmt.Errorf("load module %s: dependency %s failed", mod.Name, blocked)
			} else {
				slots <- struct{}{}
				t := time.Now()
				err = loadModule(filepath.Join(dir, mod.Path))
				<-slots
				log.Debug("module", "name", mod.Name, "took", time.Since(t), "err", err)
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			switch {
			case err == nil:
				m.res.Loaded++
			case errors.Is(err, unix.EEXIST):
				m.res.AlreadyLoaded++
			case optional[mod.Name] && errors.Is(err, unix.ENODEV):
				// A soft dependency for hardware this machine lacks
				// (crc32c_intel without SSE4.2): its users fall back.
				log.Info("optional module not for this machine", "module", mod.Name, "err", err)
			default:
				m.failed[mod.Name] = err
				log.Error("load module", "module", mod.Name, "err", err)
				m.res.Failed = append(m.res.Failed, err)
			}
		})
	}
	go func() {
		wg.Wait()
		m.mu.Lock()
		m.res.Duration = time.Since(start)
		m.mu.Unlock()
		close(m.all)
	}()
	return m
}

// Wait returns once the named modules were tried, with the first one's
// failure if any failed. Names not in the set (built into the kernel, or
// not in the image) need no wait.
func (m *Modules) Wait(ctx context.Context, names ...string) error {
	if m == nil {
		return nil
	}
	for _, n := range names {
		ch, ok := m.done[n]
		if !ok {
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for module %s: %w", n, ctx.Err())
		}
		m.mu.Lock()
		err := m.failed[n]
		m.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// WaitAll returns once every module was tried, or ctx ends.
func (m *Modules) WaitAll(ctx context.Context) error {
	if m == nil {
		return nil
	}
	select {
	case <-m.all:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the boot modules: %w", ctx.Err())
	}
}

// Done is closed once every module was tried.
func (m *Modules) Done() <-chan struct{} {
	if m == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return m.all
}

// Result is the summary so far; final once Done is closed.
func (m *Modules) Result() ModuleResult {
	if m == nil {
		return ModuleResult{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.res
	r.Failed = slices.Clone(r.Failed)
	return r
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

// SetHostname sets the kernel's hostname.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname %q: %w", name, err)
	}
	return nil
}

// LoopbackUp brings up lo; the kernel leaves it down and local services
// (the resolver on 127.0.0.53, the API proxy on 127.0.0.1) need it.
func LoopbackUp() error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}
