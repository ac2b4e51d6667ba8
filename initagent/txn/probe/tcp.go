package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// TCP returns a probe that connects to addr (host:port) and closes the
// connection again. A refused connection fails at once (the host answered
// with a reset); other errors, such as no route yet, are retried with
// backoff until ctx is done.
func TCP(addr string) Probe { return &tcpProbe{addr: addr} }

// HostTCP returns a probe that passes when the host at addr (host:port)
// answers TCP at all: an accepted connection or a refusal (the reset proves
// the path to the host works). It checks reachability of a peer whose
// service may not run yet, such as another control plane's apiserver while
// the cluster forms. It is regression-only: a peer may be powered off when
// this node boots, so it blocks a change only when it answered before.
func HostTCP(addr string) Probe { return &tcpProbe{addr: addr, refusalAnswers: true} }

func (p *tcpProbe) RegressionOnly() bool { return p.refusalAnswers }

type tcpProbe struct {
	addr           string
	refusalAnswers bool
}

func (p *tcpProbe) Name() string {
	if p.refusalAnswers {
		return "tcp host " + p.addr
	}
	return "tcp " + p.addr
}

func (p *tcpProbe) Run(ctx context.Context) error {
	hint := fmt.Sprintf("that a service listens on %s and that no firewall blocks it", p.addr)
	start := time.Now()
	var d net.Dialer
	var lastErr error
	for attempt := 0; ; attempt++ {
		if expired(ctx) {
			return ctxErr(ctx, p.Name(), "no connection within "+waited(start), lastErr, hint)
		}
		c, err := d.DialContext(ctx, "tcp", p.addr)
		if err == nil {
			c.Close()
			return nil
		}
		if p.refusalAnswers && kindOf(ctx, err) == ErrRefused {
			return nil
		}
		if retry(ctx, err, attempt, &lastErr) {
			continue
		}
		return fail(ctx, p.Name(), "connect", err, hint)
	}
}

// retry decides whether a failed attempt is worth repeating: timeouts are
// (the loop then ends on ctx), as are local and routing errors, which often
// clear within a second after an address or route change; those are kept in
// *last and waited out with backoff. Refusals and wrong answers are final.
func retry(ctx context.Context, err error, attempt int, last *error) bool {
	switch kindOf(ctx, err) {
	case ErrTimeout, ErrCanceled:
		return true
	case ErrUnreachable:
		*last = err
		sleepUntil(ctx, until(ctx, time.Now().Add(backoff(attempt))))
		return true
	}
	return false
}

// HTTP returns a probe that sends GET url with client and passes on status
// 200–399; redirects are followed only if client does so. A nil client
// means a direct connection (no proxy from the environment) that does not
// follow redirects and trusts the system roots for https. Connections are
// not kept alive, so nothing lingers after Run.
func HTTP(url string, client *http.Client) Probe {
	if client == nil {
		client = newClient(nil)
	}
	return &httpProbe{url: url, client: client, ok: func(code int) bool { return code >= 200 && code < 400 }, want: "2xx or 3xx"}
}

// APIServer returns a probe for a Kubernetes API server at endpoint
// (host:port, port 6443 if omitted). With a CA it sends GET
// https://endpoint/readyz, verifying the server's certificate against ca,
// and passes on status 200. Without a CA (none known yet, e.g. before the
// node joined) it only checks that endpoint accepts TCP connections.
func APIServer(endpoint string, ca *x509.CertPool) Probe {
	endpoint = strings.TrimSuffix(strings.TrimPrefix(endpoint, "https://"), "/")
	if _, _, err := net.SplitHostPort(endpoint); err != nil {
		endpoint = net.JoinHostPort(strings.Trim(endpoint, "[]"), "6443")
	}
	if ca == nil {
		return TCP(endpoint)
	}
	return &httpProbe{
		url:    "https://" + endpoint + "/readyz",
		client: newClient(&tls.Config{RootCAs: ca, MinVersion: tls.VersionTLS12}),
		ok:     func(code int) bool { return code == http.StatusOK },
		want:   "200",
		hint:   "the kube-apiserver on " + endpoint + " (kubectl get --raw='/readyz?verbose' lists failing checks)",
	}
}

func newClient(tlsConfig *tls.Config) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:             nil, // probes test the direct path
			DisableKeepAlives: true,
			TLSClientConfig:   tlsConfig,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type httpProbe struct {
	url    string
	client *http.Client
	ok     func(status int) bool
	want   string // the statuses ok accepts, for errors
	hint   string // for a wrong status; empty: generic
}

// Name is "<scheme> <url>", e.g. "https https://10.0.0.11:6443/readyz".
func (p *httpProbe) Name() string {
	scheme := "http"
	if u, err := url.Parse(p.url); err == nil && u.Scheme != "" {
		scheme = u.Scheme
	}
	return scheme + " " + p.url
}

func (p *httpProbe) Run(ctx context.Context) error {
	start := time.Now()
	var lastErr error
	for attempt := 0; ; attempt++ {
		if expired(ctx) {
			return ctxErr(ctx, p.Name(), "no response within "+waited(start), lastErr,
				"that the server is up and reachable and that no firewall blocks it")
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
		if err != nil {
			return &Error{Probe: p.Name(), Kind: ErrWrongAnswer, Detail: "bad URL", Err: err, Hint: "the probe configuration"}
		}
		req.Close = true // no idle connection (and its goroutines) outlives Run
		resp, err := p.client.Do(req)
		if err != nil {
			if retry(ctx, err, attempt, &lastErr) {
				continue
			}
			hint := "that the server is up and listening"
			if kindOf(ctx, err) == ErrWrongAnswer {
				hint = "the CA bundle and that the server's certificate names this host"
			}
			return fail(ctx, p.Name(), "GET", err, hint)
		}
		// The start of the body says why, e.g. which readyz check failed.
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if p.ok(resp.StatusCode) {
			return nil
		}
		hint := p.hint
		if hint == "" {
			hint = "the server's logs"
		}
		return &Error{Probe: p.Name(), Kind: ErrWrongAnswer,
			Detail: fmt.Sprintf("status %q, want %s%s", resp.Status, p.want, bodySnippet(body)), Hint: hint}
	}
}

// bodySnippet quotes the start of a response body on one line.
func bodySnippet(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if s == "" || !utf8.ValidString(s) {
		return ""
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return fmt.Sprintf(" (body: %q)", s)
}
