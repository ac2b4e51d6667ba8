package boot

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// ModuleResult summarises a LoadModules run.
type ModuleResult struct {
	Loaded, AlreadyLoaded int
	Failed                []error
	Duration              time.Duration
}

// LoadModules loads modules (paths relative to dir) in the given order,
// which imgbuild made dependency-first. A failure is recorded and loading
// goes on: a missing NIC driver must not stop the node from reporting it.
func LoadModules(dir string, paths []string, log *slog.Logger) ModuleResult {
	start := time.Now()
	var res ModuleResult
	for _, p := range paths {
		err := loadModule(filepath.Join(dir, p))
		switch {
		case err == nil:
			res.Loaded++
		case errors.Is(err, unix.EEXIST):
			res.AlreadyLoaded++
		default:
			log.Error("load module", "module", p, "err", err)
			res.Failed = append(res.Failed, err)
		}
	}
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
