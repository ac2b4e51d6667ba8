package coldplug

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/boot"
)

// fakeSys lays out a sysfs with devices (path → modalias) and the modules
// the kernel already has.
func fakeSys(t *testing.T, devices map[string]string, loaded ...string) string {
	t.Helper()
	sys := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(sys, "bus/pci"), 0o755))
	for path, alias := range devices {
		dir := filepath.Join(sys, path)
		must(os.MkdirAll(dir, 0o755))
		must(os.WriteFile(filepath.Join(dir, "modalias"), []byte(alias+"\n"), 0o444))
		must(os.Symlink(filepath.Join(sys, "bus/pci"), filepath.Join(dir, "subsystem")))
	}
	for _, m := range loaded {
		must(os.MkdirAll(filepath.Join(sys, "module", m), 0o755))
	}
	return sys
}

// TestColdplugBindsDevicesPresent: each device with a modalias gets the
// modules its aliases name, with their dependencies first; a module the
// kernel already has is not loaded again; a module that cannot load (here:
// its file is missing) is an error on the binding of the device that
// wanted it, and a device no alias matches gets no binding.
func TestColdplugBindsDevicesPresent(t *testing.T) {
	const (
		nic  = "/devices/pci0000:00/0000:00:02.0"
		vga  = "/devices/pci0000:00/0000:00:03.0"
		nvme = "/devices/pci0000:00/0000:00:04.0"
	)
	sys := fakeSys(t, map[string]string{
		nic:  "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
		vga:  "pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00",
		nvme: "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
	}, "nvme", "nvme_core")
	l := &Loader{Dir: t.TempDir(), Sys: sys, Drivers: []boot.ModuleInfo{
		{Name: "ptp", Path: "kernel/ptp.ko"},
		{Name: "e1000e", Path: "kernel/e1000e.ko", Deps: []string{"ptp"}, Aliases: []string{"pci:v00008086d000010D3sv*sd*bc*sc*i*"}},
		{Name: "nvme_core", Path: "kernel/nvme-core.ko"},
		{Name: "nvme", Path: "kernel/nvme.ko", Deps: []string{"nvme_core"}, Aliases: []string{"pci:v*d*sv*sd*bc01sc08i02*"}},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	select {
	case <-l.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("coldplug never finished")
	}
	st := l.Status()
	if st.Devices != 3 || st.ColdplugMs <= 0 {
		t.Errorf("devices %d, coldplug took %d ms: want 3 devices and a duration", st.Devices, st.ColdplugMs)
	}
	if len(st.Bindings) != 2 {
		t.Fatalf("bindings %+v, want the NIC and the NVMe controller", st.Bindings)
	}
	byDevice := map[string]Binding{}
	for _, b := range st.Bindings {
		byDevice[b.Device] = b
	}
	if b := byDevice[nvme]; !slices.Equal(b.Modules, []string{"nvme"}) || b.Error != "" || b.Source != "coldplug" || b.Subsystem != "pci" {
		t.Errorf("NVMe binding %+v: want nvme, already loaded, no error", b)
	}
	if b := byDevice[nic]; !slices.Equal(b.Modules, []string{"e1000e"}) || !strings.Contains(b.Error, "e1000e did not load") {
		t.Errorf("NIC binding %+v: want e1000e with an error (its module file is missing)", b)
	}
	// Walking again (after a uevent overrun) adds nothing twice.
	l.rescan()
	if n := len(l.Status().Bindings); n != 2 {
		t.Errorf("after a rescan: %d bindings, want 2", n)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// TestDriverDependsOnBootModule: the image loads some modules at boot
// whatever the hardware, while coldplug runs; a driver that depends on one
// that is not in yet (sr_mod on cdrom) loads it first instead of failing
// as "not in the image".
func TestDriverDependsOnBootModule(t *testing.T) {
	drivers := []boot.ModuleInfo{{Name: "sr_mod", Path: "kernel/sr_mod.ko", Deps: []string{"cdrom"}, Aliases: []string{"scsi:t-0x05*"}}}
	bootMods := []boot.ModuleInfo{{Name: "cdrom", Path: "kernel/cdrom.ko", Aliases: []string{"devname:cdrom"}}}
	names := func(plan []boot.ModuleInfo) []string {
		var out []string
		for _, m := range plan {
			out = append(out, m.Name)
		}
		return out
	}

	l := &Loader{Sys: fakeSys(t, nil), Drivers: drivers, Boot: bootMods}
	l.init()
	if got := names(l.closure([]string{"sr_mod"})); !slices.Equal(got, []string{"cdrom", "sr_mod"}) {
		t.Errorf("plan %v, want [cdrom sr_mod]", got)
	}
	if err := l.attempts["cdrom"]; err != nil {
		t.Errorf("cdrom: %v", err)
	}
	if got := Match(l.aliases, "devname:cdrom"); len(got) != 0 {
		t.Errorf("a boot module's alias matched a device: %v", got)
	}

	without := &Loader{Sys: fakeSys(t, nil), Drivers: drivers}
	without.init()
	_ = without.closure([]string{"sr_mod"})
	if err := without.attempts["cdrom"]; err == nil || !strings.Contains(err.Error(), "not in the image") {
		t.Errorf("without the boot modules: cdrom %v, want not in the image", err)
	}
}

// TestUeventSocketReadsKernelEvents: the socket receives the kernel's own
// uevents (a veth pair made in a fresh network namespace announces itself
// there) and Close ends a blocked Read.
func TestUeventSocketReadsKernelEvents(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	type result struct {
		ev  uevent
		err error
	}
	got := make(chan result, 1)
	go func() {
		goruntime.LockOSThread() // the thread, and the namespace with it, end with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			got <- result{err: err}
			return
		}
		s, err := openUevents()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer s.Close()
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cpl0"}, PeerName: "cpl1"}
		if err := netlink.LinkAdd(veth); err != nil {
			got <- result{err: err}
			return
		}
		for {
			ev, err := s.Read()
			if err != nil || (ev.Action == "add" && strings.HasSuffix(ev.Env["DEVPATH"], "/net/cpl0")) {
				got <- result{ev, err}
				return
			}
		}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.ev.Env["SUBSYSTEM"] != "net" || r.ev.Env["INTERFACE"] != "cpl0" {
			t.Errorf("event %+v: want SUBSYSTEM=net INTERFACE=cpl0", r.ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no uevent for the new veth")
	}

	s, err := openUevents()
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Read(); err != nil {
				ended <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a blocked Read")
	}
}

func TestParseUevent(t *testing.T) {
	ev, err := parseUevent([]byte("add@/devices/pci0000:00/0000:00:04.0\x00ACTION=add\x00DEVPATH=/devices/pci0000:00/0000:00:04.0\x00SUBSYSTEM=pci\x00MODALIAS=pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02\x00SEQNUM=1234\x00"))
	if err != nil || ev.Action != "add" || ev.Env["MODALIAS"] != "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02" || ev.Env["SUBSYSTEM"] != "pci" {
		t.Errorf("kernel event: %+v, %v", ev, err)
	}
	for _, bad := range []string{"libudev\x00\xfe\xed\xca\xfe", "", "add@/x\x00ACTION=remove\x00"} {
		if _, err := parseUevent([]byte(bad)); err == nil {
			t.Errorf("%q parsed; want an error", bad)
		}
	}
}

// TestMissingFirmwareIsReported: a failed firmware load in the kernel log
// becomes a warning naming the blob and device, and a status entry; other
// kernel lines are ignored.
func TestMissingFirmwareIsReported(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedLog
	l := &Loader{Log: slog.New(slog.NewTextHandler(&logs, nil)), Firmware: boot.FirmwareInfo{Packages: []string{"debian:firmware-realtek=20230210-5"}}}
	l.init()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.watchFirmware(ctx, r); close(done) }()
	for _, rec := range []string{
		"6,1,100,-;e1000e 0000:00:02.0 eth0: NIC Link is Up\n",
		"3,2,200,-;r8169 0000:01:00.0: Direct firmware load for rtl_nic/rtl8168h-2.fw failed with error -2\n",
	} {
		if _, err := w.WriteString(rec); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(l.Status().FirmwareMissing) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	w.Close()
	<-done
	if got := l.Status().FirmwareMissing; !slices.Equal(got, []string{"rtl_nic/rtl8168h-2.fw"}) {
		t.Errorf("firmware missing %v", got)
	}
	out := logs.String()
	for _, want := range []string{`level=WARN msg="firmware missing" file=rtl_nic/rtl8168h-2.fw driver=r8169 device=0000:01:00.0`, "firmware-realtek"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
