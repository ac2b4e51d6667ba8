package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// DNS returns a probe that sends a real query to server on port 53: "A" for
// name, or ". NS" if name is empty. The query goes over UDP and is resent
// with backoff until ctx is done; a truncated answer is repeated over TCP.
//
// Any well-formed response with RCODE NOERROR or NXDOMAIN passes: the server
// answered, whatever it knows about name. SERVFAIL, REFUSED and other
// RCODEs fail with ErrWrongAnswer and name the RCODE; so does a malformed
// response.
func DNS(server netip.Addr, name string) Probe {
	q := dns.Question{Name: ".", Qtype: dns.TypeNS, Qclass: dns.ClassINET}
	if name != "" {
		q = dns.Question{Name: dns.Fqdn(name), Qtype: dns.TypeA, Qclass: dns.ClassINET}
	}
	return &dnsProbe{server: server, q: q}
}

// dnsTCPTimeout bounds the TCP retry after a truncated answer; it is also
// miekg/dns's default read timeout.
const dnsTCPTimeout = 2 * time.Second

type dnsProbe struct {
	server netip.Addr
	q      dns.Question
}

func (p *dnsProbe) Name() string { return "dns " + p.server.String() }

// query is how the question appears in errors, e.g. `"probe.test. A"`.
func (p *dnsProbe) query() string {
	return fmt.Sprintf("%q", p.q.Name+" "+dns.TypeToString[p.q.Qtype])
}

func (p *dnsProbe) Run(ctx context.Context) error {
	server := p.server
	if zone, err := zoneIndex(server.Zone()); err != nil {
		return &Error{Probe: p.Name(), Kind: ErrUnreachable, Detail: "no interface " + server.Zone(), Err: err,
			Hint: "the zone (interface) of the link-local address"}
	} else if zone != "" {
		server = server.WithZone(zone)
	}
	addr := net.JoinHostPort(server.String(), "53")
	hint := fmt.Sprintf("that the DNS server %s is up, reachable and listening on port 53", p.server)
	start := time.Now()
	sent := 0
	var lastErr error
	for attempt := 0; ; attempt++ {
		if expired(ctx) {
			return ctxErr(ctx, p.Name(), fmt.Sprintf("no answer to %s after %d queries within %s", p.query(), sent, waited(start)), lastErr, hint)
		}
		next := until(ctx, time.Now().Add(backoff(attempt)))
		r, err := p.exchange(ctx, "udp", addr, next)
		sent++
		if err == nil && r.Truncated {
			r, err = p.exchange(ctx, "tcp", addr, until(ctx, time.Now().Add(dnsTCPTimeout)))
			if err != nil {
				return fail(ctx, p.Name(), fmt.Sprintf("truncated UDP answer to %s, and over TCP", p.query()), err,
					"that the DNS server also accepts queries over TCP port 53")
			}
		}
		switch {
		case err == nil:
			return p.check(r)
		case errors.Is(err, syscall.ECONNREFUSED):
			// ICMP port unreachable: the host is up, nothing listens on 53.
			return fail(ctx, p.Name(), fmt.Sprintf("query %s", p.query()), err, hint)
		case isTimeout(err), errors.Is(err, context.Canceled):
			// No answer to this attempt; resend.
		case errors.Is(err, dns.ErrId), isMalformed(err):
			return &Error{Probe: p.Name(), Kind: ErrWrongAnswer, Detail: fmt.Sprintf("malformed answer to %s", p.query()), Err: err,
				Hint: "that " + p.server.String() + " is a DNS server"}
		default:
			lastErr = err
			sleepUntil(ctx, next)
		}
	}
}

// exchange sends the query once over network and waits until deadline.
func (p *dnsProbe) exchange(ctx context.Context, network, addr string, deadline time.Time) (*dns.Msg, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.RecursionDesired = true
	m.Question = []dns.Question{p.q}
	c := &dns.Client{Net: network}
	r, _, err := c.ExchangeContext(ctx, m, addr)
	return r, err
}

func (p *dnsProbe) check(r *dns.Msg) error {
	if !r.Response {
		return &Error{Probe: p.Name(), Kind: ErrWrongAnswer, Detail: fmt.Sprintf("answer to %s is not a DNS response (QR bit clear)", p.query()),
			Hint: "that " + p.server.String() + " is a DNS server"}
	}
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return nil
	}
	rcode := dns.RcodeToString[r.Rcode]
	if rcode == "" {
		rcode = fmt.Sprintf("RCODE %d", r.Rcode)
	}
	hint := "that the server resolves for this host (its upstream servers, and ACLs such as allow-recursion / local-service)"
	if r.Rcode == dns.RcodeServerFailure {
		hint = "the DNS server's upstream servers and DNSSEC validation"
	}
	return &Error{Probe: p.Name(), Kind: ErrWrongAnswer, Detail: fmt.Sprintf("server answered %s to %s", rcode, p.query()), Hint: hint}
}

// isMalformed reports whether err comes from unpacking a response that is
// not valid DNS, as opposed to a network error.
func isMalformed(err error) bool {
	var de *dns.Error
	var ne net.Error
	return errors.As(err, &de) && !errors.As(err, &ne)
}
