package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/ballast-os/ballast/initagent/sysslot"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/probe"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// Kernel command line keys of the system slot's blessing (systemd's
// automatic boot assessment: a slot on trial is marked good only after a
// healthy boot).
const (
	// BlessSettleParam=DURATION: how long every supervised daemon must run
	// without a restart before the slot is marked good.
	BlessSettleParam = "ballast.bless.settle"
	// BlessDeadlineParam=DURATION: a boot on trial that is not judged healthy
	// by then (counted from the start of the agent) reboots, to spend its
	// next try.
	BlessDeadlineParam = "ballast.bless.deadline"
)

const (
	defaultBlessSettle = 2 * time.Minute
	// defaultBlessDeadline covers the network timeout (60 s), the settle
	// period and a slow boot before them.
	defaultBlessDeadline = 10 * time.Minute
	// settlePoll is how often the daemons are looked at while settling.
	settlePoll = time.Second
)

// clock is the time the blessing waits on; tests drive their own.
type clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// systemSlots is what the blessing needs of sysslot.Manager.
type systemSlots interface {
	Bless() (bool, error)
	Status() sysslot.Status
}

// blessing judges one boot of a system slot. A healthy boot (network
// committed, probes answering, daemons steady for the settle period) marks
// the running slot good. An unhealthy one leaves it unmarked and, when the
// slot is on trial and the other slot is good, reboots: systemd-boot
// spends one of the slot's tries on every boot, and once they are used up
// it boots the other slot again. Without the reboot a new slot that comes up
// broken would keep running, its counter never running out.
type blessing struct {
	Log   *slog.Logger
	Slots systemSlots
	// Daemons reports the supervised daemons (pid1.Supervisor.Status).
	Daemons func() []pid1.DaemonStatus
	// Network judges the boot's network transaction (bootNetwork.verdict).
	Network func() error
	// Probe runs the running config's probes at the end of the settle
	// period; nil: none.
	Probe func(ctx context.Context) error
	// Settle is how long the daemons must stay without a restart.
	Settle time.Duration
	// Deadline bounds a boot on trial from the start of the agent.
	Deadline time.Duration
	Clock    clock
	// Reboot asks for a reboot (through the normal shutdown path).
	Reboot func(reason string)

	once sync.Once
	done chan struct{} // closed once the boot is judged
}

func (b *blessing) init() {
	b.once.Do(func() { b.done = make(chan struct{}) })
}

// slots returns the running slot and the other one, and describes both.
func (b *blessing) slots() (running, other sysslot.SlotStatus, desc string) {
	st := b.Slots.Status()
	for _, s := range st.Slots {
		if s.Name == st.Running {
			running = s
		} else {
			other = s
		}
	}
	desc = fmt.Sprintf("slot %s is %s (entry %s), slot %s is %s", running.Name, running.State, running.Entry, other.Name, other.State)
	return running, other, desc
}

// trial reports whether the running slot is on trial (its entry still
// counts tries, left or not) while the other slot is good to fall back to.
func (b *blessing) trial() (bool, string) {
	running, other, desc := b.slots()
	return running.State != "good" && running.State != "empty" && other.State == "good", desc
}

// watch reboots a boot on trial that is not judged by its deadline (a hang
// anywhere in the boot: no network, a daemon that blocks).
func (b *blessing) watch(ctx context.Context) {
	b.init()
	select {
	case <-ctx.Done():
	case <-b.done:
	case <-b.Clock.After(b.Deadline):
		b.verdict(fmt.Errorf("not healthy within %s of boot", b.Deadline))
	}
}

// judge decides after the node reported ready: the network first (known at
// once), then the daemons over the settle period, then the probes again.
func (b *blessing) judge(ctx context.Context) {
	b.init()
	err := b.Network()
	if err == nil {
		err = b.settle(ctx)
	}
	if err == nil && b.Probe != nil {
		err = b.Probe(ctx)
	}
	if ctx.Err() != nil {
		return // going down: nothing to judge
	}
	b.verdict(err)
}

