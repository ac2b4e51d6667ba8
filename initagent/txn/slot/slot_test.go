package slot

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	good   = Selector{Priority: 1, Successful: true}
	trying = Selector{Priority: 2, Tries: 1}
)

// TestStateMachine runs the Boot/Begin/Commit/Fail rules against both stores.
// "Reopen" stands for an agent restart after a crash: the store is opened
// again from what is on disk.
func TestStateMachine(t *testing.T) {
	type env struct {
		k     storeKind
		where string
	}
	reopen := func(t *testing.T, e env) Store { return e.k.open(t, e.where) }
	tests := []struct {
		name string
		run  func(t *testing.T, e env, s Store)
	}{
		{"fresh store has no slot", func(t *testing.T, e env, s Store) {
			if _, _, err := Boot(s); !errors.Is(err, ErrNoSlot) {
				t.Fatalf("Boot() = %v, want ErrNoSlot", err)
			}
			if _, _, err := Active(s); !errors.Is(err, ErrNoSlot) {
				t.Fatalf("Active() = %v, want ErrNoSlot", err)
			}
			if _, _, err := s.Read(A); !errors.Is(err, ErrEmpty) {
				t.Fatalf("Read(A) = %v, want ErrEmpty", err)
			}
			slots, err := s.Slots()
			if err != nil {
				t.Fatal(err)
			}
			if slots[0] != (Slot{Name: A}) || slots[1] != (Slot{Name: B}) {
				t.Fatalf("Slots() = %+v, want two empty slots", slots)
			}
		}},
		{"first begin and commit", func(t *testing.T, e env, s Store) {
			before := time.Now().UTC().Add(-time.Second)
			if name := mustBegin(t, s, "cfg1"); name != A {
				t.Fatalf("Begin() = %s, want A", name)
			}
			wantSelectors(t, s, Selector{Priority: 1, Tries: 1}, Selector{})
			h, data, err := s.Read(A)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256([]byte("cfg1"))
			if string(data) != "cfg1" || h.Generation != 1 || h.SHA256 != hex.EncodeToString(sum[:]) ||
				h.Result != ResultTrying || h.Time.Before(before) || h.Time.Location() != time.UTC {
				t.Fatalf("Read(A) = %+v %q, want generation 1, sha256 of cfg1, trying, UTC time", h, data)
			}
			mustCommit(t, s, A)
			wantSelectors(t, s, Selector{Priority: 1, Successful: true}, Selector{})
			s = reopen(t, e)
			wantBoot(t, s, A, "cfg1", good)
			wantBoot(t, s, A, "cfg1", good)
			if h, _, _ := s.Read(A); h.Result != ResultCommitted {
				t.Fatalf("Result = %q, want committed", h.Result)
			}
		}},
		{"crash while trying falls back once", func(t *testing.T, e env, s Store) {
			mustCommit(t, s, mustBegin(t, s, "cfg1"))
			if name := mustBegin(t, s, "cfg2"); name != B {
				t.Fatalf("Begin() = %s, want B", name)
			}
			wantSelectors(t, s, good, trying)
			s = reopen(t, e)
			wantBoot(t, s, B, "cfg2", Selector{Priority: 2}) // the one try
			s = reopen(t, e)                                 // it crashed again
			wantBoot(t, s, A, "cfg1", good)
			wantBoot(t, s, A, "cfg1", good)
			if h, data, err := s.Read(B); err != nil || string(data) != "cfg2" || h.Generation != 2 {
				t.Fatalf("Read(B) = %+v %q %v, want cfg2 generation 2 kept", h, data, err)
			}
			// The next transaction replaces the unconfirmed slot, not the good one.
			if name := mustBegin(t, s, "cfg3"); name != B {
				t.Fatalf("Begin() = %s, want B", name)
			}
			wantSelectors(t, s, good, trying)
			if h, _, _ := s.Read(B); h.Generation != 3 {
				t.Fatalf("generation = %d, want 3", h.Generation)
			}
		}},
		{"first config never confirmed", func(t *testing.T, e env, s Store) {
			mustBegin(t, s, "cfg1")
			s = reopen(t, e)
			wantBoot(t, s, A, "cfg1", Selector{Priority: 1})
			if _, _, err := Boot(s); !errors.Is(err, ErrNoSlot) {
				t.Fatalf("second Boot() = %v, want ErrNoSlot", err)
			}
			// The slot still being tried is kept; the empty one is written.
			if name := mustBegin(t, s, "cfg2"); name != B {
				t.Fatalf("Begin() = %s, want B", name)
			}
			wantSelectors(t, s, Selector{Priority: 1}, trying)
		}},
		{"fail keeps the payload", func(t *testing.T, e env, s Store) {
			mustCommit(t, s, mustBegin(t, s, "cfg1"))
			name := mustBegin(t, s, "cfg2")
			if err := Fail(s, name, "dns 10.0.0.53: i/o timeout"); err != nil {
				t.Fatal(err)
			}
			wantSelectors(t, s, good, Selector{})
			h, data, err := s.Read(B)
			if err != nil || string(data) != "cfg2" || h.Result != "failed: dns 10.0.0.53: i/o timeout" {
				t.Fatalf("Read(B) = %+v %q %v, want cfg2 with the failure", h, data, err)
			}
			wantBoot(t, s, A, "cfg1", good)
			if err := Commit(s, B); err == nil {
				t.Fatal("Commit of a failed slot succeeded")
			}
		}},
		{"commit second then alternate", func(t *testing.T, e env, s Store) {
			mustCommit(t, s, mustBegin(t, s, "cfg1"))
			mustCommit(t, s, mustBegin(t, s, "cfg2"))
			wantSelectors(t, s, good, Selector{Priority: 2, Successful: true})
			wantBoot(t, s, B, "cfg2", Selector{Priority: 2, Successful: true})
			if name := mustBegin(t, s, "cfg3"); name != A {
				t.Fatalf("Begin() = %s, want A", name)
			}
			wantSelectors(t, s, Selector{Priority: 3, Tries: 1}, Selector{Priority: 2, Successful: true})
			if err := Fail(s, A, "gateway 192.0.2.1: no ARP reply"); err != nil {
				t.Fatal(err)
			}
			wantBoot(t, s, B, "cfg2", Selector{Priority: 2, Successful: true})
		}},
		{"begin while trying is refused", func(t *testing.T, e env, s Store) {
			mustBegin(t, s, "cfg1")
			if _, err := Begin(s, Header{}, []byte("cfg2")); !errors.Is(err, ErrBusy) {
				t.Fatalf("Begin() = %v, want ErrBusy", err)
			}
			if err := Fail(s, A, "api: connection refused"); err != nil {
				t.Fatal(err)
			}
			if name := mustBegin(t, s, "cfg2"); name != B {
				t.Fatalf("Begin() = %s, want B (A is kept for inspection)", name)
			}
		}},
		{"priority renormalises at 15", func(t *testing.T, e env, s Store) {
			var prio [2]uint8
			for gen := 1; gen <= 18; gen++ {
				data := fmt.Sprintf("cfg%d", gen)
				name := mustBegin(t, s, data)
				i, _ := index(name)
				if p := prio[other(i)] + 1; p > MaxPriority {
					prio[other(i)], prio[i] = MaxPriority-1, MaxPriority
				} else {
					prio[i] = p
				}
				mustCommit(t, s, name)
				want := [2]Selector{{Priority: prio[0], Successful: prio[0] > 0}, {Priority: prio[1], Successful: prio[1] > 0}}
				if got := selectors(t, s); got != want {
					t.Fatalf("after generation %d in %s: selectors %+v, want %+v", gen, name, got, want)
				}
				sl, got, err := Boot(s)
				if err != nil || sl.Name != name || string(got) != data || sl.Header.Generation != uint64(gen) {
					t.Fatalf("Boot() = %s %q generation %d %v, want %s %q %d", sl.Name, got, sl.Header.Generation, err, name, data, gen)
				}
			}
			if prio != [2]uint8{14, 15} && prio != [2]uint8{15, 14} {
				t.Fatalf("priorities %v, want 14 and 15", prio)
			}
		}},
		{"tie breaks on generation then A", func(t *testing.T, e env, s Store) {
			mustCommit(t, s, mustBegin(t, s, "cfg1"))
			mustCommit(t, s, mustBegin(t, s, "cfg2"))
			if err := s.SetSelector(B, good); err != nil {
				t.Fatal(err)
			}
			wantBoot(t, s, B, "cfg2", good) // same priority, higher generation
		}},
		{"header checks", func(t *testing.T, e env, s Store) {
			if _, err := Begin(s, Header{SHA256: strings.Repeat("0", 64)}, []byte("cfg1")); err == nil {
				t.Fatal("Begin with a wrong sha256 succeeded")
			}
			sum := sha256.Sum256([]byte("cfg1"))
			at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))
			if _, err := Begin(s, Header{Generation: 41, SHA256: hex.EncodeToString(sum[:]), Time: at}, []byte("cfg1")); err != nil {
				t.Fatal(err)
			}
			h, _, err := s.Read(A)
			if err != nil || h.Generation != 41 || !h.Time.Equal(at) || h.Time.Location() != time.UTC {
				t.Fatalf("Read(A) = %+v %v, want generation 41 at %v in UTC", h, err, at)
			}
			if err := s.SetSelector(A, Selector{Priority: 16}); err == nil {
				t.Fatal("SetSelector with priority 16 succeeded")
			}
			if err := s.SetSelector("C", good); !errors.Is(err, ErrUnknownSlot) {
				t.Fatalf("SetSelector(C) = %v, want ErrUnknownSlot", err)
			}
		}},
		{"long result is cut", func(t *testing.T, e env, s Store) {
			mustBegin(t, s, "cfg1")
			reason := strings.Repeat("é", 5000)
			if err := Fail(s, A, reason); err != nil {
				t.Fatal(err)
			}
			h, _, err := s.Read(A)
			if err != nil || !strings.HasPrefix(h.Result, "failed: éé") || len(h.Result) > maxResultText || !strings.HasSuffix(h.Result, "é") {
				t.Fatalf("Result of %d bytes (%v), want a cut at a character boundary within %d", len(h.Result), err, maxResultText)
			}
		}},
	}
	for _, k := range storeKinds() {
		for _, tc := range tests {
			t.Run(k.name+"/"+tc.name, func(t *testing.T) {
				e := env{k: k, where: k.create(t)}
				tc.run(t, e, reopen(t, e))
			})
		}
	}
}

