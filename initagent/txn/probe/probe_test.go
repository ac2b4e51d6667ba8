package probe

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fake is a Probe whose Run is a function.
type fake struct {
	name string
	run  func(ctx context.Context) error
}

func (f fake) Name() string                  { return f.name }
func (f fake) Run(ctx context.Context) error { return f.run(ctx) }

func pass(name string) Probe { return fake{name, func(context.Context) error { return nil }} }

// hang answers only when ctx is done.
func hang(name string) Probe {
	return fake{name, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
}

// waitGoroutines waits until no more than n goroutines are left.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	for start := time.Now(); runtime.NumGoroutine() > n; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 2*time.Second {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left, want <= %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
	}
}

func TestRunAll(t *testing.T) {
	boom := errors.New("boom")
	probes := []Probe{
		pass("a"),
		fake{"b", func(context.Context) error { return boom }},
		hang("c"),
		fake{"d", func(context.Context) error { panic("nil map") }},
	}
	got := RunAll(t.Context(), probes, 100*time.Millisecond)
	if len(got) != len(probes) {
		t.Fatalf("RunAll returned %d results, want %d", len(got), len(probes))
	}
	for i, r := range got {
		if r.Name != probes[i].Name() {
			t.Errorf("result %d is %q, want %q (results in the order of probes)", i, r.Name, probes[i].Name())
		}
	}
	if got[0].Err != nil || !errors.Is(got[1].Err, boom) || !errors.Is(got[2].Err, context.DeadlineExceeded) {
		t.Errorf("RunAll() errors = %v, %v, %v, want nil, %v, %v", got[0].Err, got[1].Err, got[2].Err, boom, context.DeadlineExceeded)
	}
	if err := got[3].Err; err == nil || !strings.HasPrefix(err.Error(), "BUG: probe d panicked: nil map") {
		t.Errorf("panicking probe: Err = %v, want BUG: probe d panicked: nil map", err)
	}
}

func TestRunAllTimeouts(t *testing.T) {
	for _, c := range []struct {
		name     string
		deadline time.Duration // of ctx
		each     time.Duration
		want     time.Duration // how long the hanging probes take
	}{
		{name: "per-probe timeout", deadline: 10 * time.Second, each: 100 * time.Millisecond, want: 100 * time.Millisecond},
		{name: "transaction deadline", deadline: 150 * time.Millisecond, each: 10 * time.Second, want: 150 * time.Millisecond},
		{name: "no per-probe timeout", deadline: 150 * time.Millisecond, each: 0, want: 150 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			ctx, cancel := context.WithTimeout(t.Context(), c.deadline)
			defer cancel()
			probes := []Probe{pass("fast")}
			for i := range 20 {
				probes = append(probes, hang(fmt.Sprint("hang", i)))
			}
			start := time.Now()
			results := RunAll(ctx, probes, c.each)
			// The bound that applies must be what ended the probes: with a long
			// transaction deadline, the per-probe timeout cut them well before it.
			if took := time.Since(start); c.each > 0 && c.each < c.deadline && took >= c.deadline {
				t.Errorf("RunAll took %v, not cut short by the per-probe timeout %v (deadline %v)", took, c.each, c.deadline)
			}
			if r := results[0]; r.Err != nil {
				t.Errorf("fast probe: %v after %v, want nil at once", r.Err, r.Took)
			}
			for _, r := range results[1:] {
				// The ctx deadline started a moment before the probes did.
				if !errors.Is(r.Err, context.DeadlineExceeded) {
					t.Errorf("%s: %v after %v, want deadline exceeded", r.Name, r.Err, r.Took)
				}
			}
			cancel()
			waitGoroutines(t, before)
		})
	}
}

// TestRunAllWaits checks that RunAll returns only after every probe has
// returned, even one that ignores its context.
func TestRunAllWaits(t *testing.T) {
	var finished atomic.Bool
	slow := fake{"slow", func(context.Context) error {
		time.Sleep(300 * time.Millisecond)
		finished.Store(true)
		return nil
	}}
	results := RunAll(t.Context(), []Probe{slow, hang("hang")}, 50*time.Millisecond)
	if !finished.Load() {
		t.Fatal("RunAll returned before the slow probe's Run did")
	}
	if r := results[0]; r.Err != nil || r.Took < 300*time.Millisecond {
		t.Errorf("slow probe: %v after %v, want nil after 300ms", r.Err, r.Took)
	}
}

