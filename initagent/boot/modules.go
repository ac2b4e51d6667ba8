package boot

import (
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

// ModuleResult summarises a LoadModules run.
type ModuleResult struct {
	Loaded, AlreadyLoaded int
	Failed                []error
	Duration              time.Duration
}

// LoadModules loads modules (paths relative to dir), each once all its
// dependencies are in, up to one load per CPU at a time: the kernel verifies
// signatures and relocates modules in parallel. A failure is recorded and
// loading goes on: a missing NIC driver must not stop the node from
// reporting it. Modules depending on a failed one are not tried.
func LoadModules(dir string, modules []ModuleInfo, log *slog.Logger) ModuleResult {
	start := time.Now()
	done := make(map[string]chan struct{}, len(modules))
	optional := map[string]bool{} // soft dependencies of some module
	for _, m := range modules {
		done[m.Name] = make(chan struct{})
		for _, d := range m.SoftDeps {
			optional[d] = true
		}
	}
	var (
		mu     sync.Mutex
		res    ModuleResult
		failed = map[string]bool{}
		slots  = make(chan struct{}, runtime.NumCPU())
		wg     sync.WaitGroup
	)
	for _, m := range modules {
		wg.Go(func() {
			defer close(done[m.Name])
			for _, d := range append(slices.Clone(m.Deps), m.SoftDeps...) {
				if ch, ok := done[d]; ok {
					<-ch
				}
			}
			mu.Lock()
			var blocked string
			for _, d := range m.Deps {
				if failed[d] {
					blocked = d
				}
			}
			mu.Unlock()
			var err error
			if blocked != "" {
				err = fmt.Errorf("load module %s: dependency %s failed", m.Name, blocked)
			} else {
				slots <- struct{}{}
				t := time.Now()
				err = loadModule(filepath.Join(dir, m.Path))
				<-slots
				log.Debug("module", "name", m.Name, "took", time.Since(t), "err", err)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				res.Loaded++
			case errors.Is(err, unix.EEXIST):
				res.AlreadyLoaded++
			case optional[m.Name] && errors.Is(err, unix.ENODEV):
				// A soft dependency for hardware this machine lacks
				// (crc32c_intel without SSE4.2): its users fall back.
				log.Info("optional module not for this machine", "module", m.Name, "err", err)
			default:
				failed[m.Name] = true
				log.Error("load module", "module", m.Name, "err", err)
				res.Failed = append(res.Failed, err)
			}
		})
	}
	wg.Wait()
	res.Duration = time.Since(start)
	return res
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
