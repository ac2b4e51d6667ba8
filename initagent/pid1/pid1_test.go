package pid1

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const helperEnv = "BALLAST_PID1_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "reaper":
		os.Exit(reaperHelper())
	case "process":
		os.Exit(processHelper())
	}
	os.Exit(m.Run())
}

// reaperHelper plays init for its own descendants (a child subreaper), runs
// the Reaper, and makes a shell that leaves an orphan behind. It exits 0 when
// neither the shell nor the orphan remains as a zombie.
func reaperHelper() int {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&Reaper{Log: slog.New(slog.DiscardHandler)}).Run(ctx)
	// Not exec.Cmd: its Wait would race the reaper for the exit status.
	if _, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "sleep 0.2 & exit 0"}, &syscall.ProcAttr{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if n, zombies := children(); n == 0 && zombies == 0 {
			return 0
		}
	}
	n, zombies := children()
	fmt.Fprintf(os.Stderr, "%d children left, %d of them zombies\n", n, zombies)
	return 1
}

// children counts this process's children and how many are zombies.
func children() (n, zombies int) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	self := fmt.Sprint(os.Getpid())
	for _, s := range stats {
		data, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'.
		rest := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
		if len(rest) > 1 && rest[1] == self {
			n++
			if rest[0] == "Z" {
				zombies++
			}
		}
	}
	return n, zombies
}

func TestReaperCollectsOrphans(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=reaper")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("reaper helper: %v\n%s", err, out)
	}
}

func TestKeyBitSet(t *testing.T) {
	for _, tc := range []struct {
		bitmap string
		bit    int
		want   bool
	}{
		{"10000000000000 0\n", keyPower, true}, // ACPI power button: bit 116 = word 1, bit 52
		{"100000 0", keyPower, false},
		{"0", keyPower, false},
		{"4 0 0 0", 2 + 3*64, true},
		{"zz", 1, false},
	} {
		if got := keyBitSet(tc.bitmap, tc.bit); got != tc.want {
			t.Errorf("keyBitSet(%q, %d) = %v, want %v", tc.bitmap, tc.bit, got, tc.want)
		}
	}
}

func TestPowerButtonDevices(t *testing.T) {
	sys := t.TempDir()
	for ev, caps := range map[string]string{"event0": "10000000000000 0\n", "event1": "3 0\n"} {
		dir := filepath.Join(sys, ev, "device", "capabilities")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "key"), []byte(caps), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := powerButtonDevices(sys, "/dev/input")
	if len(got) != 1 || got[0] != "/dev/input/event0" {
		t.Errorf("powerButtonDevices = %v, want [/dev/input/event0]", got)
	}
}

func TestParseAction(t *testing.T) {
	for _, s := range []string{"poweroff", "reboot", "halt"} {
		if a, err := ParseAction(s); err != nil || string(a) != s {
			t.Errorf("ParseAction(%q) = %q, %v", s, a, err)
		}
	}
	if _, err := ParseAction("explode"); err == nil || !strings.Contains(err.Error(), "poweroff, reboot or halt") {
		t.Errorf("ParseAction(explode) = %v, want an error listing the actions", err)
	}
}

func TestSupervisorRestartsAndStopsInReverseOrder(t *testing.T) {
	s := &Supervisor{Log: slog.New(slog.DiscardHandler), MaxBackoff: 50 * time.Millisecond}
	ctx := context.Background()
	var stopped []string
	stopOrder := make(chan string, 3)
	var crashes atomic.Int32
	daemon := func(name string) Daemon {
		return Daemon{Name: name, Run: func(ctx context.Context) error {
			<-ctx.Done()
			stopOrder <- name
			return nil
		}}
	}
	s.Start(ctx, daemon("dns"))
	s.Start(ctx, Daemon{Name: "crashy", Run: func(ctx context.Context) error {
		if crashes.Add(1) < 3 {
			panic("boom")
		}
		<-ctx.Done()
		stopOrder <- "crashy"
		return errors.New("stopped")
	}})
	s.Start(ctx, daemon("vip"))
	for crashes.Load() < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	if stuck := s.StopAll(5 * time.Second); len(stuck) != 0 {
		t.Fatalf("StopAll: stuck %v", stuck)
	}
	close(stopOrder)
	for n := range stopOrder {
		stopped = append(stopped, n)
	}
	if want := "vip crashy dns"; strings.Join(stopped, " ") != want {
		t.Errorf("stop order %v, want %s", stopped, want)
	}
}

func TestSupervisorReportsStuckDaemon(t *testing.T) {
	s := &Supervisor{Log: slog.New(slog.DiscardHandler)}
	release := make(chan struct{})
	defer close(release)
	s.Start(context.Background(), Daemon{Name: "stubborn", Run: func(ctx context.Context) error {
		<-release
		return nil
	}})
	if stuck := s.StopAll(50 * time.Millisecond); len(stuck) != 1 || stuck[0] != "stubborn" {
		t.Errorf("StopAll = %v, want [stubborn]", stuck)
	}
}