func TestCompare(t *testing.T) {
	errDown := errors.New("down")
	ok := func(name string) Result { return Result{Name: name} }
	bad := func(name string) Result { return Result{Name: name, Err: errDown} }
	names := func(rs []Result) []string {
		var s []string
		for _, r := range rs {
			s = append(s, r.Name)
		}
		return s
	}
	for _, c := range []struct {
		name             string
		before, after    []Result
		regressions, old []string
	}{
		{name: "all pass", before: []Result{ok("gw"), ok("dns")}, after: []Result{ok("gw"), ok("dns")}},
		{name: "regression", before: []Result{ok("gw"), ok("dns")}, after: []Result{ok("gw"), bad("dns")},
			regressions: []string{"dns"}},
		{name: "failed before too", before: []Result{ok("gw"), bad("dns")}, after: []Result{ok("gw"), bad("dns")},
			old: []string{"dns"}},
		{name: "fixed by the change", before: []Result{bad("gw")}, after: []Result{ok("gw")}},
		{name: "both kinds, in after's order",
			before:      []Result{ok("a"), bad("b"), ok("c"), bad("d")},
			after:       []Result{bad("d"), bad("c"), bad("b"), bad("a")},
			regressions: []string{"c", "a"}, old: []string{"d", "b"}},
		{name: "new probe without baseline", before: []Result{ok("gw")}, after: []Result{ok("gw"), bad("new")},
			old: []string{"new"}},
		{name: "probe gone after", before: []Result{ok("gw"), ok("old")}, after: []Result{ok("gw")}},
		{name: "duplicate name passed once", before: []Result{bad("gw"), ok("gw")}, after: []Result{bad("gw")},
			regressions: []string{"gw"}},
		{name: "empty", before: nil, after: nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			reg, old := Compare(c.before, c.after)
			if got := names(reg); !reflect.DeepEqual(got, c.regressions) {
				t.Errorf("Compare() regressions = %q, want %q", got, c.regressions)
			}
			if got := names(old); !reflect.DeepEqual(got, c.old) {
				t.Errorf("Compare() stillFailing = %q, want %q", got, c.old)
			}
			for _, r := range append(reg, old...) {
				if r.Err == nil {
					t.Errorf("Compare() returned %q without its error", r.Name)
				}
			}
		})
	}
}

// TestTransaction runs the real probes the way the network transaction
// does: before a change, after a change that cuts the link (as a wrong VLAN
// would), and after rolling it back.
func TestTransaction(t *testing.T) {
	l := newLab(t)
	l.startDnsmasq(t)
	ca := newTestCA(t, "10.9.0.1")
	serveHTTP(t, l.listen(t, "10.9.0.1:6443"), &ca.cert, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	probes := []Probe{
		Gateway("pr0", netip.MustParseAddr("10.9.0.1")),
		Gateway("pr0", netip.MustParseAddr("fe80::1")),
		Gateway("pr0", netip.MustParseAddr("10.9.0.99")), // a stale entry: fails throughout
		DNS(netip.MustParseAddr("10.9.0.1"), "probe.test"),
		APIServer("10.9.0.1:6443", ca.pool),
		TCP("10.9.0.1:6443"),
		ICMP(netip.MustParseAddr("fd00:9::1")),
	}
	const each = 700 * time.Millisecond
	run := func(step string) []Result {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		start := time.Now()
		rs := RunAll(ctx, probes, each)
		if took := time.Since(start); took > each+2*time.Second {
			t.Errorf("%s: RunAll took %v, want at most about %v", step, took, each)
		}
		for _, r := range rs {
			t.Logf("%s: %s: %v (%v)", step, r.Name, r.Err, r.Took.Round(time.Millisecond))
		}
		return rs
	}
	goroutines := runtime.NumGoroutine()
	before := run("before")
	if reg, old := Compare(nil, before); len(reg) != 0 || len(old) != 1 || old[0].Name != "gateway 10.9.0.99 on pr0" {
		t.Fatalf("before the change: failing %v, want only the stale gateway", old)
	}

	pr1, err := l.ph.LinkByName("pr1")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.ph.LinkSetDown(pr1); err != nil {
		t.Fatal(err)
	}
	reg, old := Compare(before, run("after bad change"))
	if len(reg) != len(probes)-1 || len(old) != 1 {
		t.Errorf("after the bad change: %d regressions, %d still failing, want %d and 1", len(reg), len(old), len(probes)-1)
	}

	// Back up. The peer's kernel flushed pr1's IPv6 addresses when it went
	// down (keep_addr_on_down=0), so they are configured again.
	configure(t, l.ph, "pr1", "fd00:9::1/64", "fe80::1/64")
	waitOperUp(t, "pr0")
	if reg, _ := Compare(before, run("after rollback")); len(reg) != 0 {
		t.Errorf("after rollback: regressions %v, want none", reg)
	}
	waitGoroutines(t, goroutines)
}
