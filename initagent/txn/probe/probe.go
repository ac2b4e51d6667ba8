// Package probe checks connectivity after a network change, so the network
// transaction (DESIGN §6) can decide between commit and rollback.
//
// A Probe asks one target whether it still answers: the default gateway
// (ARP for IPv4, NDP for IPv6), a DNS server, a TCP port, an HTTP(S) URL or
// the Kubernetes API server's /readyz. The transaction runs the same probes
// before and after applying a change; only probes that passed before and fail
// after are regressions:
//
//	probes := []probe.Probe{
//		probe.Gateway("eth0", netip.MustParseAddr("192.0.2.1")),
//		probe.DNS(netip.MustParseAddr("192.0.2.53"), ""),
//		probe.APIServer("10.0.0.11:6443", caPool),
//	}
//	before := probe.RunAll(ctx, probes, 2*time.Second)
//	// … apply the change …
//	after := probe.RunAll(ctx, probes, 2*time.Second)
//	if regressions, _ := probe.Compare(before, after); len(regressions) > 0 {
//		// roll back, report regressions[0].Err
//	}
//
// Probes create their sockets on the calling goroutine's thread, so they use
// the network namespace the caller runs in.
package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A Probe checks that one target answers.
type Probe interface {
	// Name is stable and human-readable, e.g. "gateway 192.0.2.1 on eth0".
	// Compare matches results before and after a change by Name.
	Name() string
	// Run returns nil when the target answered, or an *Error saying what did
	// not answer and how. Run returns promptly once ctx is done.
	Run(ctx context.Context) error
}

// Kinds of failure. An *Error wraps exactly one of them; check with
// errors.Is.
var (
	// ErrTimeout: nothing answered before the deadline.
	ErrTimeout = errors.New("timeout")
	// ErrRefused: the target's host answered that nothing listens there
	// (TCP RST, ICMP port unreachable).
	ErrRefused = errors.New("refused")
	// ErrUnreachable: the local stack or a router reported that the target
	// cannot be reached (no route, no usable source address, host
	// unreachable).
	ErrUnreachable = errors.New("unreachable")
	// ErrWrongAnswer: the target answered, but not as required (DNS
	// SERVFAIL/REFUSED, HTTP status, untrusted TLS certificate, malformed
	// reply).
	ErrWrongAnswer = errors.New("wrong answer")
	// ErrCanceled: the caller canceled the probe before it finished.
	ErrCanceled = errors.New("canceled")
)

// Error is the error every probe in this package returns.
type Error struct {
	Probe  string // the probe's Name
	Kind   error  // ErrTimeout, ErrRefused, ErrUnreachable, ErrWrongAnswer or ErrCanceled
	Detail string // what was tried and what came back
	Err    error  // underlying error, may be nil
	Hint   string // what to check, may be empty
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Probe)
	b.WriteString(": ")
	b.WriteString(e.Kind.Error())
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.Hint != "" {
		b.WriteString("; check ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// Unwrap makes errors.Is match both the Kind and the underlying error.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Result is the outcome of one probe in RunAll.
type Result struct {
	Name string
	Err  error // nil: the target answered
	Took time.Duration
	// RegressionOnly: the probe blocks a change only when it passed before
	// (see HostTCP); a target the change adds need not answer.
	RegressionOnly bool
}

// RunAll runs all probes in parallel, each bounded by its own timeout each
// (no per-probe timeout if each <= 0) and by ctx, typically the transaction's
// deadline. Results are in the order of probes. RunAll returns only after
// every probe's Run has returned; a probe that panics yields an error
// instead of taking the agent (PID 1) down.
func RunAll(ctx context.Context, probes []Probe, each time.Duration) []Result {
	results := make([]Result, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() {
			results[i] = runOne(ctx, p, each)
		})
	}
	wg.Wait()
	return results
}

func runOne(ctx context.Context, p Probe, each time.Duration) (res Result) {
	res.Name = p.Name()
	if r, ok := p.(interface{ RegressionOnly() bool }); ok {
		res.RegressionOnly = r.RegressionOnly()
	}
	if each > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, each)
		defer cancel()
	}
	start := time.Now()
	defer func() {
		res.Took = time.Since(start)
		if r := recover(); r != nil {
			res.Err = fmt.Errorf("BUG: probe %s panicked: %v", res.Name, r)
		}
	}()
	res.Err = p.Run(ctx)
	return res
}

