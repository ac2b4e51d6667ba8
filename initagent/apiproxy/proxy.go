package apiproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Run listens on every frontend and proxies until ctx is cancelled. It then
// closes the listeners, waits up to ShutdownGrace for open connections to
// end, closes the rest and returns once every goroutine it started ended.
// It fails if a frontend cannot be bound; then it may be called again.
// Otherwise Run can be called once.
func (p *Proxy) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return errors.New("apiproxy: Run called twice")
	}
	p.started = true
	p.mu.Unlock()

	var lns []*net.TCPListener
	for _, f := range p.fronts {
		ln, err := p.listen(ctx, f.addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			p.mu.Lock()
			p.started = false // the caller may retry
			p.mu.Unlock()
			return err
		}
		lns = append(lns, ln)
		f.listening.Store(true)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	p.mu.Lock()
	p.runCtx = runCtx
	for _, b := range p.backends {
		p.startCheckLocked(b)
	}
	if p.lateOpts {
		p.wg.Go(func() { p.lateSockopts(runCtx) })
	}
	p.mu.Unlock()
	p.log.Info("api proxy running", "frontends", p.cfg.Frontends, "backends", len(*p.all.Load()))

	dispatchCtx, stopDispatch := context.WithCancel(context.Background())
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		p.dispatch(dispatchCtx)
	}()
	acceptDone := make(chan struct{}, len(lns))
	for i, ln := range lns {
		f := p.fronts[i]
		go func() {
			defer func() { acceptDone <- struct{}{} }()
			p.acceptLoop(runCtx, f, ln)
		}()
	}

	<-ctx.Done()
	for i, ln := range lns {
		ln.Close()
		p.fronts[i].listening.Store(false)
	}
	for range lns {
		<-acceptDone
	}
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	cancel() // stops checks, drains and connects in progress

	open := make(chan struct{})
	go func() {
		p.connWG.Wait()
		close(open)
	}()
	grace := time.NewTimer(p.cfg.ShutdownGrace)
	select {
	case <-open:
	case <-grace.C:
		n := p.closeConns(func(*proxyConn) bool { return true })
		p.log.Info("shutdown grace passed, closed connections", "connections", n)
		<-open
	}
	grace.Stop()
	close(p.jobs) // nothing sends any more: the idle workers end
	p.workers.Wait()
	p.wg.Wait()
	p.pipes.close()
	stopDispatch()
	<-dispatched
	p.log.Info("api proxy stopped")
	return nil
}

// listen binds addr with IP_FREEBIND, so a VIP can be bound before this node
// holds it, and sets the keepalive and user timeout options on the listening
// socket: Linux copies them to every accepted socket (inet_csk_clone_lock),
// which saves four setsockopt calls per connection.
func (p *Proxy) listen(ctx context.Context, addr string) (*net.TCPListener, error) {
	ap := netip.MustParseAddrPort(addr)
	network := "tcp4"
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		network = "tcp6"
	}
	lc := net.ListenConfig{
		KeepAlive: -1, // set on the listening socket instead
		Control: func(_, _ string, rc syscall.RawConn) error {
			return p.sockopts(rc, network, true)
		},
	}
	ln, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("apiproxy: listen on frontend %s: %w", addr, err)
	}
	return ln.(*net.TCPListener), nil
}