// settle waits for the settle period and fails as soon as a daemon
// restarts (one that appears meanwhile, such as kubelet, counts from 0).
func (b *blessing) settle(ctx context.Context) error {
	start := b.Clock.Now()
	base := map[string]int{}
	for _, d := range b.Daemons() {
		base[d.Name] = d.Restarts
	}
	for {
		for _, d := range b.Daemons() {
			if n := d.Restarts - base[d.Name]; n > 0 {
				return fmt.Errorf("daemon %s restarted %d time(s) within the %s settle period (last error: %s)", d.Name, n, b.Settle, d.LastError)
			}
		}
		left := b.Settle - b.Clock.Now().Sub(start)
		if left <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.Clock.After(min(settlePoll, left)):
		}
	}
}

// verdict acts on the first judgement (the deadline's or judge's): bless, or
// log why not and, on trial, reboot.
func (b *blessing) verdict(unhealthy error) {
	b.init()
	first := false
	select {
	case <-b.done:
	default:
		close(b.done)
		first = true
	}
	if !first {
		return
	}
	if unhealthy == nil {
		if _, err := b.Slots.Bless(); err != nil {
			b.Log.Error("system slot not marked good", "err", err)
		}
		st := b.Slots.Status()
		b.Log.Info("system slots", "running", st.Running, "default", st.Default, "message", st.Message)
		return
	}
	onTrial, desc := b.trial()
	b.Log.Error("system slot not marked good: boot not healthy", "slot", b.Slots.Status().Running, "why", unhealthy.Error(), "slots", desc)
	if !onTrial {
		return
	}
	reason := fmt.Sprintf("system slot on trial is not healthy (%v): rebooting to spend a boot try; the boot loader falls back to the good slot once its tries are used up", unhealthy)
	b.Log.Error("rebooting to let the boot counter run out", "slots", desc)
	b.Reboot(reason)
}

// bootNetwork is what the boot's network came to.
type bootNetwork struct {
	// Running is the machine config the node runs; nil: the default network.
	Running *config.MachineConfig
	// Records are this boot's network transactions (origin "boot").
	Records []txn.Record
	// Slots is slot.Active's answer, looked at when Running is nil: nil
	// means a committed config is there that the node does not run.
	Slots error
	// Settled is the wait for the network at boot.
	Settled error
}

// verdict says why the boot's network is not healthy, or nil. A config
// that did not apply (the node fell back to another slot or to DHCP) is not
// healthy, even when the cause may be outside the node: the previous slot
// is known to bring this network up. A node without any machine config
// runs DHCP by design and is judged by its settling alone.
func (n bootNetwork) verdict() error {
	for _, r := range n.Records {
		if r.State != txn.Available {
			msg := r.Message
			if r.FailedProbe != "" {
				msg = "probe " + r.FailedProbe + ": " + msg
			}
			return fmt.Errorf("network transaction at boot (generation %d, config slot %s) %s/%s, restored %q: %s",
				r.Generation, r.Slot, r.State, r.Reason, r.RolledBackTo, msg)
		}
	}
	if n.Running == nil {
		switch {
		case n.Slots == nil:
			return errors.New("the config slots hold a committed machine config but the node runs the default network (DHCP on every NIC)")
		case !errors.Is(n.Slots, slot.ErrNoSlot):
			return fmt.Errorf("config slots unreadable: %w", n.Slots)
		}
	}
	if n.Settled != nil {
		return fmt.Errorf("network: %w", n.Settled)
	}
	return nil
}

// bootRecords are the transactions with origin "boot" started at or after since.
func bootRecords(history []txn.Record, since time.Time) []txn.Record {
	var out []txn.Record
	for _, r := range history {
		if r.Origin == "boot" && !r.Started.Before(since) {
			out = append(out, r)
		}
	}
	return out
}

// probeConfig runs cfg's transaction probes; every one must answer.
func probeConfig(ctx context.Context, probes txn.ProbeSet, cfg *config.MachineConfig) error {
	if probes == nil {
		probes = txn.DefaultProbes
	}
	each := 3 * time.Second
	if s := cfg.Network.Transaction.ProbeTimeoutSeconds; s > 0 {
		each = time.Duration(s) * time.Second
	}
	var errs []error
	for _, r := range probe.RunAll(ctx, probes(cfg), each) {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("probe %s: %w", r.Name, r.Err))
		}
	}
	return errors.Join(errs...)
}

// durationParam reads a duration from the kernel cmdline, def when absent or invalid.
func durationParam(cmdline boot.Cmdline, key string, def time.Duration, log *slog.Logger) time.Duration {
	v, ok := cmdline.Get(key)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		log.Error("ignoring "+key+": want a positive duration such as 2m", "value", v)
		return def
	}
	return d
}
