package source

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

const (
	// attemptTimeout bounds one fetch so that a server that accepts and then
	// hangs does not use up the whole deadline.
	attemptTimeout = 30 * time.Second
	// First retry delay and its cap; each delay is doubled and then jittered
	// down by up to half so that a rack booting at once spreads out.
	firstBackoff = 500 * time.Millisecond
	maxBackoff   = 8 * time.Second
)

// permanentError ends the retry loop: retrying cannot fix it.
type permanentError struct {
	err  error
	hint string // what the operator should check
}

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error, hint string) error { return &permanentError{err: err, hint: hint} }

// fetchCmdline fetches ballast.config=URL, retrying until the timeout.
func fetchCmdline(ctx context.Context, o Options) (*Result, error) {
	raw, ok := o.Cmdline[KeyURL]
	wantSum, hasSum := o.Cmdline[KeySHA256]
	if !ok {
		if hasSum {
			return nil, fmt.Errorf("kernel cmdline has %s= but no %s=: add %s=URL or drop the hash", KeySHA256, KeyURL, KeyURL)
		}
		return nil, errAbsent
	}
	subject := fmt.Sprintf("config source cmdline %s=%s", KeyURL, raw)
	u, err := parseConfigURL(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	if hasSum {
		wantSum = strings.ToLower(strings.TrimSpace(wantSum))
		if b, err := hex.DecodeString(wantSum); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%s: %s=%q is not a sha256: want 64 hex digits (sha256sum FILE)", subject, KeySHA256, wantSum)
		}
	}
	timeout := o.Timeout
	if v, ok := o.Cmdline[KeyTimeout]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%s: %s=%q is not a positive duration: use e.g. %s=5m", subject, KeyTimeout, v, KeyTimeout)
		}
		timeout = d
	}

	var get func(context.Context) ([]byte, error)
	switch u.Scheme {
	case "http", "https":
		client, err := httpClient(o, u.Scheme)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", subject, err)
		}
		get = func(ctx context.Context) ([]byte, error) { return httpGet(ctx, client, u.String(), o.CAFile) }
	case "tftp":
		get = func(ctx context.Context) ([]byte, error) {
			data, err := tftpGet(ctx, tftpAddr(u), strings.TrimPrefix(u.Path, "/"), tftpConfig{max: MaxSize})
			var te *tftpError
			if errors.As(err, &te) && (te.Code == tftpErrNotFound || te.Code == tftpErrAccess) {
				return nil, permanent(err, "check the file name and that it is under the TFTP server's root")
			}
			return data, err
		}
	}

	o.Log.Info("fetching machine config", "url", raw, "timeout", timeout)
	data, err := retry(ctx, o, raw, timeout, func(ctx context.Context) ([]byte, error) {
		data, err := get(ctx)
		if errors.Is(err, ErrTooLarge) {
			return nil, permanent(err, "check that the URL points at the machine config")
		}
		if err != nil {
			return nil, err
		}
		if len(data) == 0 {
			return nil, errors.New("server sent an empty document")
		}
		if hasSum {
			sum := sha256.Sum256(data)
			if got := hex.EncodeToString(sum[:]); got != wantSum {
				return nil, permanent(fmt.Errorf("%w: the document has %s, %s= wants %s", ErrChecksum, got, KeySHA256, wantSum),
					"not using it: fix the hash on the kernel cmdline or the file at the URL")
			}
		}
		return data, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	return &Result{Data: data, Source: "cmdline:" + raw}, nil
}

func parseConfigURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("not a URL: %w", err)
	}
	switch u.Scheme {
	case "http", "https", "tftp":
	default:
		return nil, fmt.Errorf("scheme %q is not supported: use http://, https:// or tftp://", u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("no host in the URL: write %s://HOST/PATH", u.Scheme)
	}
	if u.Scheme == "tftp" && strings.TrimPrefix(u.Path, "/") == "" {
		return nil, errors.New("no file in the URL: write tftp://HOST/FILE")
	}
	return u, nil
}

