package apiproxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"
)

type backend struct {
	addr string
	host string
	ap   netip.AddrPort // addr when it is an IP address without a zone

	// Guarded by Proxy.mu.
	up         bool
	draining   bool
	oks, fails int // consecutive check results
	last       CheckResult
	stopCheck  context.CancelFunc

	gone   bool // guarded by Proxy.connMu: drained, accepts no connections
	idle   chan struct{}
	active atomic.Int64

	total, connectFails, checksOK, checksFailed, bytesIn, bytesOut atomic.Uint64
}

func newBackend(addr string) *backend {
	host, _, _ := net.SplitHostPort(addr)
	b := &backend{addr: addr, host: host, idle: make(chan struct{}, 1)}
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Zone() == "" {
		b.ap = ap
	}
	return b
}

// startCheckLocked starts b's health checks if Run is running; Run starts
// them for the backends set before it.
func (p *Proxy) startCheckLocked(b *backend) {
	if p.runCtx == nil || p.stopping {
		return
	}
	ctx, cancel := context.WithCancel(p.runCtx)
	b.stopCheck = cancel
	p.wg.Go(func() { p.checkLoop(ctx, b) })
}

func (p *Proxy) checkLoop(ctx context.Context, b *backend) {
	t := time.NewTicker(p.cfg.CheckInterval)
	defer t.Stop()
	for {
		res := p.check(ctx, b)
		if ctx.Err() != nil {
			return
		}
		p.recordCheck(b, res)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check runs one HTTPS GET /readyz on a fresh connection, as the apiserver
// sees a new client.
func (p *Proxy) check(ctx context.Context, b *backend) CheckResult {
	start := time.Now()
	res := CheckResult{Time: start}
	err := p.readyz(ctx, b)
	res.Latency = time.Since(start)
	res.OK = err == nil
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

func (p *Proxy) readyz(ctx context.Context, b *backend) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CheckTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: -1}
	raw, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return err
	}
	defer raw.Close()
	deadline, _ := ctx.Deadline()
	_ = raw.SetDeadline(deadline)
	conn := tls.Client(raw, p.tlsConfig(b))
	if err := conn.HandshakeContext(ctx); err != nil {
		return err
	}
	req := "GET /readyz HTTP/1.1\r\nHost: " + b.addr + "\r\nUser-Agent: ballast-apiproxy\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /readyz: %s", resp.Status)
	}
	return nil
}

var errPin = errors.New("server public key matches no PinnedSPKI")

// checkCurves leaves out the post-quantum hybrid key exchange: a check
// carries no secret, and ML-KEM key generation every second per backend
// is the largest CPU cost of a check.
var checkCurves = []tls.CurveID{tls.X25519, tls.CurveP256}

func (p *Proxy) tlsConfig(b *backend) *tls.Config {
	if roots := p.roots.Load(); roots != nil {
		name := p.cfg.CheckServerName
		if name == "" {
			name = b.host
		}
		return &tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12, CurvePreferences: checkCurves}
	}
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, CurvePreferences: checkCurves}
	if len(p.pins) > 0 {
		cfg.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			if len(rawCerts) == 0 {
				return errPin
			}
			leaf, err := x509.ParseCertificate(rawCerts[0])
			if err != nil {
				return err
			}
			sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
			for _, pin := range p.pins {
				if pin == sum {
					return nil
				}
			}
			return fmt.Errorf("%w (got %x)", errPin, sum)
		}
	}
	return cfg
}

func (p *Proxy) recordCheck(b *backend, res CheckResult) {
	if res.OK {
		b.checksOK.Add(1)
	} else {
		b.checksFailed.Add(1)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b.last = res
	if b.draining {
		return
	}
	if res.OK {
		b.oks, b.fails = b.oks+1, 0
		if !b.up && b.oks >= p.cfg.Rise {
			b.up = true
			p.log.Info("backend up", "backend", b.addr, "latency", res.Latency)
			p.recomputeLocked()
		}
		return
	}
	b.oks, b.fails = 0, b.fails+1
	if b.up && b.fails >= p.cfg.Fall {
		b.up = false
		p.log.Warn("backend down", "backend", b.addr, "reason", "health check", "err", res.Error)
		p.recomputeLocked()
	} else if b.fails == 1 {
		p.log.Info("backend check failed", "backend", b.addr, "err", res.Error)
	}
}

// markDown is the passive check: a failed connect marks the backend down
// at once; the active checks bring it back.
func (p *Proxy) markDown(b *backend, err error) {
	b.connectFails.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	b.oks = 0
	if b.up && !b.draining {
		b.up = false
		b.fails = p.cfg.Fall
		p.log.Warn("backend down", "backend", b.addr, "reason", "connect failed", "err", err)
		p.recomputeLocked()
	}
}

// drainLocked takes b out of the set; its connections stay until they end
// or DrainTimeout passes.
func (p *Proxy) drainLocked(b *backend) {
	b.draining = true
	b.up = false
	if b.stopCheck != nil {
		b.stopCheck()
	}
	p.log.Info("backend removed, draining", "backend", b.addr, "connections", b.active.Load())
	if p.runCtx == nil || p.stopping {
		p.finishDrain(b)
		return
	}
	p.draining[b] = struct{}{}
	ctx := p.runCtx
	p.wg.Go(func() { p.drain(ctx, b) })
}

func (p *Proxy) drain(ctx context.Context, b *backend) {
	timeout := time.NewTimer(p.cfg.DrainTimeout)
	defer timeout.Stop()
	for !p.finishDrain(b) {
		select {
		case <-ctx.Done():
			return // Run closes every connection
		case <-b.idle:
		case <-timeout.C:
			n := p.closeConns(b)
			p.log.Warn("drain timeout, closed connections", "backend", b.addr, "connections", n)
		}
	}
	p.mu.Lock()
	delete(p.draining, b)
	p.mu.Unlock()
	p.log.Info("backend drained", "backend", b.addr)
}

// finishDrain marks b gone if it has no connections left. Connections
// register under connMu, so none can slip in after.
func (p *Proxy) finishDrain(b *backend) bool {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if b.active.Load() > 0 {
		return false
	}
	b.gone = true
	return true
}