// Compare matches after with before by Name. Regressions are probes that
// passed before and fail after: they trigger a rollback. stillFailing are
// the other failures after the change: probes that failed before too, and
// probes without a result before (nothing to regress from). They are worth
// reporting but do not count against the change. If a name appears more than
// once in before, it counts as passing when any of its results passed.
func Compare(before, after []Result) (regressions, stillFailing []Result) {
	passed := make(map[string]bool, len(before))
	for _, r := range before {
		passed[r.Name] = passed[r.Name] || r.Err == nil
	}
	for _, r := range after {
		switch {
		case r.Err == nil:
		case passed[r.Name]:
			regressions = append(regressions, r)
		default:
			stillFailing = append(stillFailing, r)
		}
	}
	return regressions, stillFailing
}

// fail builds the *Error for err, a failure that ended the probe, choosing
// the kind from err itself and from ctx.
func fail(ctx context.Context, name, detail string, err error, hint string) *Error {
	return &Error{Probe: name, Kind: kindOf(ctx, err), Detail: detail, Err: err, Hint: hint}
}

// kindOf classifies err. Socket timeouts and an expired ctx are ErrTimeout,
// so a deadline reached while waiting is reported the same way whichever
// fired first.
func kindOf(ctx context.Context, err error) error {
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var recordErr tls.RecordHeaderError
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return ErrRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.ENETDOWN):
		return ErrUnreachable
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr),
		errors.As(err, &invalid), errors.As(err, &recordErr):
		return ErrWrongAnswer
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return ErrTimeout
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled):
		return ErrCanceled
	case ctx.Err() != nil:
		return ErrTimeout
	}
	return ErrUnreachable
}

// ctxErr is the *Error for a probe whose ctx ended while it was still
// waiting for an answer. last is the most recent transient error, if any,
// e.g. "network is unreachable" from a send that kept failing.
func ctxErr(ctx context.Context, name, detail string, last error, hint string) *Error {
	kind := ErrTimeout
	if errors.Is(ctx.Err(), context.Canceled) {
		kind = ErrCanceled
	} else if last != nil && kindOf(ctx, last) == ErrUnreachable {
		kind = ErrUnreachable
	}
	return &Error{Probe: name, Kind: kind, Detail: detail, Err: last, Hint: hint}
}

// waited formats how long a probe waited, for error details.
func waited(start time.Time) string {
	return time.Since(start).Round(time.Millisecond).String()
}

// backoff is the schedule for resending a request that got no answer:
// 200ms, 400ms, 800ms, then every second, so a few retries fit into a
// probe timeout of one or two seconds.
func backoff(attempt int) time.Duration {
	d := 200 * time.Millisecond << min(attempt, 3)
	return min(d, time.Second)
}

// expired reports whether ctx is done or its deadline has passed. The
// latter comes first: ctx's timer fires a little after the deadline, and a
// retry loop that only checked ctx.Err would spin on immediate timeouts
// meanwhile.
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// until returns the earlier of t and ctx's deadline.
func until(ctx context.Context, t time.Time) time.Time {
	if d, ok := ctx.Deadline(); ok && d.Before(t) {
		return d
	}
	return t
}

// deadliner is a connection whose blocking calls can be interrupted.
type deadliner interface{ SetDeadline(time.Time) error }

// interruptOnDone makes c's blocking calls return as soon as ctx is done.
// Call the returned stop when c is no longer used.
func interruptOnDone(ctx context.Context, c deadliner) (stop func() bool) {
	return context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
}