func (p *Proxy) sockopts(rc syscall.RawConn, network string, freebind bool) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		set := func(level, opt, v int, name string) {
			if serr == nil {
				if err := unix.SetsockoptInt(int(fd), level, opt, v); err != nil {
					serr = fmt.Errorf("setsockopt %s: %w", name, err)
				}
			}
		}
		if freebind {
			if network == "tcp6" {
				set(unix.SOL_IPV6, unix.IPV6_FREEBIND, 1, "IPV6_FREEBIND")
			} else {
				set(unix.SOL_IP, unix.IP_FREEBIND, 1, "IP_FREEBIND")
			}
		}
		if ka := p.cfg.KeepAlive; ka > 0 {
			set(unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE")
			set(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(ka/time.Second), "TCP_KEEPIDLE")
			set(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(ka/time.Second), "TCP_KEEPINTVL")
			if p.cfg.UserTimeout <= 0 {
				// With TCP_USER_TIMEOUT set, it decides when unanswered
				// probes kill the connection (tcp(7)), not the count.
				set(unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3, "TCP_KEEPCNT")
			}
		}
		if ut := p.cfg.UserTimeout; ut > 0 {
			set(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(ut/time.Millisecond), "TCP_USER_TIMEOUT")
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func (p *Proxy) acceptLoop(ctx context.Context, f *frontend, ln *net.TCPListener) {
	var delay time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed", "frontend", f.addr, "err", err, "retry_in", delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		if p.active.Add(1) > int64(p.cfg.MaxConns) {
			p.active.Add(-1)
			f.refused.Add(1)
			_ = c.SetLinger(0) // RST: the client learns at once
			c.Close()
			continue
		}
		f.accepted.Add(1)
		p.connWG.Add(1)
		p.spawn(ctx, job{f: f, c: c})
	}
}

// maxIdleWorkers is how many goroutines wait for the next connection
// after theirs ended. A new goroutine grows its stack for the dial path and
// again for the relay, which cost 7% of the CPU time per connection.
const maxIdleWorkers = 128

// job is a new client connection c on f to serve, or with pc, the client
// to server direction of pc to relay.
type job struct {
	f  *frontend
	c  *net.TCPConn
	pc *proxyConn
}

// spawn runs j on an idle worker goroutine, or a new one.
func (p *Proxy) spawn(ctx context.Context, j job) {
	select {
	case p.jobs <- j:
	default:
		p.workers.Add(1)
		go p.work(ctx, j)
	}
}

func (p *Proxy) work(ctx context.Context, j job) {
	defer p.workers.Done()
	for {
		if j.pc != nil {
			p.relayToServer(j.pc)
		} else {
			p.serve(ctx, j.f, j.c)
		}
		if p.idleWorkers.Add(1) > maxIdleWorkers {
			p.idleWorkers.Add(-1)
			return
		}
		var ok bool
		j, ok = <-p.jobs
		p.idleWorkers.Add(-1)
		if !ok {
			return
		}
	}
}

type proxyConn struct {
	client *net.TCPConn
	server conn
	b      *backend
	halves atomic.Int32 // directions still copying
}

// connDone ends the accounting of one accepted connection.
func (p *Proxy) connDone() {
	p.active.Add(-1)
	p.connWG.Done()
}

// serve connects c to a backend, trying the others when a connect fails.
func (p *Proxy) serve(ctx context.Context, f *frontend, c *net.TCPConn) {
	var tried []*backend
	for {
		b := p.pick(tried)
		if b == nil {
			f.failed.Add(1)
			p.log.Debug("no backend reachable", "frontend", f.addr, "client", c.RemoteAddr(), "tried", len(tried))
			_ = c.SetLinger(0)
			c.Close()
			p.connDone()
			return
		}
		tried = append(tried, b)
		s, err := p.dial(ctx, b)
		if err != nil {
			if ctx.Err() != nil {
				c.Close()
				p.connDone()
				return
			}
			p.markDown(b, err)
			continue
		}
		pc := &proxyConn{client: c, server: s, b: b}
		if !p.register(pc) {
			s.Close()
			continue
		}
		p.pipe(ctx, pc)
		return
	}
}

// pick chooses a backend that is up and not tried yet; when none is up it
// tries every backend in the set, since a failed check does not prove that
// the apiserver cannot serve this connection.
func (p *Proxy) pick(tried []*backend) *backend {
	cands := *p.up.Load()
	if len(cands) == 0 {
		cands = *p.all.Load()
	}
	n := len(cands)
	if n == 0 {
		return nil
	}
	start := int(p.rr.Add(1) % uint64(n))
	var best *backend
	var bestActive int64
	for i := range n {
		b := cands[(start+i)%n]
		if isTried(tried, b) {
			continue
		}
		if !p.leastConn {
			return b
		}
		if a := b.active.Load(); best == nil || a < bestActive {
			best, bestActive = b, a
		}
	}
	return best
}

