package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"
)

// State is where a client is in its state machine (RFC 2131 §4.4, RFC 8415 §18).
type State string

// States reported by Status.
const (
	StateInit      State = "init"      // no lease: discovering (v4) or soliciting (v6)
	StateRebooting State = "rebooting" // asking for the persisted lease back (v4 INIT-REBOOT)
	StateBound     State = "bound"     // lease valid, waiting for T1
	StateRenewing  State = "renewing"  // between T1 and T2: extending with the server that granted the lease
	StateRebinding State = "rebinding" // between T2 and expiry: extending with any server
	StateStopped   State = "stopped"   // Run is not running
)

// Status is a snapshot of a client for the node API.
type Status struct {
	Interface string    `json:"interface"`
	Family    int       `json:"family"`
	State     State     `json:"state"`
	Lease     *Lease    `json:"lease,omitempty"`     // current lease; nil when none
	LastError string    `json:"lastError,omitempty"` // last failed exchange; cleared by the next success
	Changed   time.Time `json:"changed"`             // when State or Lease last changed
}

// status is the mutex-protected Status of one client.
type status struct {
	mu sync.Mutex
	s  Status
}

func (st *status) get() Status {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.s
	if s.Lease != nil {
		l := *s.Lease
		s.Lease = &l
	}
	return s
}

func (st *status) set(state State, l *Lease) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s.State = state
	st.s.Lease = nil
	if l != nil {
		c := *l
		st.s.Lease = &c
	}
	st.s.Changed = time.Now()
}

func (st *status) setState(state State) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.s.State != state {
		st.s.State = state
		st.s.Changed = time.Now()
	}
}

func (st *status) setError(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s.LastError = ""
	if err != nil {
		st.s.LastError = err.Error()
	}
}

// timing holds the retransmission and backoff settings shared by Config4 and
// Config6, with defaults applied.
type timing struct {
	timeout    time.Duration
	retries    int
	minBackoff time.Duration
	maxBackoff time.Duration
}

func newTiming(timeout time.Duration, retries int, minB, maxB, defTimeout time.Duration, defRetries int) (timing, error) {
	if timeout < 0 || retries < 0 || minB < 0 || maxB < 0 {
		return timing{}, errors.New("Timeout, Retries, MinBackoff and MaxBackoff must not be negative (0 means the default)")
	}
	t := timing{timeout: timeout, retries: retries, minBackoff: minB, maxBackoff: maxB}
	if t.timeout == 0 {
		t.timeout = defTimeout
	}
	if t.retries == 0 {
		t.retries = defRetries
	}
	if t.minBackoff == 0 {
		t.minBackoff = time.Second
	}
	if t.maxBackoff == 0 {
		t.maxBackoff = time.Minute
	}
	if t.maxBackoff < t.minBackoff {
		return timing{}, fmt.Errorf("MaxBackoff %s is shorter than MinBackoff %s", t.maxBackoff, t.minBackoff)
	}
	return t, nil
}

// backoff is the wait between failed attempts to get a lease: it doubles
// from min to max, and each wait is jittered so that the nodes of a rack
// that lost their DHCP server together do not retry in lockstep.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	// "Equal jitter": half fixed, half random.
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }

// minExtendRetry is the shortest wait between two attempts to extend a
// lease (RFC 2131 §4.4.5: half the remaining time, down to 60 seconds).
const minExtendRetry = 60 * time.Second

// extendRetryDelay is how long to wait after a failed renew or rebind when
// remaining is the time left until T2 (renewing) or expiry (rebinding).
func extendRetryDelay(remaining time.Duration) time.Duration {
	if remaining <= 0 {
		return 0
	}
	d := remaining / 2
	if d < minExtendRetry {
		d = min(minExtendRetry, remaining)
	}
	return d
}

// sleep waits for d or until ctx is done, and returns ctx's error then.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// validIfname checks an interface name the way the kernel does
// (dev_valid_name): the name also becomes part of a file name.
func validIfname(name string) error {
	switch {
	case name == "":
		return errors.New("Interface is required")
	case len(name) >= 16: // IFNAMSIZ includes the terminating NUL
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..", strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("invalid interface name %q", name)
	}
	return nil
}

// interfaceByName looks the interface up in the calling thread's network
// namespace and checks it has a MAC address.
func interfaceByName(name string) (*net.Interface, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up interface: %w", err)
	}
	if len(ifc.HardwareAddr) < 6 {
		return nil, fmt.Errorf("interface has no Ethernet address (%q)", ifc.HardwareAddr)
	}
	return ifc, nil
}

// carrierWait bounds how long an exchange waits for the interface's
// carrier before it sends anyway (a driver that never reports it).
const carrierWait = 10 * time.Second

// waitCarrier returns once the interface is operational (IFF_RUNNING: its
// lower layer is up), ctx ends or max has passed. A message sent before the
// link came up is dropped by the driver (an e1000e negotiates for a second
// or two after it is set up), and its retransmission would come only a
// whole timeout (4s) later.
func waitCarrier(ctx context.Context, name string, max time.Duration) {
	deadline := time.Now().Add(max)
	for {
		ifc, err := net.InterfaceByName(name)
		if err != nil || ifc.Flags&net.FlagRunning != 0 || !time.Now().Before(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func discardLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
