package apiproxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
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

	loops, lns, err := p.start()
	if err != nil {
		p.mu.Lock()
		p.started = false // the caller may retry
		p.mu.Unlock()
		return err
	}
	for _, f := range p.fronts {
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
	p.log.Info("api proxy running", "frontends", p.cfg.Frontends, "backends", len(*p.all.Load()), "loops", len(loops))

	dispatchCtx, stopDispatch := context.WithCancel(context.Background())
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		p.dispatch(dispatchCtx)
	}()
	var running sync.WaitGroup
	for _, l := range loops {
		running.Go(l.run)
	}

	<-ctx.Done()
	for _, l := range loops {
		l.do(l.stopAccepting)
	}
	for i, ln := range lns {
		unix.Close(ln.fd)
		p.fronts[i].listening.Store(false)
	}
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	cancel() // stops checks, drains and host name dials
	for _, l := range loops {
		l.post(func() { l.closeAll(func(pc *proxyConn) bool { return pc.connecting }) })
	}

	open := make(chan struct{})
	go func() {
		p.connWG.Wait()
		close(open)
	}()
	grace := time.NewTimer(p.cfg.ShutdownGrace)
	select {
	case <-open:
	case <-grace.C:
		n := 0
		for _, l := range loops {
			l.do(func() { n += l.closeAll(func(*proxyConn) bool { return true }) })
		}
		p.log.Info("shutdown grace passed, closed connections", "connections", n)
		<-open
	}
	grace.Stop()
	for _, l := range loops {
		l.post(func() { l.exit = true })
	}
	running.Wait()
	p.dialers.Wait()
	p.wg.Wait()
	p.pipes.close()
	stopDispatch()
	<-dispatched
	p.log.Info("api proxy stopped")
	return nil
}

// start binds every frontend and creates the loops.
func (p *Proxy) start() ([]*loop, []listener, error) {
	var lns []listener
	var loops []*loop
	fail := func(err error) ([]*loop, []listener, error) {
		for _, l := range loops {
			l.closeFDs()
		}
		for _, ln := range lns {
			unix.Close(ln.fd)
		}
		return nil, nil, err
	}
	for _, f := range p.fronts {
		fd, err := p.listen(f.addr)
		if err != nil {
			return fail(err)
		}
		lns = append(lns, listener{fd: fd, f: f})
	}
	for range loopCount() {
		l, err := newLoop(p, lns)
		if err != nil {
			return fail(err)
		}
		loops = append(loops, l)
	}
	return loops, lns, nil
}

// listen binds addr with IP_FREEBIND, so a VIP can be bound before this node
// holds it, and sets TCP_NODELAY, keepalive and the user timeout on the
// listening socket: Linux copies them to every accepted socket
// (sk_clone_lock), which saves those system calls per connection.
func (p *Proxy) listen(addr string) (int, error) {
	ap := netip.MustParseAddrPort(addr)
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if ap.Addr().Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	fail := func(fd int, step string, err error) (int, error) {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("apiproxy: listen on frontend %s: %s: %w", addr, step, err)
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fail(-1, "socket", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail(fd, "setsockopt SO_REUSEADDR", err)
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail(fd, "setsockopt IPV6_V6ONLY", err)
		}
	}
	if err := p.sockopts(fd, family, true); err != nil {
		return fail(fd, "", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail(fd, "bind", err)
	}
	if err := unix.Listen(fd, 65535); err != nil { // capped at net.core.somaxconn
		return fail(fd, "listen", err)
	}
	return fd, nil
}

// sockopts sets the keepalive and user timeout options on fd; on a
// listening socket (family set) also IP_FREEBIND and TCP_NODELAY.
func (p *Proxy) sockopts(fd, family int, listening bool) error {
	var serr error
	set := func(level, opt, v int, name string) {
		if serr == nil {
			if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
				serr = fmt.Errorf("setsockopt %s: %w", name, err)
			}
		}
	}
	if listening {
		if family == unix.AF_INET6 {
			set(unix.SOL_IPV6, unix.IPV6_FREEBIND, 1, "IPV6_FREEBIND")
		} else {
			set(unix.SOL_IP, unix.IP_FREEBIND, 1, "IP_FREEBIND")
		}
		set(unix.IPPROTO_TCP, unix.TCP_NODELAY, 1, "TCP_NODELAY")
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
	return serr
}

// connDone ends the accounting of one accepted connection.
func (p *Proxy) connDone() {
	p.active.Add(-1)
	p.connWG.Done()
}

func (p *Proxy) stoppingNow() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopping
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

// register adds pc to the connections of its backend before the connect;
// false if the backend is gone (drained).
func (p *Proxy) register(pc *proxyConn) bool {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if pc.b.gone {
		return false
	}
	p.conns[pc] = struct{}{}
	pc.b.active.Add(1)
	pc.registered = true
	return true
}

// connected counts pc once its backend accepted it.
func (p *Proxy) connected(pc *proxyConn) {
	pc.b.total.Add(1)
	if p.lateOpts {
		p.connMu.Lock()
		p.fresh = append(p.fresh, pc)
		p.connMu.Unlock()
	}
}

func (p *Proxy) unregister(pc *proxyConn) {
	pc.registered = false
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

// closeConns closes the connections of backend b and returns how many.
func (p *Proxy) closeConns(b *backend) int {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	n := 0
	for pc := range p.conns {
		if pc.b == b {
			l := pc.l
			l.post(func() { l.close(pc) })
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
		byLoop := map[*loop][]*proxyConn{}
		for i, pc := range due {
			byLoop[pc.l] = append(byLoop[pc.l], pc)
			due[i] = nil
		}
		spare = due
		for l, pcs := range byLoop {
			l.post(func() {
				for _, pc := range pcs {
					if !pc.closed && pc.sfd >= 0 {
						// Fails only when the socket broke meanwhile.
						_ = p.sockopts(pc.sfd, 0, false)
					}
				}
			})
		}
	}
}

// loopCount is the number of loops: one per P. One loop for two Ps
// spends less CPU per connection (sysmon leaves a P in epoll_wait alone
// while another is idle), but a single thread accepted 20% fewer
// connections per second and relayed 25% fewer bytes on two cores
// (tools/bench/apiproxy).
func loopCount() int {
	return runtime.GOMAXPROCS(0)
}
