// Package txn makes every network change a transaction: the new config is
// written whole to the inactive A/B slot, marked trying, applied, probed,
// and then committed, or rolled back by re-applying the last good slot. A
// crash or power cut at any point leaves a node that boots the last good
// config (see initagent/txn/slot for the selector rules).
//
//	t := &txn.Manager{Store: store, Network: applier, Log: log}
//	cfg, err := t.Boot(ctx)                  // committed config, or an interrupted one with tries left
//	rec, err := t.Apply(ctx, data, txn.Options{}) // a change from nodectl
package txn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/renameio/v2"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/txn/probe"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// Network applies a validated config to the host and returns once it is in
// place, or with an error when it cannot be or ctx ends first (the
// transaction bounds ctx by its deadline); a nil config means the default
// network (DHCP on every NIC). An error that is a Partial whose Partial()
// is true means the config is in place but part of the host did not come up
// with it (a NIC without carrier): the transaction goes on and records the
// message. network.Manager implements it.
type Network interface {
	Apply(ctx context.Context, cfg *config.MachineConfig, source string) error
}

// Partial is an error from Network.Apply that may say the config is in
// place all the same (see Network).
type Partial interface {
	error
	Partial() bool
}

// ErrDefaultNetwork means no config slot could be applied at boot: the node
// runs the default network (DHCP on every NIC) and the record says why.
var ErrDefaultNetwork = errors.New("no config slot could be applied: running the default network (DHCP on every NIC)")

// ProbeSet derives the probes that judge a config.
type ProbeSet func(cfg *config.MachineConfig) []probe.Probe

// State of a transaction, as in Kubernetes conditions.
const (
	Progressing = "Progressing"
	Available   = "Available"
	Degraded    = "Degraded"

	// AwaitingConfirmation: applied and probed, committed only when confirmed before its deadline.
	AwaitingConfirmation = "AwaitingConfirmation"

	ReasonFailedToConfigure = "FailedToConfigure"
	ReasonInvalid           = "InvalidConfig"
	ReasonNotConfirmed      = "NotConfirmed"
	ReasonRolledBack        = "RolledBackByRequest"
)

// Record is one transaction, kept in the history.
type Record struct {
	Generation   uint64         `json:"generation"`
	SHA256       string         `json:"sha256"`
	Slot         string         `json:"slot,omitempty"`
	Origin       string         `json:"origin"` // boot, apply, dhcp
	Started      time.Time      `json:"started"`
	Finished     time.Time      `json:"finished,omitzero"`
	State        string         `json:"state"`
	Reason       string         `json:"reason,omitempty"`
	FailedProbe  string         `json:"failedProbe,omitempty"`
	Message      string         `json:"message,omitempty"`
	Probes       []ProbeOutcome `json:"probes,omitempty"`
	RolledBackTo string         `json:"rolledBackTo,omitempty"`
	// ConfirmBy is the deadline of a tried change: unconfirmed by then, it is rolled back.
	ConfirmBy time.Time `json:"confirmBy,omitzero"`
	Diff      string    `json:"diff,omitempty"` // dry runs: running config → new config
}

// ProbeOutcome is one probe's result before and after the change.
type ProbeOutcome struct {
	Name   string `json:"name"`
	Before string `json:"before"` // "ok" or the error
	After  string `json:"after"`
}

// HistoryLen is how many transactions are kept.
const HistoryLen = 20

// Options for one Apply.
type Options struct {
	DryRun bool
	Origin string // "apply" (default), "dhcp", "rollback"
	// ConfirmWithin, when set, tries the change: it is applied and probed
	// but committed only when Confirm is called within this time, else it
	// is rolled back (like a router's "commit confirmed"). A reboot before
	// then boots the last committed config.
	ConfirmWithin time.Duration
}