// retry calls get until it succeeds, fails permanently, or timeout passes.
func retry(ctx context.Context, o Options, what string, timeout time.Duration, get func(context.Context) ([]byte, error)) ([]byte, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay, maxDelay := firstBackoff, maxBackoff
	if o.firstBackoff > 0 {
		delay, maxDelay = o.firstBackoff, o.maxBackoff
	}
	var lastErr error
	attempt := 1
	for ; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		data, err := get(actx)
		acancel()
		if err == nil {
			return data, nil
		}
		if pe := (*permanentError)(nil); errors.As(err, &pe) {
			o.Log.Error("machine config fetch failed", "url", what, "attempt", attempt, "err", err)
			return nil, fmt.Errorf("%w; %s", err, pe.hint)
		}
		// An attempt cut short by the deadline says less than the one before it.
		if lastErr == nil || ctx.Err() == nil {
			lastErr = err
		}
		if ctx.Err() != nil {
			break
		}
		sleep := delay/2 + rand.N(delay/2+1)
		delay = min(2*delay, maxDelay)
		o.Log.Warn("machine config fetch failed, will retry", "url", what, "attempt", attempt, "err", err, "retry_in", sleep.Round(time.Millisecond))
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-o.NetworkChanged:
			o.Log.Info("network changed, retrying the machine config fetch now", "url", what)
		}
		t.Stop()
		if ctx.Err() != nil {
			break
		}
	}
	if err := parent.Err(); err != nil {
		return nil, fmt.Errorf("%w after %d attempts (last error: %v)", err, attempt, lastErr)
	}
	o.Log.Error("machine config fetch gave up", "url", what, "attempts", attempt, "err", lastErr)
	return nil, fmt.Errorf("no answer within %s (%d attempts), last error: %w; check that the server is up and reachable from this node "+
		"(links come up with DHCP), or give it longer with %s=", timeout, attempt, lastErr, KeyTimeout)
}

func httpClient(o Options, scheme string) (*http.Client, error) {
	if o.HTTPClient != nil {
		return o.HTTPClient, nil
	}
	pool := o.RootCAs
	if pool == nil && scheme == "https" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle: %w; the image should carry it (imgbuild copies Debian's ca-certificates)", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA bundle %s has no PEM certificates: rebuild the image", o.CAFile)
		}
	}
	return &http.Client{Transport: &http.Transport{
		// No proxy: PID 1 has no environment, and the config server is local.
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: attemptTimeout,
		// One document, then nothing: no idle connections left behind.
		DisableKeepAlives: true,
		ForceAttemptHTTP2: true,
	}}, nil
}

func httpGet(ctx context.Context, client *http.Client, u, caFile string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, permanent(err, "fix the URL")
	}
	req.Header.Set("User-Agent", "ballast-initagent")
	resp, err := client.Do(req)
	if err != nil {
		if ve := (*tls.CertificateVerificationError)(nil); errors.As(err, &ve) {
			return nil, permanent(err, fmt.Sprintf("check that the server's certificate chains to a CA in %s, names the URL's host, "+
				"and is valid now: the node's clock says %s", caFile, time.Now().UTC().Format(time.RFC3339)))
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		err := fmt.Errorf("server answered %q", resp.Status)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 &&
			resp.StatusCode != http.StatusRequestTimeout && resp.StatusCode != http.StatusTooManyRequests {
			return nil, permanent(err, "check the URL's path and the server's access rules")
		}
		return nil, err
	}
	if resp.ContentLength > MaxSize {
		return nil, fmt.Errorf("document of %d bytes is %w", resp.ContentLength, ErrTooLarge)
	}
	data, err := readAllMax(resp.Body, MaxSize)
	if errors.Is(err, ErrTooLarge) {
		return nil, fmt.Errorf("document is %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return data, nil
}
