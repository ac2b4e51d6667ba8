// Package slot keeps the two A/B machine config slots that network
// transactions write, try, commit and roll back (DESIGN §4 "Config slots").
//
// Each slot holds one whole machine config document (opaque bytes here) with a
// Header, and a Selector in the ChromeOS style: a priority, a number of tries
// left and a successful flag. The rules live in this file as functions over
// the small Store interface, so the GPT store (attribute bits of the CONFIG-A
// and CONFIG-B partition entries) and the Dir store (files on tmpfs for
// diskless nodes) behave the same:
//
//	s, err := slot.NewGPT("/dev/sda")
//	...
//	cur, data, err := slot.Boot(s) // at start: the config to apply
//	if errors.Is(err, slot.ErrNoSlot) {
//		// use the defaults
//	}
//	name, err := slot.Begin(s, slot.Header{}, newConfig) // write inactive, try once
//	// apply and probe ...
//	err = slot.Commit(s, name)             // probes passed
//	err = slot.Fail(s, name, "dns 10.0.0.53: timeout") // or roll back
//
// A crash or power cut at any point leaves a store whose Boot returns the slot
// being tried at most once and then the last committed one.
package slot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Slot names.
const (
	A = "A"
	B = "B"
)

// MaxPriority and MaxTries are the largest values the 4-bit selector fields
// hold (ChromeOS GPT attribute layout).
const (
	MaxPriority = 15
	MaxTries    = 15
)

// Result values written into a slot's header.
const (
	ResultTrying    = "trying"
	ResultCommitted = "committed"
	resultFailed    = "failed: "
)

var (
	// ErrNoSlot means no slot is bootable: the caller uses its defaults.
	ErrNoSlot = errors.New("no bootable config slot")
	// ErrEmpty means the slot has never been written.
	ErrEmpty = errors.New("config slot is empty")
	// ErrCorrupt means the slot's header or payload does not verify.
	ErrCorrupt = errors.New("config slot is corrupt")
	// ErrBusy means a slot is still being tried; commit or fail it first.
	ErrBusy = errors.New("config slot transaction in progress")
	// ErrUnknownSlot means a name other than "A" or "B".
	ErrUnknownSlot = errors.New("unknown config slot")
)

// Selector decides which slot boots. A slot is bootable when its Priority is
// above 0 and it is Successful or has Tries left (ChromeOS semantics:
// priority 0 is never booted).
type Selector struct {
	Priority   uint8 `json:"priority"`   // 0–15, higher boots first
	Tries      uint8 `json:"tries"`      // 0–15, boot attempts left while not Successful
	Successful bool  `json:"successful"` // committed: boots without spending tries
}

func (s Selector) bootable() bool {
	return s.Priority > 0 && (s.Successful || s.Tries > 0)
}

func (s Selector) validate() error {
	if s.Priority > MaxPriority || s.Tries > MaxTries {
		return fmt.Errorf("selector priority %d tries %d out of range: both must be 0–15", s.Priority, s.Tries)
	}
	return nil
}

// Header describes a slot's payload.
type Header struct {
	Generation uint64    `json:"generation"` // increases with every Begin
	SHA256     string    `json:"sha256"`     // hex sha256 of the payload
	Time       time.Time `json:"time"`       // when the payload was written, UTC
	// Result is "trying", "committed" or "failed: <probe> <why>". It is kept
	// apart from the checksummed header so it can change in place.
	Result string `json:"-"`
}

// Slot is one slot's state as Store.Slots reports it.
type Slot struct {
	Name     string
	Selector Selector
	Header   Header // zero when the slot is empty or its header does not verify
}

// Store keeps the two slots. Implementations: GPT and Dir.
type Store interface {
	// Slots reports both slots, A then B. It does not verify payloads.
	Slots() ([2]Slot, error)
	// Read returns the header and verified payload of a slot. An empty slot
	// gives an error wrapping ErrEmpty, one that does not verify ErrCorrupt.
	Read(name string) (Header, []byte, error)
	// Write replaces the whole slot (header, result and payload) and syncs
	// it. It does not touch the selector.
	Write(name string, h Header, data []byte) error
	// SetSelector replaces a slot's selector atomically.
	SetSelector(name string, s Selector) error
	// SetResult replaces only the header's Result.
	SetResult(name, result string) error
}

