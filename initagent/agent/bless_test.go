package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/sysslot"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// fakeClock is time the test moves. Every After announces itself on
// waiting, so the test knows the code under test is blocked on it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []fakeTimer
	waiting chan time.Duration
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), waiting: make(chan time.Duration, 100)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	c.timers = append(c.timers, fakeTimer{c.now.Add(d), ch})
	c.mu.Unlock()
	c.waiting <- d
	return ch
}

// step waits until the code under test waits on the clock, then moves the
// clock by what it waits for.
func (c *fakeClock) step(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.waiting:
		c.advance(d)
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("nothing waits on the clock")
		return 0
	}
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if !tm.at.After(c.now) {
			tm.ch <- c.now
		} else {
			kept = append(kept, tm)
		}
	}
	c.timers = kept
}

// espWith makes an ESP directory holding the given loader entries
// (file name → slot) and returns the real sysslot.Manager for running.
func espWith(t *testing.T, running string, entries ...string) *sysslot.Manager {
	t.Helper()
	esp := t.TempDir()
	dir := filepath.Join(esp, sysslot.EntriesDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, name := range entries {
		e := sysslot.NewEntry(strings.TrimPrefix(name, "ballast-")[:1], "ballast", uint64(i+1), nil)
		if err := os.WriteFile(filepath.Join(dir, name), e.Marshal(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &sysslot.Manager{ESP: esp, Running: running}
}

func entryFiles(t *testing.T, m *sysslot.Manager) string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(m.ESP, sysslot.EntriesDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

type blessRun struct {
	b       *blessing
	clock   *fakeClock
	reboots chan string
	logs    *bytes.Buffer
}

func newBlessing(t *testing.T, m *sysslot.Manager, sup *pid1.Supervisor, network error) blessRun {
	t.Helper()
	var logs bytes.Buffer
	r := blessRun{clock: newFakeClock(), reboots: make(chan string, 1), logs: &logs}
	r.b = &blessing{
		Log: slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil)), Slots: m, Daemons: sup.Status,
		Network:  func() error { return network },
		Settle:   10 * time.Second,
		Deadline: time.Minute,
		Clock:    r.clock,
		Reboot:   func(reason string) { r.reboots <- reason },
	}
	return r
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// steady is a daemon that runs until stopped.
func steady(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func supervisor(t *testing.T, daemons ...pid1.Daemon) *pid1.Supervisor {
	t.Helper()
	sup := &pid1.Supervisor{Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	for _, d := range daemons {
		sup.Start(ctx, d)
	}
	t.Cleanup(func() {
		cancel()
		sup.StopAll(5 * time.Second)
	})
	return sup
}

// judged runs judge to its end.
func judged(r blessRun) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.b.judge(context.Background())
	}()
	return done
}

func TestBlessTrialAfterSettle(t *testing.T) {
	m := espWith(t, "b", "ballast-a.conf", "ballast-b+2-1.conf")
	sup := supervisor(t, pid1.Daemon{Name: "network", Run: steady}, pid1.Daemon{Name: "dns", Run: steady})
	r := newBlessing(t, m, sup, nil)
	if on, desc := r.b.trial(); !on {
		t.Fatalf("slot b with tries left and a good slot a: not on trial (%s)", desc)
	}
	done := judged(r)
	var waited time.Duration
	for waited < r.b.Settle {
		if got := entryFiles(t, m); got != "ballast-a.conf ballast-b+2-1.conf" {
			t.Fatalf("after %s of %s settling the entries are %s: blessed too early", waited, r.b.Settle, got)
		}
		waited += r.clock.step(t)
	}
	<-done
	if got := entryFiles(t, m); got != "ballast-a.conf ballast-b.conf" {
		t.Errorf("after the settle period: entries %s, want slot b blessed", got)
	}
	select {
	case reason := <-r.reboots:
		t.Errorf("healthy boot rebooted: %s", reason)
	default:
	}
}

func TestNoBlessingWhenNetworkFellBack(t *testing.T) {
	m := espWith(t, "b", "ballast-a.conf", "ballast-b+1-2.conf")
	sup := supervisor(t, pid1.Daemon{Name: "network", Run: steady})
	// What the boot's network came to when the committed config failed
	// and the node runs DHCP on every NIC.
	fell := bootNetwork{Records: []txn.Record{{Generation: 3, Slot: "B", Origin: "boot", State: txn.Degraded,
		Reason: txn.ReasonFailedToConfigure, RolledBackTo: "default", Message: "slot B generation 3 did not apply: interface eth0 not found"}},
		Slots: nil}
	r := newBlessing(t, m, sup, fell.verdict())
	<-judged(r)
	select {
	case reason := <-r.reboots:
		if !strings.Contains(reason, "interface eth0 not found") {
			t.Errorf("reboot reason %q does not say why", reason)
		}
	default:
		t.Fatal("a trial boot on the DHCP fallback did not reboot to spend its try")
	}
	if got := entryFiles(t, m); got != "ballast-a.conf ballast-b+1-2.conf" {
		t.Errorf("entries %s: slot b must stay on trial", got)
	}
	if !strings.Contains(r.logs.String(), `msg="system slot not marked good: boot not healthy" slot=b`) {
		t.Errorf("not logged why:\n%s", r.logs)
	}
}

func TestNoBlessingWhenADaemonRestarts(t *testing.T) {
	m := espWith(t, "b", "ballast-a.conf", "ballast-b+2-1.conf")
	crash, restarted := make(chan struct{}), make(chan struct{})
	var runs int
	flaky := func(ctx context.Context) error {
		runs++ // only the supervisor's goroutine calls it
		if runs == 1 {
			select {
			case <-crash:
				return errors.New("segfault")
			case <-ctx.Done():
				return nil
			}
		}
		if runs == 2 {
			close(restarted)
		}
		<-ctx.Done()
		return nil
	}
	sup := supervisor(t, pid1.Daemon{Name: "network", Run: steady}, pid1.Daemon{Name: "apiproxy", Run: flaky})
	r := newBlessing(t, m, sup, nil)
	done := judged(r)
	r.clock.step(t) // one poll of the daemons went by without a restart
	close(crash)
	<-restarted
	// The restart ends the settle period early: at the next poll at the latest.
	waited := time.Second
wait:
	for {
		select {
		case <-done:
			break wait
		case d := <-r.clock.waiting:
			r.clock.advance(d)
			if waited += d; waited >= r.b.Settle {
				t.Fatalf("still settling after %s although a daemon restarted", waited)
			}
		}
	}
	select {
	case reason := <-r.reboots:
		if !strings.Contains(reason, "daemon apiproxy restarted 1 time(s)") || !strings.Contains(reason, "segfault") {
			t.Errorf("reboot reason %q", reason)
		}
	default:
		t.Fatal("a daemon restarting within the settle period did not stop the blessing")
	}
	if got := entryFiles(t, m); got != "ballast-a.conf ballast-b+2-1.conf" {
		t.Errorf("entries %s: slot b must stay on trial", got)
	}
}

func TestTrialDeadline(t *testing.T) {
	m := espWith(t, "b", "ballast-a.conf", "ballast-b+2-1.conf")
	r := newBlessing(t, m, supervisor(t), nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.b.watch(context.Background())
	}()
	if d := r.clock.step(t); d != r.b.Deadline {
		t.Fatalf("watch waits %s, want the deadline %s", d, r.b.Deadline)
	}
	<-done
	select {
	case reason := <-r.reboots:
		if !strings.Contains(reason, "not healthy within 1m0s") {
			t.Errorf("reboot reason %q", reason)
		}
	default:
		t.Fatal("a trial boot that hangs past its deadline did not reboot")
	}
	// A judgement after the deadline's changes nothing.
	r.b.verdict(nil)
	if got := entryFiles(t, m); got != "ballast-a.conf ballast-b+2-1.conf" {
		t.Errorf("entries %s after the deadline", got)
	}
}

// Without a good slot to fall back to, a reboot cannot help: the slot
// stays unmarked and the node stays up.
func TestNoRebootWithoutFallback(t *testing.T) {
	for _, entries := range [][]string{{"ballast-b+2-1.conf"}, {"ballast-a+0-3.conf", "ballast-b+2-1.conf"}} {
		m := espWith(t, "b", entries...)
		r := newBlessing(t, m, supervisor(t), errors.New("no network"))
		<-judged(r)
		select {
		case reason := <-r.reboots:
			t.Errorf("%v: rebooted without a good slot to fall back to: %s", entries, reason)
		default:
		}
		if got := entryFiles(t, m); got != strings.Join(entries, " ") {
			t.Errorf("%v: entries became %s", entries, got)
		}
	}
}

func TestBootNetworkVerdict(t *testing.T) {
	cfg := parse(t, "network:\n  interfaces:\n    - {name: eth0, addresses: [10.0.0.5/24]}\n")
	ok := txn.Record{Generation: 2, Slot: "A", Origin: "boot", State: txn.Available}
	for _, c := range []struct {
		name string
		n    bootNetwork
		want string // "" healthy, else a part of the reason
	}{
		{"committed config applied", bootNetwork{Running: cfg, Records: []txn.Record{ok}}, ""},
		{"no machine config anywhere: DHCP by design", bootNetwork{Slots: slot.ErrNoSlot}, ""},
		{"fell back to DHCP", bootNetwork{Slots: nil, Records: []txn.Record{{Generation: 2, Slot: "A", State: txn.Degraded,
			Reason: txn.ReasonFailedToConfigure, RolledBackTo: "default", Message: "did not apply"}}}, `Degraded/FailedToConfigure, restored "default": did not apply`},
		{"fell back to the older slot", bootNetwork{Running: cfg, Records: []txn.Record{{Generation: 3, Slot: "B", State: txn.Degraded,
			Reason: txn.ReasonFailedToConfigure, RolledBackTo: "A"}}}, `restored "A"`},
		{"source config failed its probes", bootNetwork{Slots: slot.ErrNoSlot, Records: []txn.Record{{Generation: 1, Slot: "A", State: txn.Degraded,
			Reason: txn.ReasonFailedToConfigure, FailedProbe: "gateway 10.0.0.1 on eth0", Message: "no answer"}}}, "probe gateway 10.0.0.1 on eth0: no answer"},
		{"committed config not running", bootNetwork{Slots: nil}, "runs the default network"},
		{"slots unreadable", bootNetwork{Slots: errors.New("read config slots: EIO")}, "config slots unreadable"},
		{"network not settled", bootNetwork{Running: cfg, Records: []txn.Record{ok}, Settled: errors.New("no lease")}, "network: no lease"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.n.verdict()
			switch {
			case c.want == "" && err != nil:
				t.Errorf("verdict() = %v, want healthy", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("verdict() = %v, want it to say %q", err, c.want)
			}
		})
	}
}

func TestBootRecords(t *testing.T) {
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := bootRecords([]txn.Record{
		{Generation: 1, Origin: "boot", Started: since.Add(-time.Hour)}, // an earlier boot
		{Generation: 2, Origin: "boot", Started: since},
		{Generation: 0, Origin: "dhcp", Started: since.Add(time.Second)},
		{Generation: 3, Origin: "apply", Started: since.Add(time.Second)},
	}, since)
	if len(got) != 1 || got[0].Generation != 2 {
		t.Errorf("bootRecords = %+v, want generation 2 alone", got)
	}
}
