// Package coldplug loads the kernel modules the hardware present needs, the
// way udev's coldplug does: every device under /sys that has a modalias is
// matched against the image's modules.alias patterns (fnmatch globs, as
// modprobe matches them) and the matching modules are loaded with their
// dependencies. It keeps listening for kernel uevents afterwards, so devices
// that appear later (behind a driver just loaded, a USB stick, a hot-plugged
// disk or NIC) get their drivers too.
//
//	l := &coldplug.Loader{Dir: "/lib/modules/" + release, Drivers: info.Drivers, Log: log}
//	go l.Run(ctx)
//	<-l.Ready() // the devices present at boot have their drivers
package coldplug

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ballast-os/ballast/initagent/boot"
)

// maxBindings caps the devices Status remembers (hot-plug churn).
const maxBindings = 1024

// Loader matches devices to driver modules and loads them.
type Loader struct {
	// Dir holds the modules: /lib/modules/<release>.
	Dir string
	// Drivers are the modules loaded on demand, with their aliases; the
	// modules they depend on are among them or in Boot.
	Drivers []boot.ModuleInfo
	// Boot are the modules the image loads at boot whatever the hardware,
	// possibly while the loader runs: a driver that depends on one loads
	// it if it is not in yet. Their aliases are not matched.
	Boot []boot.ModuleInfo
	// Sys is sysfs; default /sys.
	Sys string
	// Kmsg is the kernel log, followed for firmware the drivers did not
	// find; empty means not followed.
	Kmsg string
	// Firmware says where the image's firmware came from, for the warning.
	Firmware boot.FirmwareInfo
	Log      *slog.Logger

	once      sync.Once
	readyOnce sync.Once
	ready     chan struct{}
	mu        sync.Mutex
	status    Status
	seen      map[string]bool // devpaths with a binding
	byName    map[string]boot.ModuleInfo
	aliases   []Alias
	attempts  map[string]error // module → outcome of its load
}

// Status is what the loader did, for `nodectl status`.
type Status struct {
	// ColdplugMs is how long matching and loading the drivers of the
	// devices present at boot took; zero while it runs.
	ColdplugMs int64 `json:"coldplugMs"`
	// Devices counts the devices with a modalias seen so far.
	Devices int `json:"devices"`
	// Listening says uevents are followed (hot-plug works).
	Listening bool `json:"listening"`
	// Bindings are the devices that matched a driver module.
	Bindings []Binding `json:"bindings"`
	// FirmwareMissing are blobs drivers asked for and did not find.
	FirmwareMissing []string `json:"firmwareMissing,omitempty"`
}

// Binding is one device and the modules loaded for it.
type Binding struct {
	Device    string   `json:"device"` // sysfs path, e.g. /devices/pci0000:00/0000:00:02.0
	Subsystem string   `json:"subsystem,omitempty"`
	Modalias  string   `json:"modalias"`
	Modules   []string `json:"modules"`
	// Source is "coldplug" for devices present at boot, "uevent" for ones
	// that appeared later.
	Source string `json:"source"`
	Error  string `json:"error,omitempty"`
}

func (l *Loader) init() {
	l.once.Do(func() {
		l.ready = make(chan struct{})
		if l.Sys == "" {
			l.Sys = "/sys"
		}
		if l.Log == nil {
			l.Log = slog.New(slog.DiscardHandler)
		}
		l.seen = map[string]bool{}
		l.attempts = map[string]error{}
		l.byName = map[string]boot.ModuleInfo{}
		for _, m := range l.Boot {
			l.byName[m.Name] = m
		}
		for _, m := range l.Drivers {
			l.byName[m.Name] = m
			for _, p := range m.Aliases {
				l.aliases = append(l.aliases, Alias{Pattern: p, Module: m.Name})
			}
		}
	})
}

// Ready is closed once the devices present when Run started have been
// matched and their modules loaded.
func (l *Loader) Ready() <-chan struct{} {
	l.init()
	return l.ready
}

// Status returns a copy of what the loader did.
func (l *Loader) Status() Status {
	l.init()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.status
	st.Bindings = slices.Clone(st.Bindings)
	st.FirmwareMissing = slices.Clone(st.FirmwareMissing)
	return st
}

// Run subscribes to uevents, coldplugs the devices present, then loads
// drivers for devices as they appear until ctx ends. Without a uevent
// socket it still coldplugs and returns the socket's error.
func (l *Loader) Run(ctx context.Context) error {
	l.init()
	if l.Kmsg != "" {
		if f, err := os.Open(l.Kmsg); err != nil {
			l.Log.Warn("kernel log not followed: missing firmware will not be reported", "err", err)
		} else {
			fwCtx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { l.watchFirmware(fwCtx, f); close(done) }()
			defer func() { cancel(); <-done }()
		}
	}
	// Subscribe first: a device added while sysfs is walked is then seen
	// either by the walk or as an event.
	events, err := openUevents()
	if err != nil {
		l.Log.Error("no uevents: devices that appear after boot get no driver", "err", err)
	}
	l.coldplug(events)
	if err != nil {
		return err
	}
	defer events.Close()
	l.mu.Lock()
	l.status.Listening = true
	l.mu.Unlock()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			events.Close() // unblocks Read
		case <-stop:
		}
	}()
	for {
		ev, err := events.Read()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errOverrun):
			l.Log.Warn("uevents lost (receive buffer overrun): walking sysfs again")
			l.rescan()
			continue
		case err != nil:
			return fmt.Errorf("uevents: %w", err)
		}
		if d, ok := wantsDriver(ev); ok {
			l.bind([]device{d}, "uevent")
		}
	}
}

