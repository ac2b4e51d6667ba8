package ignite

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	v3 "github.com/coreos/ignition/v2/config/v3_5"
	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
)

// maxDepth bounds nested ignition.config.merge/replace references.
const maxDepth = 10

// fetcher fetches resources the way Ignition's fetcher does: data:, http:
// and https: sources, the config's ignition.proxy, its
// ignition.security.tls.certificateAuthorities on top of the system roots,
// and its ignition.timeouts.
type fetcher struct {
	o      Options
	client *http.Client
}

func newFetcher(o Options) *fetcher {
	f := &fetcher{o: o}
	f.client = o.HTTPClient
	if f.client == nil {
		f.client = &http.Client{Transport: transport(nil, nil, nil)}
	}
	return f
}

func transport(pool *x509.CertPool, p *igntypes.Proxy, headers *int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil // PID 1 has no environment: only ignition.proxy counts
	if p != nil && (p.HTTPProxy != nil || p.HTTPSProxy != nil) {
		t.Proxy = proxyFunc(*p)
	}
	if pool != nil {
		t.TLSClientConfig.RootCAs = pool
	}
	t.ResponseHeaderTimeout = 10 * time.Second // Ignition's default
	if headers != nil && *headers > 0 {
		t.ResponseHeaderTimeout = time.Duration(*headers) * time.Second
	}
	return t
}

// configure sets the client from cfg's proxy, CAs and timeouts, as Ignition
// does each time a config is fetched. A client given in Options is kept.
func (f *fetcher) configure(ctx context.Context, cfg *igntypes.Config) error {
	if f.o.HTTPClient != nil {
		return nil
	}
	var pool *x509.CertPool
	if cas := cfg.Ignition.Security.TLS.CertificateAuthorities; len(cas) > 0 {
		var err error
		if pool, err = x509.SystemCertPool(); err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		for i, r := range cas {
			field := fmt.Sprintf("ignition.security.tls.certificateAuthorities[%d]", i)
			if r.Source == nil {
				return fmt.Errorf("%s.source: missing", field)
			}
			data, err := f.fetch(ctx, field, r)
			if err != nil {
				return err
			}
			if !pool.AppendCertsFromPEM(data) {
				return fmt.Errorf("%s: no PEM certificate in %s", field, redact(*r.Source))
			}
		}
	}
	t := cfg.Ignition.Timeouts
	c := &http.Client{Transport: transport(pool, &cfg.Ignition.Proxy, t.HTTPResponseHeaders)}
	if t.HTTPTotal != nil && *t.HTTPTotal > 0 {
		c.Timeout = time.Duration(*t.HTTPTotal) * time.Second
	}
	f.client = c
	return nil
}

// proxyFunc chooses ignition.proxy's httpProxy or httpsProxy by the
// request's scheme, except for noProxy entries (host names, .domain
// suffixes, IP addresses, CIDR prefixes, "*") and loopback, like the
// golang.org/x/net/http/httpproxy rules Ignition uses.
func proxyFunc(p igntypes.Proxy) func(*http.Request) (*url.URL, error) {
	return func(r *http.Request) (*url.URL, error) {
		var proxy *string
		switch r.URL.Scheme {
		case "http":
			proxy = p.HTTPProxy
		case "https":
			proxy = p.HTTPSProxy
		}
		if proxy == nil || *proxy == "" {
			return nil, nil
		}
		host := strings.ToLower(r.URL.Hostname())
		ip := net.ParseIP(host)
		if host == "localhost" || ip != nil && ip.IsLoopback() {
			return nil, nil
		}
		for _, n := range p.NoProxy {
			e := strings.ToLower(strings.TrimSpace(string(n)))
			if h, _, err := net.SplitHostPort(e); err == nil {
				e = h
			}
			if _, cidr, err := net.ParseCIDR(e); err == nil {
				if ip != nil && cidr.Contains(ip) {
					return nil, nil
				}
				continue
			}
			if e == "*" || e == host || strings.HasSuffix(host, "."+strings.TrimPrefix(e, ".")) {
				return nil, nil
			}
		}
		u, err := url.Parse(*proxy)
		if err != nil || u.Host == "" {
			// "host:port" without a scheme, as HTTP_PROXY allows
			if u2, err2 := url.Parse("http://" + *proxy); err2 == nil {
				return u2, nil
			}
			return nil, fmt.Errorf("ignition.proxy: %q is not a URL", *proxy)
		}
		return u, nil
	}
}