func index(name string) (int, error) {
	switch name {
	case A:
		return 0, nil
	case B:
		return 1, nil
	}
	return 0, fmt.Errorf("slot %q: %w (want %q or %q)", name, ErrUnknownSlot, A, B)
}

func other(i int) int { return 1 - i }

// state is both slots with the outcome of reading their payloads.
type state struct {
	slots [2]Slot
	data  [2][]byte
	err   [2]error // nil when the payload verified
}

func survey(s Store) (state, error) {
	var st state
	slots, err := s.Slots()
	if err != nil {
		return st, fmt.Errorf("read config slots: %w", err)
	}
	st.slots = slots
	for i, sl := range slots {
		// Any error, I/O included, only makes this slot unusable: the other
		// one may still boot.
		h, data, err := s.Read(sl.Name)
		if err == nil {
			st.slots[i].Header = h
		}
		st.data[i], st.err[i] = data, err
	}
	return st, nil
}

// better reports whether slot i boots before slot j: higher priority, then
// higher generation, then A.
func (st state) better(i, j int) bool {
	a, b := st.slots[i], st.slots[j]
	if a.Selector.Priority != b.Selector.Priority {
		return a.Selector.Priority > b.Selector.Priority
	}
	if a.Header.Generation != b.Header.Generation {
		return a.Header.Generation > b.Header.Generation
	}
	return i < j
}

// pick returns the index of the slot selection chooses, or -1. A slot whose
// payload does not verify is never chosen.
func (st state) pick() int {
	best := -1
	for i := range st.slots {
		if !st.slots[i].Selector.bootable() || st.err[i] != nil {
			continue
		}
		if best < 0 || st.better(i, best) {
			best = i
		}
	}
	return best
}

// Active returns the slot Boot would choose, without spending a try, and its
// payload. It returns ErrNoSlot when no slot is bootable.
func Active(s Store) (Slot, []byte, error) {
	st, err := survey(s)
	if err != nil {
		return Slot{}, nil, err
	}
	i := st.pick()
	if i < 0 {
		return Slot{}, nil, ErrNoSlot
	}
	return st.slots[i], st.data[i], nil
}

// Boot chooses the slot to run at start: the highest-priority slot that is
// Successful or has tries left and whose payload verifies (ties: higher
// generation, then A). A slot that is not Successful has its Tries decremented
// on disk before Boot returns, so a crash while trying it falls back on the
// next start. Boot returns ErrNoSlot when no slot qualifies.
func Boot(s Store) (Slot, []byte, error) {
	st, err := survey(s)
	if err != nil {
		return Slot{}, nil, err
	}
	i := st.pick()
	if i < 0 {
		return Slot{}, nil, ErrNoSlot
	}
	sl := st.slots[i]
	if !sl.Selector.Successful {
		sl.Selector.Tries--
		if err := s.SetSelector(sl.Name, sl.Selector); err != nil {
			return Slot{}, nil, fmt.Errorf("spend a try of config slot %q: %w", sl.Name, err)
		}
	}
	return sl, st.data[i], nil
}