// wantsDriver is the device an "add" uevent announces, when it has a modalias.
func wantsDriver(ev uevent) (device, bool) {
	if ev.Action != "add" || ev.Env["MODALIAS"] == "" {
		return device{}, false
	}
	return device{path: ev.Env["DEVPATH"], subsystem: ev.Env["SUBSYSTEM"], modalias: ev.Env["MODALIAS"]}, true
}

// device is a device that asks for a driver.
type device struct{ path, subsystem, modalias string }

// coldplug binds the devices present, then the devices their drivers
// brought up (disks behind a storage controller, for instance) until a
// round loads nothing new. finit_module returns once the module's probing,
// asynchronous parts included, is done, so those devices' uevents are
// already queued when a round ends. Devices found later by slower buses
// (USB enumeration) are handled by Run as they come.
func (l *Loader) coldplug(events *ueventSocket) {
	start := time.Now()
	devs := l.scan()
	loaded := l.bind(devs, "coldplug")
	for events != nil && loaded > 0 {
		var more []device
		for {
			ev, ok, err := events.TryRead()
			if errors.Is(err, errOverrun) {
				more = append(more, l.scan()...)
				continue
			}
			if err != nil || !ok {
				break
			}
			if d, ok := wantsDriver(ev); ok {
				more = append(more, d)
			}
		}
		devs = append(devs, more...)
		loaded = l.bind(more, "coldplug")
	}
	took := time.Since(start)
	l.mu.Lock()
	l.status.ColdplugMs = max(took.Milliseconds(), 1)
	loaded = 0
	for _, err := range l.attempts {
		if err == nil {
			loaded++
		}
	}
	l.mu.Unlock()
	l.Log.Info("coldplug", "devices", len(devs), "modules", loaded, "took", took.Round(time.Millisecond))
	l.readyOnce.Do(func() { close(l.ready) })
}

func (l *Loader) rescan() { _ = l.bind(l.scan(), "uevent") }

// scan walks /sys/devices for modalias files.
func (l *Loader) scan() []device {
	var devs []device
	root := filepath.Join(l.Sys, "devices")
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "modalias" {
			return nil
		}
		data, err := os.ReadFile(path)
		alias := strings.TrimSpace(string(data))
		if err != nil || alias == "" {
			return nil
		}
		dir := filepath.Dir(path)
		sub := ""
		if target, err := os.Readlink(filepath.Join(dir, "subsystem")); err == nil {
			sub = filepath.Base(target)
		}
		devs = append(devs, device{path: strings.TrimPrefix(dir, l.Sys), subsystem: sub, modalias: alias})
		return nil
	})
	return devs
}

// bind matches devs to modules, loads the modules not yet loaded (all of
// them at once, dependencies first) and records a binding per device. It
// returns how many modules it tried to load.
func (l *Loader) bind(devs []device, source string) int {
	type match struct {
		dev  device
		mods []string
	}
	var matches []match
	var want []string
	l.mu.Lock()
	for _, d := range devs {
		if l.seen[d.path] {
			continue
		}
		l.status.Devices++
		mods := Match(l.aliases, d.modalias)
		if len(mods) == 0 {
			continue
		}
		l.seen[d.path] = true
		matches = append(matches, match{d, mods})
		for _, m := range mods {
			if _, tried := l.attempts[m]; !tried && !slices.Contains(want, m) {
				want = append(want, m)
			}
		}
	}
	plan := l.closure(want)
	l.mu.Unlock()

	if len(plan) > 0 {
		boot.LoadModules(l.Dir, plan, l.Log)
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range plan {
		if _, tried := l.attempts[m.Name]; tried {
			continue
		}
		l.attempts[m.Name] = nil
		if !l.isLoaded(m.Name) {
			l.attempts[m.Name] = fmt.Errorf("module %s did not load (see the error logged for it)", m.Name)
		}
	}
	for _, mt := range matches {
		b := Binding{Device: mt.dev.path, Subsystem: mt.dev.subsystem, Modalias: mt.dev.modalias, Modules: mt.mods, Source: source}
		var errs []string
		for _, m := range mt.mods {
			if err := l.attempts[m]; err != nil {
				errs = append(errs, err.Error())
			}
		}
		b.Error = strings.Join(errs, "; ")
		if b.Error != "" {
			l.Log.Error("device driver", "device", b.Device, "subsystem", b.Subsystem, "modalias", b.Modalias, "modules", b.Modules, "err", b.Error)
		} else {
			l.Log.Info("device driver", "device", b.Device, "subsystem", b.Subsystem, "modules", b.Modules, "source", source)
		}
		if len(l.status.Bindings) < maxBindings {
			l.status.Bindings = append(l.status.Bindings, b)
		}
	}
	return len(plan)
}

// closure lists the modules in want and everything they depend on that is
// not loaded yet, each once. The caller holds l.mu.
func (l *Loader) closure(want []string) []boot.ModuleInfo {
	var plan []boot.ModuleInfo
	added := map[string]bool{}
	var add func(name string)
	add = func(name string) {
		if added[name] {
			return
		}
		added[name] = true
		if _, tried := l.attempts[name]; tried {
			return
		}
		if l.isLoaded(name) { // loaded at boot, or by the kernel itself
			l.attempts[name] = nil
			return
		}
		m, ok := l.byName[name]
		if !ok {
			l.attempts[name] = fmt.Errorf("module %s is not in the image", name)
			return
		}
		for _, d := range append(slices.Clone(m.SoftDeps), m.Deps...) {
			add(d)
		}
		plan = append(plan, m)
	}
	for _, w := range want {
		add(w)
	}
	return plan
}

// isLoaded reports whether the kernel has the module (loaded, or built in
// with parameters).
func (l *Loader) isLoaded(name string) bool {
	_, err := os.Stat(filepath.Join(l.Sys, "module", strings.ReplaceAll(name, "-", "_")))
	return err == nil
}