// render evaluates ignition.config.replace and ignition.config.merge like
// Ignition's ConfigFetcher.RenderConfig: a replace config takes the place of
// cfg; merge configs are fetched in order, each rendered in turn, and merged
// into cfg with Ignition's merge rules. Every fetched config is checked
// (field paths say which reference it came from) before it is used.
func (f *fetcher) render(ctx context.Context, cfg igntypes.Config, field string, depth int) (igntypes.Config, error) {
	if depth > maxDepth {
		return cfg, fmt.Errorf("%s: referenced configs nest deeper than %d: is there a loop?", field, maxDepth)
	}
	if r := cfg.Ignition.Config.Replace; r.Source != nil {
		at := field + ".ignition.config.replace"
		next, err := f.fetchConfig(ctx, at, r)
		if err != nil {
			return cfg, err
		}
		if err := f.configure(ctx, &next); err != nil {
			return cfg, fmt.Errorf("%s: %w", at, err)
		}
		return f.render(ctx, next, at, depth+1)
	}
	merged := cfg
	for i, r := range cfg.Ignition.Config.Merge {
		at := fmt.Sprintf("%s.ignition.config.merge[%d]", field, i)
		if r.Source == nil {
			return cfg, fmt.Errorf("%s.source: missing", at)
		}
		next, err := f.fetchConfig(ctx, at, r)
		if err != nil {
			return cfg, err
		}
		settings := v3.Merge(merged, next)
		if err := f.configure(ctx, &settings); err != nil {
			return cfg, fmt.Errorf("%s: %w", at, err)
		}
		if next, err = f.render(ctx, next, at, depth+1); err != nil {
			return cfg, err
		}
		merged = v3.Merge(merged, next)
	}
	return merged, nil
}

func (f *fetcher) fetchConfig(ctx context.Context, field string, r igntypes.Resource) (igntypes.Config, error) {
	raw, err := f.fetch(ctx, field, r)
	if err != nil {
		return igntypes.Config{}, err
	}
	cfg, rpt, err := v3.ParseCompatibleVersion(raw)
	if err != nil {
		msg := err.Error()
		if len(rpt.Entries) > 0 {
			msg = rpt.String()
		}
		return cfg, fmt.Errorf("%s: the config at %s does not parse: %s", field, redact(*r.Source), msg)
	}
	if ps := Check(field+"("+redact(*r.Source)+")", &cfg); len(ps) > 0 {
		return cfg, problems(ps)
	}
	return cfg, nil
}

// fetch reads a resource (data:, http:, https:), decompresses it and checks
// its verification hash, which Ignition computes over the decompressed
// content.
func (f *fetcher) fetch(ctx context.Context, field string, r igntypes.Resource) ([]byte, error) {
	src := *r.Source
	u, err := url.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("%s.source: %w", field, err)
	}
	var data []byte
	switch u.Scheme {
	case "data":
		if data, err = dataURL(src); err != nil {
			return nil, fmt.Errorf("%s.source: %w", field, err)
		}
	case "http", "https":
		if data, err = f.get(ctx, src, r.HTTPHeaders); err != nil {
			return nil, fmt.Errorf("%s.source: %w", field, err)
		}
	default:
		return nil, fmt.Errorf("%s.source: scheme %q is not supported: use data:, http: or https:", field, u.Scheme)
	}
	if int64(len(data)) > f.o.MaxSize {
		return nil, fmt.Errorf("%s.source: larger than %d bytes", field, f.o.MaxSize)
	}
	if r.Compression != nil && *r.Compression == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%s.compression: %w", field, err)
		}
		if data, err = io.ReadAll(io.LimitReader(zr, f.o.MaxSize+1)); err != nil {
			return nil, fmt.Errorf("%s.compression: %w", field, err)
		}
		if int64(len(data)) > f.o.MaxSize {
			return nil, fmt.Errorf("%s.compression: decompresses to more than %d bytes", field, f.o.MaxSize)
		}
	}
	if r.Verification.Hash != nil {
		if err := verify(*r.Verification.Hash, data); err != nil {
			return nil, fmt.Errorf("%s.verification.hash: %w", field, err)
		}
	}
	return data, nil
}

func (f *fetcher) get(ctx context.Context, src string, headers igntypes.HTTPHeaders) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		if h.Value != nil {
			req.Header.Set(h.Name, *h.Value)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", redact(src), resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, f.o.MaxSize+1))
}

// redact keeps data: URLs (which may hold secrets) out of messages.
func redact(src string) string {
	if strings.HasPrefix(src, "data:") {
		return "data URL"
	}
	return src
}

// verify checks "sha512-<hex>" or "sha256-<hex>" (Ignition's format).
func verify(spec string, data []byte) error {
	algo, want, ok := strings.Cut(spec, "-")
	var h hash.Hash
	switch {
	case !ok:
		return fmt.Errorf("%q: write sha512-<hex> or sha256-<hex>", spec)
	case algo == "sha512":
		h = sha512.New()
	case algo == "sha256":
		h = sha256.New()
	default:
		return fmt.Errorf("%q: hash %s is not supported: use sha512 or sha256", spec, algo)
	}
	h.Write(data)
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(want) {
		return fmt.Errorf("content has %s %s, the config expects %s", algo, got, want)
	}
	return nil
}

// dataURL decodes an RFC 2397 data URL.
func dataURL(s string) ([]byte, error) {
	meta, payload, ok := strings.Cut(strings.TrimPrefix(s, "data:"), ",")
	if !ok {
		return nil, errors.New("data URL without ','")
	}
	if strings.HasSuffix(meta, ";base64") {
		payload, err := url.PathUnescape(payload)
		if err != nil {
			return nil, err
		}
		return base64.StdEncoding.DecodeString(payload)
	}
	v, err := url.PathUnescape(payload)
	return []byte(v), err
}

type problems []Problem

func (ps problems) Error() string {
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.Error()
	}
	return strings.Join(msgs, "\n")
}