// Begin writes data whole into the inactive slot, syncs it, reads it back and
// then gives that slot the highest priority with one try and Successful unset.
// It returns the slot's name; the caller then applies the config and calls
// Commit or Fail.
//
// The inactive slot is the one selection does not choose; when no slot is
// bootable it is the empty or corrupt one, else the lower-priority one (A on a
// tie). Begin refuses with ErrBusy while the chosen slot is still being tried.
//
// From h, Generation 0 means one more than both slots' generations, a zero
// Time means now, and SHA256, when set, must match data. Result is set to
// "trying".
func Begin(s Store, h Header, data []byte) (string, error) {
	st, err := survey(s)
	if err != nil {
		return "", err
	}
	act := st.pick()
	if act >= 0 && !st.slots[act].Selector.Successful {
		return "", fmt.Errorf("config slot %q is still being tried (%d tries left): commit or fail it first: %w",
			st.slots[act].Name, st.slots[act].Selector.Tries, ErrBusy)
	}
	in := 0
	switch {
	case act >= 0:
		in = other(act)
	case (st.err[0] == nil) != (st.err[1] == nil):
		// Keep the one readable slot (e.g. a first config whose only try was
		// spent), overwrite the empty or corrupt one.
		if st.err[0] == nil {
			in = 1
		}
	default:
		// Replace the lower priority, then lower generation; A on a tie.
		a, b := st.slots[0], st.slots[1]
		if a.Selector.Priority > b.Selector.Priority ||
			a.Selector.Priority == b.Selector.Priority && a.Header.Generation > b.Header.Generation {
			in = 1
		}
	}
	inSlot, otSlot := st.slots[in], st.slots[other(in)]

	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	if h.SHA256 != "" && h.SHA256 != hexSum {
		return "", fmt.Errorf("config sha256 %s given in header does not match payload sha256 %s", h.SHA256, hexSum)
	}
	h.SHA256 = hexSum
	if h.Generation == 0 {
		h.Generation = max(st.slots[0].Header.Generation, st.slots[1].Header.Generation) + 1
	}
	if h.Time.IsZero() {
		h.Time = time.Now()
	}
	h.Time = h.Time.UTC()
	h.Result = ResultTrying

	// Make the target unbootable before its payload changes: it may hold an
	// older committed config whose Successful flag must not bless the new one.
	if inSlot.Selector != (Selector{}) {
		if err := s.SetSelector(inSlot.Name, Selector{}); err != nil {
			return "", fmt.Errorf("retire config slot %q: %w", inSlot.Name, err)
		}
	}
	if err := s.Write(inSlot.Name, h, data); err != nil {
		return "", fmt.Errorf("write config slot %q: %w", inSlot.Name, err)
	}
	rh, rdata, err := s.Read(inSlot.Name)
	if err != nil {
		return "", fmt.Errorf("verify config slot %q after writing: %w", inSlot.Name, err)
	}
	if rh.SHA256 != h.SHA256 || rh.Generation != h.Generation || !bytes.Equal(rdata, data) {
		return "", fmt.Errorf("verify config slot %q after writing: read back generation %d sha256 %s, wrote %d %s: %w",
			inSlot.Name, rh.Generation, rh.SHA256, h.Generation, h.SHA256, ErrCorrupt)
	}

	prio := int(otSlot.Selector.Priority) + 1
	if prio > MaxPriority {
		// Renormalise: the other slot steps down first, so a crash in between
		// leaves it bootable and the new one still unbootable.
		ot := otSlot.Selector
		ot.Priority = MaxPriority - 1
		if err := s.SetSelector(otSlot.Name, ot); err != nil {
			return "", fmt.Errorf("lower priority of config slot %q: %w", otSlot.Name, err)
		}
		prio = MaxPriority
	}
	if err := s.SetSelector(inSlot.Name, Selector{Priority: uint8(prio), Tries: 1}); err != nil {
		return "", fmt.Errorf("select config slot %q for one try: %w", inSlot.Name, err)
	}
	return inSlot.Name, nil
}

// Commit marks a slot good: Successful, no tries needed, Result "committed".
// The slot must be selectable (priority above 0) and its payload must verify.
func Commit(s Store, name string) error {
	sl, err := slotNamed(s, name)
	if err != nil {
		return err
	}
	if sl.Selector.Priority == 0 {
		return fmt.Errorf("commit config slot %q: it has priority 0 (failed or never begun): begin a new transaction", name)
	}
	if _, _, err := s.Read(name); err != nil {
		return fmt.Errorf("commit config slot %q: %w", name, err)
	}
	// The selector decides what boots, so it goes first; Result only reports.
	if err := s.SetSelector(name, Selector{Priority: sl.Selector.Priority, Successful: true}); err != nil {
		return fmt.Errorf("commit config slot %q: %w", name, err)
	}
	if err := s.SetResult(name, ResultCommitted); err != nil {
		return fmt.Errorf("record commit of config slot %q: %w", name, err)
	}
	return nil
}

// Fail makes a slot unbootable (priority 0, no tries, not successful) and
// records "failed: <reason>" in its header. The payload stays for inspection.
func Fail(s Store, name, reason string) error {
	if _, err := index(name); err != nil {
		return err
	}
	if err := s.SetSelector(name, Selector{}); err != nil {
		return fmt.Errorf("fail config slot %q: %w", name, err)
	}
	err := s.SetResult(name, resultFailed+reason)
	if err != nil && !errors.Is(err, ErrEmpty) && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("record failure of config slot %q: %w", name, err)
	}
	return nil
}

func slotNamed(s Store, name string) (Slot, error) {
	i, err := index(name)
	if err != nil {
		return Slot{}, err
	}
	slots, err := s.Slots()
	if err != nil {
		return Slot{}, fmt.Errorf("read config slots: %w", err)
	}
	return slots[i], nil
}