// Manager runs transactions one at a time.
type Manager struct {
	Store   slot.Store
	Network Network
	Probes  ProbeSet
	Log     *slog.Logger
	// Deadline bounds apply plus probes; zero means 10s.
	Deadline time.Duration
	// ProbeTimeout bounds each probe; zero means 3s.
	ProbeTimeout time.Duration
	// HistoryFile keeps the last HistoryLen records across reboots; empty: memory only.
	HistoryFile string
	// Fault, if set, is called at each step of the flow ("slot-written",
	// "flipped", "applied", "probed", "before-commit", "rollback" with the
	// lock held, "expired" once a confirmation deadline's rollback is done
	// and the lock released); crash tests kill the process there.
	Fault func(step string)

	mu      sync.Mutex // one transaction at a time
	pending *pendingTry
	// pendingRec mirrors pending's record for Pending, which must not wait for m.mu.
	pendingRec atomic.Pointer[Record]
	hmu        sync.Mutex
	history    []Record
	loaded     bool
}

func (m *Manager) defaults() {
	if m.Deadline == 0 {
		m.Deadline = 10 * time.Second
	}
	if m.ProbeTimeout == 0 {
		m.ProbeTimeout = 3 * time.Second
	}
	if m.Log == nil {
		m.Log = slog.New(slog.DiscardHandler)
	}
	if m.Probes == nil {
		m.Probes = DefaultProbes
	}
}

func (m *Manager) fault(step string) {
	if m.Fault != nil {
		m.Fault(step)
	}
}

// ErrNoConfig means no slot holds a bootable config; the caller keeps its defaults.
var ErrNoConfig = errors.New("no committed or trying config in the config slots")

// Boot applies the config the slots select: the committed one, or one that
// was being tried when the node went down and still has a try left (its
// try is used up first, so a config that crashes the node is tried once).
//
// Every apply is bounded by the transaction deadline. A committed config
// that fails or does not settle in time gives way to the other committed
// slot, then to the default network (DHCP on every NIC); neither slot is
// marked failed (the cause may be outside the node, like a switch still
// booting), and the record says which one applied and why. Boot returns the
// config that applied, or ErrDefaultNetwork (wrapped, with the reasons)
// when only the default network did.
func (m *Manager) Boot(ctx context.Context) (*config.MachineConfig, error) {
	m.defaults()
	m.mu.Lock()
	defer m.mu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		s, data, err := slot.Boot(m.Store)
		if errors.Is(err, slot.ErrNoSlot) {
			return nil, ErrNoConfig
		}
		if err != nil {
			return nil, fmt.Errorf("config slots: %w", err)
		}
		h := s.Header
		cfg, _, err := config.Parse(data)
		if err != nil {
			_ = slot.Fail(m.Store, s.Name, "invalid: "+firstLine(err))
			continue
		}
		rec := Record{Generation: h.Generation, SHA256: h.SHA256, Slot: s.Name, Origin: "boot", Started: time.Now().UTC(), State: Progressing}
		if s.Selector.Successful {
			return m.bootCommitted(ctx, cfg, s, rec)
		}
		// An interrupted transaction: its try is already used up by slot.Boot.
		m.Log.Info("resuming interrupted network transaction", "slot", s.Name, "generation", h.Generation)
		ok, rec, restored := m.tryAndJudge(ctx, cfg, s.Name, rec, nil, 0)
		if ok {
			return cfg, nil
		}
		if restored == nil {
			return nil, fmt.Errorf("%w: %s", ErrDefaultNetwork, rec.Message)
		}
		return restored, nil
	}
	return nil, ErrNoConfig
}

// bootCommitted applies the committed slot s at boot, falling back to the
// other committed slot and then to the default network.
func (m *Manager) bootCommitted(ctx context.Context, cfg *config.MachineConfig, s slot.Slot, rec Record) (*config.MachineConfig, error) {
	note, err := m.applyWithin(ctx, cfg, "config slot "+s.Name)
	if err == nil {
		rec.State, rec.Message, rec.Finished = Available, note, time.Now().UTC()
		m.record(rec)
		return cfg, nil
	}
	failed := fmt.Sprintf("slot %s generation %d did not apply: %v", s.Name, s.Header.Generation, err)
	m.Log.Error("committed network config did not apply at boot, falling back", "slot", s.Name, "generation", s.Header.Generation, "err", err)
	restored, to, notes := m.restore(ctx, s.Name)
	rec.State, rec.Reason, rec.Finished = Degraded, ReasonFailedToConfigure, time.Now().UTC()
	rec.Message = strings.Join(append([]string{failed}, notes...), "; ")
	rec.RolledBackTo = to
	m.record(rec)
	if restored == nil {
		return nil, fmt.Errorf("%w: %s", ErrDefaultNetwork, rec.Message)
	}
	return restored, nil
}

