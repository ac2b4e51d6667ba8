package txn

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/netconf"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

func TestTriedChangeConfirmedOrRolledBack(t *testing.T) {
	h := lab(t)
	dir := t.TempDir()
	store, err := slot.NewDir(filepath.Join(dir, "slots"))
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{Store: store, Network: kernelNetwork{&netconf.Applier{}}}
	ctx := context.Background()
	if rec, err := m.Apply(ctx, nodeConfig("10.0.0.5/24", "10.0.0.1", "10.0.0.1"), Options{}); err != nil || rec.State != Available {
		t.Fatalf("first config: %v %+v", err, rec)
	}

	// Confirmed in time: committed.
	rec, err := m.Apply(ctx, nodeConfig("10.0.0.6/24", "10.0.0.1", "10.0.0.1"), Options{ConfirmWithin: time.Hour})
	if err != nil || rec.State != AwaitingConfirmation || rec.ConfirmBy.IsZero() {
		t.Fatalf("tried change: %v %+v", err, rec)
	}
	if _, err := m.Apply(ctx, nodeConfig("10.0.0.7/24", "10.0.0.1", "10.0.0.1"), Options{}); !errors.Is(err, ErrAwaitingConfirmation) {
		t.Errorf("apply while a change waits: %v, want ErrAwaitingConfirmation", err)
	}
	if _, err := m.Confirm(rec.Generation + 5); err == nil {
		t.Error("confirming the wrong generation succeeded")
	}
	if rec, err = m.Confirm(rec.Generation); err != nil || rec.State != Available {
		t.Fatalf("confirm: %v %+v", err, rec)
	}
	if s, _, err := slot.Active(store); err != nil || s.Header.Generation != rec.Generation || !s.Selector.Successful {
		t.Errorf("active slot after confirm: %+v %v", s, err)
	}
	if _, err := m.Confirm(0); !errors.Is(err, ErrNothingToConfirm) {
		t.Errorf("second confirm: %v", err)
	}

	// Not confirmed: rolled back by itself once the deadline passes.
	rec, err = m.Apply(ctx, nodeConfig("10.0.0.7/24", "10.0.0.1", "10.0.0.1"), Options{ConfirmWithin: 300 * time.Millisecond})
	if err != nil || rec.State != AwaitingConfirmation {
		t.Fatalf("tried change: %v %+v", err, rec)
	}
	if !hasAddr(h, "10.0.0.7/24") {
		t.Error("tried change not applied")
	}
	// Pending clears when the rollback starts; the record gets RolledBackTo when it is done.
	waitFor(t, func() bool { h := m.History(); return h[len(h)-1].RolledBackTo != "" })
	if _, ok := m.Pending(); ok {
		t.Error("the change still waits for confirmation after its rollback")
	}
	last := m.History()[len(m.History())-1]
	if last.Generation != rec.Generation || last.Reason != ReasonNotConfirmed || last.RolledBackTo == "" {
		t.Errorf("after the deadline: %+v", last)
	}
	if !hasAddr(h, "10.0.0.6/24") || hasAddr(h, "10.0.0.7/24") {
		t.Error("unconfirmed change not rolled back to 10.0.0.6")
	}

	// The failed try overwrote the other slot: nothing to go back to but the running config.
	if _, err := m.Rollback(ctx); err == nil {
		t.Error("rollback with a failed other slot succeeded")
	}

	// A tried change rolled back by request before its deadline.
	if rec, err = m.Apply(ctx, nodeConfig("10.0.0.9/24", "10.0.0.1", "10.0.0.1"), Options{ConfirmWithin: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if rec, err = m.Rollback(ctx); err != nil || rec.Reason != ReasonRolledBack {
		t.Fatalf("rollback of a tried change: %v %+v", err, rec)
	}
	if !hasAddr(h, "10.0.0.6/24") || hasAddr(h, "10.0.0.9/24") {
		t.Error("tried change not rolled back to 10.0.0.6")
	}

	// Explicit rollback of a committed change: back to the previous committed config.
	if _, err := m.Apply(ctx, nodeConfig("10.0.0.8/24", "10.0.0.1", "10.0.0.1"), Options{}); err != nil {
		t.Fatal(err)
	}
	if rec, err = m.Rollback(ctx); err != nil || rec.State != Available || rec.Origin != "rollback" {
		t.Fatalf("rollback: %v %+v", err, rec)
	}
	if !hasAddr(h, "10.0.0.6/24") || hasAddr(h, "10.0.0.8/24") {
		t.Error("rollback did not restore 10.0.0.6")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 30s")
}