// TestCorruption: a slot that does not verify is never booted, and the other
// slot is.
func TestCorruption(t *testing.T) {
	tests := []struct {
		name string
		// off is relative to the slot's payload start.
		off        int64
		readErr    error
		headerZero bool // Slots no longer reports the header
		boot       string
		result     string // B's result afterwards, when readable
	}{
		{name: "payload", off: 2, readErr: ErrCorrupt, boot: A},
		{name: "header json", off: -PayloadOffset + headerFixed + 3, readErr: ErrCorrupt, headerZero: true, boot: A},
		{name: "header magic", off: -PayloadOffset, readErr: ErrCorrupt, headerZero: true, boot: A},
		// Result record 1 holds "committed"; record 0 still holds "trying".
		{name: "newest result", off: -PayloadOffset + 2*blockSize + resultFixed, boot: B, result: ResultTrying},
		{name: "older result", off: -PayloadOffset + blockSize + resultFixed, boot: B, result: ResultCommitted},
	}
	for _, k := range storeKinds() {
		for _, tc := range tests {
			t.Run(k.name+"/"+tc.name, func(t *testing.T) {
				where := k.create(t)
				s := k.open(t, where)
				mustCommit(t, s, mustBegin(t, s, "cfg1"))
				mustCommit(t, s, mustBegin(t, s, "cfg2"))
				file, off := k.payloadAt(where, B)
				flipByte(t, file, off+tc.off)
				s = k.open(t, where)
				h, _, err := s.Read(B)
				if !errors.Is(err, tc.readErr) || (tc.readErr == nil) != (err == nil) {
					t.Fatalf("Read(B) = %v, want %v", err, tc.readErr)
				}
				if err == nil && h.Result != tc.result {
					t.Fatalf("Result = %q, want %q", h.Result, tc.result)
				}
				slots, err := s.Slots()
				if err != nil {
					t.Fatal(err)
				}
				if got := slots[1].Header.Generation == 0; got != tc.headerZero {
					t.Fatalf("Slots() B header %+v, want zero %v", slots[1].Header, tc.headerZero)
				}
				sl, _, err := Active(s)
				if err != nil || sl.Name != tc.boot {
					t.Fatalf("Active() = %s %v, want %s", sl.Name, err, tc.boot)
				}
				if tc.boot == A {
					wantBoot(t, s, A, "cfg1", good)
					// The corrupt slot is the one the next transaction replaces.
					if name := mustBegin(t, s, "cfg3"); name != B {
						t.Fatalf("Begin() = %s, want B", name)
					}
					if err := Fail(s, B, "probe"); err != nil { // Result can follow a rewrite
						t.Fatal(err)
					}
				}
			})
		}
	}
}

// TestDirSelectorFile: an empty slot with a bootable selector is skipped, a
// selector file that does not parse is reported.
func TestDirSelectorFile(t *testing.T) {
	dir := t.TempDir()
	s, err := NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, mustBegin(t, s, "cfg1"))
	if err := s.SetSelector(B, Selector{Priority: 9, Successful: true}); err != nil {
		t.Fatal(err)
	}
	wantBoot(t, s, A, "cfg1", good)
	if err := os.WriteFile(filepath.Join(dir, selectorFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Slots(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Slots() = %v, want ErrCorrupt", err)
	}
	if err := os.WriteFile(filepath.Join(dir, tempPrefix+"A-123"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, tempPrefix+"A-123")); err == nil {
		t.Fatal("NewDir left a temporary file behind")
	}
}