// applyWithin applies cfg (nil: the default network) bounded by its
// transaction deadline. A partial apply counts as applied; its message is
// returned as the note.
func (m *Manager) applyWithin(ctx context.Context, cfg *config.MachineConfig, source string) (note string, err error) {
	deadline := m.Deadline
	if cfg != nil {
		deadline, _ = m.limits(cfg)
	}
	actx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	err = m.Network.Apply(actx, cfg, source)
	if p := Partial(nil); errors.As(err, &p) && p.Partial() {
		return p.Error(), nil
	}
	if err != nil && actx.Err() != nil && !errors.Is(err, actx.Err()) {
		err = fmt.Errorf("%w (%v)", err, actx.Err())
	}
	return "", err
}

// Apply runs one transaction for a new config document.
func (m *Manager) Apply(ctx context.Context, data []byte, o Options) (Record, error) {
	m.defaults()
	if o.Origin == "" {
		o.Origin = "apply"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.pending; p != nil && !o.DryRun {
		return Record{}, fmt.Errorf("%w: generation %d in slot %s waits for confirmation until %s: confirm or roll it back first",
			ErrAwaitingConfirmation, p.rec.Generation, p.rec.Slot, p.rec.ConfirmBy.Format(time.RFC3339))
	}
	sum := sha256.Sum256(data)
	rec := Record{SHA256: hex.EncodeToString(sum[:]), Origin: o.Origin, Started: time.Now().UTC(), State: Progressing}
	cfg, _, err := config.Parse(data)
	if err != nil {
		rec.State, rec.Reason, rec.Message, rec.Finished = Degraded, ReasonInvalid, err.Error(), time.Now().UTC()
		if !o.DryRun {
			m.record(rec)
		}
		return rec, fmt.Errorf("config refused, nothing was changed:\n%w", err)
	}
	if o.DryRun {
		rec.State, rec.Message = "DryRun", "valid"
		if _, old, err := slot.Active(m.Store); err == nil {
			rec.Diff = LineDiff(string(old), string(data))
		} else {
			rec.Diff = LineDiff("", string(data))
		}
		return rec, nil
	}
	slots, err := m.Store.Slots()
	if err != nil {
		return rec, fmt.Errorf("config slots: %w", err)
	}
	rec.Generation = max(slots[0].Header.Generation, slots[1].Header.Generation) + 1

	// The running config's probes, measured now: one that already fails
	// (a flaky upstream) and is still named by the new config does not
	// block the change. Targets the new config adds must answer.
	var before []probe.Result
	if _, data, err := slot.Active(m.Store); err == nil {
		if old, _, err := config.Parse(data); err == nil {
			before = probe.RunAll(ctx, m.Probes(old), m.ProbeTimeout)
		}
	}

	name, err := slot.Begin(m.Store, slot.Header{Generation: rec.Generation, SHA256: rec.SHA256, Time: rec.Started, Result: "trying"}, data)
	if err != nil {
		return rec, fmt.Errorf("write config slot: %w", err)
	}
	rec.Slot = name
	m.fault("flipped")
	// Use the try now: from here on a crash boots the last good slot.
	if _, _, err := slot.Boot(m.Store); err != nil {
		return rec, fmt.Errorf("config slots: %w", err)
	}
	m.record(rec)
	_, rec, _ = m.tryAndJudge(ctx, cfg, name, rec, before, o.ConfirmWithin)
	if rec.State == AwaitingConfirmation {
		return rec, nil
	}
	if rec.State != Available {
		return rec, fmt.Errorf("%s: %s", rec.Reason, rec.Message)
	}
	return rec, nil
}

// tryAndJudge applies cfg from slot name, probes, and commits or rolls back.
// before are the probe results under the previous config (nil at boot: then
// every probe must pass).
// With confirmWithin set, a change that passes waits for Confirm instead of
// being committed.
//
// It returns whether the change passed, its record and, when it was rolled
// back, the config restored (nil: the default network).
func (m *Manager) tryAndJudge(ctx context.Context, cfg *config.MachineConfig, name string, rec Record, before []probe.Result, confirmWithin time.Duration) (bool, Record, *config.MachineConfig) {
	deadline, each := m.limits(cfg)
	dctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	start := time.Now()
	err := m.Network.Apply(dctx, cfg, "config slot "+name)
	if p := Partial(nil); errors.As(err, &p) && p.Partial() {
		rec.Message, err = p.Error(), nil
	}
	m.fault("applied")
	var regressions []probe.Result
	if err == nil {
		probes := m.Probes(cfg)
		after := probe.RunAll(dctx, probes, each)
		m.fault("probed")
		before = baseline(before, after)
		regressions, _ = probe.Compare(before, after)
		rec.Probes = outcomes(before, after)
	}
	rec.Finished = time.Now().UTC()
	if err == nil && len(regressions) == 0 && confirmWithin > 0 {
		rec.State, rec.ConfirmBy = AwaitingConfirmation, time.Now().Add(confirmWithin).UTC()
		m.awaitConfirmation(rec, confirmWithin)
		m.Log.Info("network change applied, waiting for confirmation", "generation", rec.Generation, "slot", name, "confirmBy", rec.ConfirmBy)
		m.record(rec)
		return true, rec, cfg
	}
	if err == nil && len(regressions) == 0 {
		m.fault("before-commit")
		if cerr := slot.Commit(m.Store, name); cerr != nil {
			err = fmt.Errorf("commit slot %s: %w", name, cerr)
		} else {
			rec.State = Available
			m.Log.Info("network transaction committed", "generation", rec.Generation, "slot", name, "took", time.Since(start).Round(time.Millisecond))
			m.record(rec)
			return true, rec, cfg
		}
	}
	rec.State, rec.Reason = Degraded, ReasonFailedToConfigure
	if err != nil {
		rec.Message = "apply: " + err.Error()
	} else {
		rec.FailedProbe = regressions[0].Name
		var msgs []string
		for _, r := range regressions {
			msgs = append(msgs, fmt.Sprintf("%s: %v", r.Name, r.Err))
		}
		rec.Message = "probe failed after the change: " + strings.Join(msgs, "; ")
	}
	reason := rec.Message
	if rec.FailedProbe != "" {
		reason = rec.FailedProbe
	}
	if ferr := slot.Fail(m.Store, name, reason); ferr != nil {
		m.Log.Error("mark slot failed", "slot", name, "err", ferr)
	}
	m.fault("rollback")
	restored, to, notes := m.restore(ctx, name)
	rec.RolledBackTo = to
	if len(notes) > 0 {
		rec.Message += "; " + strings.Join(notes, "; ")
	}
	m.Log.Error("network transaction rolled back", "generation", rec.Generation, "reason", rec.Reason,
		"probe", rec.FailedProbe, "message", rec.Message, "restored", rec.RolledBackTo, "took", time.Since(start).Round(time.Millisecond))
	m.record(rec)
	return false, rec, restored
}

// restore brings back a network after a change failed or was abandoned:
// the committed config slots in boot order except skip, then the default
// network (DHCP on every NIC), each apply bounded by its transaction
// deadline. It is not cut short by ctx's cancellation (a caller that went
// away must not leave a half-rolled-back node), only by the deadlines. It
// returns the config that applied (nil: the default network), where it came
// from ("A", "B" or "default") and a note for each step that failed or came
// up partly.
func (m *Manager) restore(ctx context.Context, skip string) (*config.MachineConfig, string, []string) {
	ctx = context.WithoutCancel(ctx)
	var notes []string
	for _, s := range m.goodSlots(skip) {
		_, data, err := m.Store.Read(s.Name)
		if err != nil {
			notes = append(notes, fmt.Sprintf("slot %s unreadable: %v", s.Name, err))
			continue
		}
		cfg, _, err := config.Parse(data)
		if err != nil {
			m.Log.Error("restore: slot config invalid", "slot", s.Name, "err", err)
			notes = append(notes, fmt.Sprintf("slot %s invalid: %s", s.Name, firstLine(err)))
			continue
		}
		note, err := m.applyWithin(ctx, cfg, "rollback to slot "+s.Name)
		if err == nil {
			msg := fmt.Sprintf("restored slot %s generation %d", s.Name, s.Header.Generation)
			if note != "" {
				msg += ": " + note
			}
			return cfg, s.Name, append(notes, msg)
		}
		m.Log.Error("restore: committed config did not apply", "slot", s.Name, "generation", s.Header.Generation, "err", err)
		notes = append(notes, fmt.Sprintf("slot %s generation %d did not apply: %v", s.Name, s.Header.Generation, err))
	}
	m.Log.Error("restoring the default network (DHCP on every NIC)")
	note, err := m.applyWithin(ctx, nil, "rollback to the default network")
	switch {
	case err != nil:
		// Whatever came up stays; the DHCP clients keep trying.
		m.Log.Error("default network did not settle, going on with what came up", "err", err)
		notes = append(notes, "default network (DHCP on every NIC) came up partly: "+err.Error())
	case note != "":
		notes = append(notes, "default network (DHCP on every NIC): "+note)
	default:
		notes = append(notes, "running the default network (DHCP on every NIC)")
	}
	return nil, "default", notes
}

// goodSlots lists the committed slots other than skip, best first.
func (m *Manager) goodSlots(skip string) []slot.Slot {
	slots, err := m.Store.Slots()
	if err != nil {
		m.Log.Error("restore: config slots", "err", err)
		return nil
	}
	var good []slot.Slot
	for _, s := range slots {
		if s.Name != skip && s.Selector.Successful && s.Selector.Priority > 0 {
			good = append(good, s)
		}
	}
	if len(good) == 2 && (good[1].Selector.Priority > good[0].Selector.Priority ||
		good[1].Selector.Priority == good[0].Selector.Priority && good[1].Header.Generation > good[0].Header.Generation) {
		good[0], good[1] = good[1], good[0]
	}
	return good
}

// baseline keeps the before-results of probes that are still asked for and
// counts a probe the old config did not have as passing before, so that it
// must pass after; a regression-only probe (a peer that may be off) counts
// as failing before instead.
// errNotProbedBefore is the before-result of a regression-only probe the
// previous config did not ask for.
var errNotProbedBefore = errors.New("not probed before this change (a peer: need not answer yet)")

func baseline(before, after []probe.Result) []probe.Result {
	prev := map[string]probe.Result{}
	for _, r := range before {
		prev[r.Name] = r
	}
	out := make([]probe.Result, len(after))
	for i, r := range after {
		switch p, ok := prev[r.Name]; {
		case ok:
			out[i] = p
		case r.RegressionOnly:
			out[i] = probe.Result{Name: r.Name, Err: errNotProbedBefore, RegressionOnly: true}
		default:
			out[i] = probe.Result{Name: r.Name}
		}
	}
	return out
}

func outcomes(before, after []probe.Result) []ProbeOutcome {
	prev := map[string]string{}
	for _, r := range before {
		prev[r.Name] = errString(r.Err)
	}
	var out []ProbeOutcome
	for _, r := range after {
		out = append(out, ProbeOutcome{Name: r.Name, Before: prev[r.Name], After: errString(r.Err)})
	}
	return out
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// DefaultProbes are the probes a config implies: each default gateway
// answers ARP/NDP, each DNS server answers, each API server accepts TCP.
func DefaultProbes(cfg *config.MachineConfig) []probe.Probe {
	var ps []probe.Probe
	for _, ifc := range cfg.Network.Interfaces {
		for _, r := range ifc.Routes {
			if r.To != "default" && r.To != "0.0.0.0/0" && r.To != "::/0" {
				continue
			}
			if gw, err := netip.ParseAddr(r.Via); err == nil && (r.Table == 0 || r.Table == 254) {
				ps = append(ps, probe.Gateway(ifc.Name, gw))
			}
		}
	}
	// Ask for a name the site's resolvers should know: the first search
	// domain or the cluster domain, else the root's NS set.
	name := cfg.Cluster.Domain
	if len(cfg.Network.DNS.Search) > 0 {
		name = cfg.Network.DNS.Search[0]
	}
	for _, s := range cfg.Network.DNS.Servers {
		if a, err := netip.ParseAddr(s); err == nil {
			ps = append(ps, probe.DNS(a, name))
		}
	}
	// The apiservers' hosts must answer; their apiservers may not run yet
	// (a cluster forming, a control plane rebooting).
	for _, ep := range cfg.Cluster.APIServers {
		ps = append(ps, probe.HostTCP(ep))
	}
	for _, p := range cfg.Network.Probes {
		switch {
		case p.TCP != "":
			ps = append(ps, probe.TCP(p.TCP))
		case p.HTTP != "":
			ps = append(ps, probe.HTTP(p.HTTP, nil))
		case p.ICMP != "":
			if a, err := netip.ParseAddr(p.ICMP); err == nil {
				ps = append(ps, probe.ICMP(a))
			}
		}
	}
	return ps
}

// limits returns the deadline and per-probe timeout for cfg: its own
// network.transaction settings, else the Manager's.
func (m *Manager) limits(cfg *config.MachineConfig) (deadline, each time.Duration) {
	deadline, each = m.Deadline, m.ProbeTimeout
	if t := cfg.Network.Transaction; t.DeadlineSeconds > 0 {
		deadline = time.Duration(t.DeadlineSeconds) * time.Second
	}
	if t := cfg.Network.Transaction; t.ProbeTimeoutSeconds > 0 {
		each = time.Duration(t.ProbeTimeoutSeconds) * time.Second
	}
	return deadline, each
}

// Note records a transaction that did not go through the slots, such as a
// DHCP lease change (Origin "dhcp").
func (m *Manager) Note(r Record) {
	m.defaults()
	m.record(r)
}

// History returns the recorded transactions, oldest first.
func (m *Manager) History() []Record {
	m.hmu.Lock()
	defer m.hmu.Unlock()
	m.loadHistory()
	return append([]Record(nil), m.history...)
}

func (m *Manager) loadHistory() {
	if m.loaded || m.HistoryFile == "" {
		m.loaded = true
		return
	}
	m.loaded = true
	data, err := os.ReadFile(m.HistoryFile)
	if err == nil {
		_ = json.Unmarshal(data, &m.history)
	}
}

// record adds or updates (same generation and origin start) a record and persists the history.
func (m *Manager) record(r Record) {
	m.hmu.Lock()
	defer m.hmu.Unlock()
	m.loadHistory()
	replaced := false
	for i := range m.history {
		if m.history[i].Generation == r.Generation && m.history[i].Started.Equal(r.Started) {
			m.history[i], replaced = r, true
		}
	}
	if !replaced {
		m.history = append(m.history, r)
	}
	if len(m.history) > HistoryLen {
		m.history = m.history[len(m.history)-HistoryLen:]
	}
	if m.HistoryFile != "" {
		data, _ := json.MarshalIndent(m.history, "", "  ")
		if err := os.MkdirAll(filepath.Dir(m.HistoryFile), 0o755); err == nil {
			if err := renameio.WriteFile(m.HistoryFile, data, 0o644); err != nil {
				m.Log.Error("write transaction history", "err", err)
			}
		}
	}
}
