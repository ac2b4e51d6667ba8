package txn

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// ErrAwaitingConfirmation refuses a new change while a tried one waits.
var ErrAwaitingConfirmation = errors.New("a network change is waiting for confirmation")

// ErrNothingToConfirm means Confirm found no tried change.
var ErrNothingToConfirm = errors.New("no network change is waiting for confirmation")

// pendingTry is a change applied with ConfirmWithin, not yet committed.
type pendingTry struct {
	rec   Record
	timer *time.Timer
}

// awaitConfirmation arms the rollback of rec's slot; called with m.mu held.
func (m *Manager) awaitConfirmation(rec Record, within time.Duration) {
	p := &pendingTry{rec: rec}
	p.timer = time.AfterFunc(within, func() { m.expire(p) })
	m.setPending(p)
}

// setPending replaces the change waiting for confirmation; called with m.mu held.
func (m *Manager) setPending(p *pendingTry) {
	m.pending = p
	if p == nil {
		m.pendingRec.Store(nil)
	} else {
		rec := p.rec
		m.pendingRec.Store(&rec)
	}
}

// Pending returns the change waiting for confirmation, if any. It does not
// wait for a transaction in progress (a rollback may take its deadline).
func (m *Manager) Pending() (Record, bool) {
	if r := m.pendingRec.Load(); r != nil {
		return *r, true
	}
	return Record{}, false
}

// Confirm commits the tried change of the given generation (0: whichever
// is waiting).
func (m *Manager) Confirm(generation uint64) (Record, error) {
	m.defaults()
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pending
	if p == nil {
		return Record{}, ErrNothingToConfirm
	}
	if generation != 0 && generation != p.rec.Generation {
		return Record{}, fmt.Errorf("generation %d is waiting for confirmation, not %d", p.rec.Generation, generation)
	}
	if !p.timer.Stop() {
		// The deadline fired and expire is waiting for the lock: too late.
		return Record{}, fmt.Errorf("generation %d: confirmation deadline %s has passed, it is being rolled back",
			p.rec.Generation, p.rec.ConfirmBy.Format(time.RFC3339))
	}
	m.setPending(nil)
	rec := p.rec
	if err := slot.Commit(m.Store, rec.Slot); err != nil {
		m.failAndRollback(context.Background(), &rec, ReasonFailedToConfigure, "commit: "+err.Error())
		return rec, fmt.Errorf("commit slot %s: %w", rec.Slot, err)
	}
	rec.State, rec.ConfirmBy = Available, time.Time{}
	m.Log.Info("network transaction confirmed and committed", "generation", rec.Generation, "slot", rec.Slot)
	m.record(rec)
	return rec, nil
}

// expire rolls back a tried change whose deadline passed. It holds m.mu
// only as long as the rollback's applies, each bounded by its deadline.
func (m *Manager) expire(p *pendingTry) {
	defer m.fault("expired")
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending != p {
		return
	}
	m.setPending(nil)
	rec := p.rec
	m.failAndRollback(context.Background(), &rec, ReasonNotConfirmed,
		fmt.Sprintf("not confirmed by %s", rec.ConfirmBy.Format(time.RFC3339)))
}

// failAndRollback marks rec's slot failed and restores the committed config
// (or the default network), each apply bounded by its deadline; called with
// m.mu held.
func (m *Manager) failAndRollback(ctx context.Context, rec *Record, reason, msg string) {
	rec.State, rec.Reason, rec.Message, rec.Finished = Degraded, reason, msg, time.Now().UTC()
	if err := slot.Fail(m.Store, rec.Slot, msg); err != nil {
		m.Log.Error("mark slot failed", "slot", rec.Slot, "err", err)
	}
	m.record(*rec)
	m.fault("rollback")
	_, to, notes := m.restore(ctx, rec.Slot)
	rec.RolledBackTo, rec.Finished = to, time.Now().UTC()
	if len(notes) > 0 {
		rec.Message += "; " + strings.Join(notes, "; ")
	}
	m.Log.Error("network transaction rolled back", "generation", rec.Generation, "reason", reason,
		"message", rec.Message, "restored", rec.RolledBackTo)
	m.record(*rec)
}

// Rollback undoes the network config: a change waiting for confirmation is
// rolled back at once; otherwise the previous committed config (the other
// slot) is applied as a new transaction.
func (m *Manager) Rollback(ctx context.Context) (Record, error) {
	m.defaults()
	m.mu.Lock()
	if p := m.pending; p != nil && p.timer.Stop() {
		m.setPending(nil)
		rec := p.rec
		m.failAndRollback(ctx, &rec, ReasonRolledBack, "rolled back by request before confirmation")
		m.mu.Unlock()
		return rec, nil
	}
	active, _, err := slot.Active(m.Store)
	if err != nil {
		m.mu.Unlock()
		return Record{}, fmt.Errorf("no committed network config to roll back from: %w", err)
	}
	slots, err := m.Store.Slots()
	if err != nil {
		m.mu.Unlock()
		return Record{}, fmt.Errorf("config slots: %w", err)
	}
	var prev slot.Slot
	for _, s := range slots {
		if s.Name != active.Name {
			prev = s
		}
	}
	h, data, err := m.Store.Read(prev.Name)
	m.mu.Unlock()
	if err != nil || h.Result != slot.ResultCommitted {
		why := "it holds no config"
		if err == nil {
			why = fmt.Sprintf("its generation %d was never committed (%s)", h.Generation, h.Result)
		}
		return Record{}, fmt.Errorf("nothing to roll back to: the other config slot %s cannot be used: %s", prev.Name, why)
	}
	return m.Apply(ctx, data, Options{Origin: "rollback"})
}