func isTried(tried []*backend, b *backend) bool {
	for _, t := range tried {
		if t == b {
			return true
		}
	}
	return false
}

func (p *Proxy) register(pc *proxyConn) bool {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if pc.b.gone {
		return false
	}
	p.conns[pc] = struct{}{}
	if p.lateOpts {
		p.fresh = append(p.fresh, pc)
	}
	pc.b.active.Add(1)
	pc.b.total.Add(1)
	return true
}

func (p *Proxy) unregister(pc *proxyConn) {
	p.connMu.Lock()
	delete(p.conns, pc)
	idle := pc.b.active.Add(-1) == 0
	p.connMu.Unlock()
	if idle {
		select {
		case pc.b.idle <- struct{}{}:
		default:
		}
	}
}

// closeConns closes the connections match selects and returns how many.
func (p *Proxy) closeConns(match func(*proxyConn) bool) int {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	n := 0
	for pc := range p.conns {
		if match(pc) {
			pc.client.Close()
			pc.server.Close()
			n++
		}
	}
	return n
}

// lateSockopts sets keepalive and TCP_USER_TIMEOUT on the backend side of
// the connections that are still open one to two seconds after they were
// made. Most connections end sooner and never need them (keepalive probes
// start after KeepAlive of silence, 15s, and the user timeout counts from
// the first unacknowledged retransmission whenever it is set), which saves
// four system calls per connection. The client side inherits them from the
// listening socket.
func (p *Proxy) lateSockopts(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var prev, spare []*proxyConn
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.connMu.Lock()
		due := prev
		prev, p.fresh = p.fresh, spare[:0]
		p.connMu.Unlock()
		for i, pc := range due {
			if pc.halves.Load() > 0 {
				if rc, err := pc.server.SyscallConn(); err == nil {
					// Fails only when the connection was closed meanwhile.
					_ = p.sockopts(rc, "", false)
				}
			}
			due[i] = nil
		}
		spare = due
	}
}

// pipe copies both directions (relay: splice(2) for bulk data). An EOF is
// passed on as a half-close (shutdown SHUT_WR); an error closes both.
func (p *Proxy) pipe(ctx context.Context, pc *proxyConn) {
	pc.halves.Store(2)
	n, done, err := p.pipes.relayFirst(pc.server, pc.client)
	pc.b.bytesOut.Add(uint64(n))
	if done {
		p.halfDone(pc, pc.server, err)
	} else {
		p.spawn(ctx, job{pc: pc})
	}
	n, err = p.pipes.relay(pc.client, pc.server)
	pc.b.bytesIn.Add(uint64(n))
	p.halfDone(pc, pc.client, err)
}

func (p *Proxy) relayToServer(pc *proxyConn) {
	n, err := p.pipes.relay(pc.server, pc.client)
	pc.b.bytesOut.Add(uint64(n))
	p.halfDone(pc, pc.server, err)
}

// halfDone is called when the direction towards dst ended, with err nil
// at EOF; the last one closes the connection, so neither goroutine waits
// for the other. An EOF is passed on with shutdown(SHUT_WR) while the other
// direction still runs; after it, close sends the FIN.
func (p *Proxy) halfDone(pc *proxyConn, dst conn, err error) {
	if err != nil || (pc.halves.Load() > 1 && dst.CloseWrite() != nil) {
		pc.client.Close()
		pc.server.Close()
	}
	if pc.halves.Add(-1) > 0 {
		return
	}
	pc.client.Close()
	pc.server.Close()
	p.unregister(pc)
	p.connDone()
}
