package apiproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A loop serves connections from its own epoll instance, as HAProxy's
// threads do, instead of two goroutines per connection parked in the
// runtime's poller: that costs a goroutine hand-off per message, an
// epoll_ctl to add and one to remove each socket, and the net package's
// getsockname and setsockopt per accepted socket, which made the proxy
// accept 15% fewer connections per second than HAProxy
// (tools/bench/apiproxy). Run starts loopCount loops; each one
// accepts from every frontend (EPOLLEXCLUSIVE wakes one of them) and keeps
// the connections it accepted. Everything about a connection happens on its
// loop's goroutine; other goroutines post functions to it (post, do).
type loop struct {
	p     *Proxy
	epfd  int
	wake  int // eventfd: posted functions wait
	lns   []listener
	conns []*proxyConn // by socket descriptor, client and server sides

	connecting   []*proxyConn // maybe waiting for a connect to finish
	acceptDelay  time.Duration
	acceptResume time.Time // accepting paused until then (out of descriptors)
	exit         bool

	mu     sync.Mutex
	cmds   []func()
	exited bool
}

type listener struct {
	fd int
	f  *frontend
}

// proxyConn is a client connection and its backend connection. Only its
// loop touches the fields below b.
type proxyConn struct {
	l *loop
	f *frontend
	b *backend

	cfd, sfd   int // -1 once closed or before the connect
	tried      []*backend
	connecting bool // the backend has not accepted yet: a failure tries the next
	deadline   time.Time
	registered bool
	closed     bool
	chup, shup bool // the client or server socket reported a hang-up or error
	up, down   flow // client to server, server to client
}

// flow is one direction of a connection. Messages go through a pooled
// buffer, as HAProxy's splice-auto does: for a request of a few hundred
// bytes, read(2) and write(2) cost less than splicing into a pipe and out
// of it. A read that fills the buffer means bulk data: the direction
// switches to splice(2) for good.
type flow struct {
	buf      *[]byte // taken only while a message waits for dst
	off, n   int
	ready    bool // src may have data: it signalled since the last short read
	splicing bool
	pipe     pipe
	inPipe   int
	fin      bool   // src ended after the data in buf
	eof      bool   // src ended and everything was passed on
	bytes    uint64 // passed on, not yet added to the backend's counter
}

func (f *flow) pending() bool { return f.off < f.n || f.inPipe > 0 }

const (
	connEvents   = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
	hupEvents    = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR
	acceptBatch  = 64
	maxEvents    = 256
	maxAcceptGap = time.Second
)

func newLoop(p *Proxy, lns []listener) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("apiproxy: epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("apiproxy: eventfd: %w", err)
	}
	l := &loop{p: p, epfd: epfd, wake: wake, lns: lns}
	if err := l.add(wake, unix.EPOLLIN); err != nil {
		l.closeFDs()
		return nil, err
	}
	if err := l.addListeners(); err != nil {
		l.closeFDs()
		return nil, err
	}
	return l, nil
}

func (l *loop) closeFDs() {
	unix.Close(l.wake)
	unix.Close(l.epfd)
}

func (l *loop) add(fd int, events uint32) error {
	if err := epollAdd(l.epfd, fd, events); err != nil {
		return fmt.Errorf("apiproxy: epoll_ctl add: %w", err)
	}
	return nil
}

func (l *loop) addListeners() error {
	for _, ln := range l.lns {
		if err := l.add(ln.fd, unix.EPOLLIN|unix.EPOLLEXCLUSIVE); err != nil {
			return err
		}
	}
	return nil
}

func (l *loop) removeListeners() {
	for _, ln := range l.lns {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
	}
}

// stopAccepting takes the listeners out for good, before Run closes them.
func (l *loop) stopAccepting() {
	if l.acceptResume.IsZero() {
		l.removeListeners()
	}
	l.lns = nil
	l.acceptResume = time.Time{}
}

// post runs fn on the loop; false if the loop has ended.
func (l *loop) post(fn func()) bool {
	l.mu.Lock()
	if l.exited {
		l.mu.Unlock()
		return false
	}
	first := len(l.cmds) == 0
	l.cmds = append(l.cmds, fn)
	l.mu.Unlock()
	if first {
		one := [8]byte{1}
		_, _ = unix.Write(l.wake, one[:])
	}
	return true
}

// do runs fn on the loop and waits for it; false if the loop has ended.
func (l *loop) do(fn func()) bool {
	done := make(chan struct{})
	if !l.post(func() { fn(); close(done) }) {
		return false
	}
	<-done
	return true
}

func (l *loop) runPosted() {
	var buf [8]byte
	_, _ = unix.Read(l.wake, buf[:])
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	for _, fn := range cmds {
		fn()
	}
}

// run serves until a posted function sets exit. Functions posted after it
// ended still run, so that whatever they carry (a dialed socket) is freed.
func (l *loop) run() {
	events := make([]unix.EpollEvent, maxEvents)
	for !l.exit {
		// Under load events are waiting: take them without blocking, and
		// block (a scheduler-aware syscall) only when there are none.
		n := epollPoll(l.epfd, events)
		var err error
		if n == 0 {
			n, err = unix.EpollWait(l.epfd, events, l.timeout())
		}
		if err != nil && err != unix.EINTR {
			l.p.log.Error("epoll_wait failed", "err", err)
			time.Sleep(10 * time.Millisecond)
		}
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			switch {
			case fd == l.wake:
				l.runPosted()
			case fd < len(l.conns) && l.conns[fd] != nil:
				l.event(l.conns[fd], fd, ev.Events)
			default:
				for _, ln := range l.lns {
					if ln.fd == fd {
						l.accept(ln)
					}
				}
			}
		}
		l.expire()
	}
	l.mu.Lock()
	l.exited = true
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	for _, fn := range cmds {
		fn()
	}
	l.closeFDs()
}

// timeout is how long epoll_wait may wait: until the next connect times
// out or accepting resumes.
func (l *loop) timeout() int {
	var next time.Time
	for _, pc := range l.connecting {
		if next.IsZero() || pc.deadline.Before(next) {
			next = pc.deadline
		}
	}
	if !l.acceptResume.IsZero() && (next.IsZero() || l.acceptResume.Before(next)) {
		next = l.acceptResume
	}
	if next.IsZero() {
		return -1
	}
	return int(max(time.Until(next), 0)/time.Millisecond) + 1
}

// expire fails the connects that took longer than DialTimeout and resumes
// accepting after a pause.
func (l *loop) expire() {
	if len(l.connecting) == 0 && l.acceptResume.IsZero() {
		return
	}
	now := time.Now()
	if !l.acceptResume.IsZero() && !now.Before(l.acceptResume) {
		l.acceptResume = time.Time{}
		if err := l.addListeners(); err != nil {
			l.p.log.Error("resume accepting", "err", err)
		}
	}
	keep := l.connecting[:0]
	var late []*proxyConn
	for _, pc := range l.connecting {
		switch {
		case pc.closed || !pc.connecting:
		case !now.Before(pc.deadline):
			late = append(late, pc)
		default:
			keep = append(keep, pc)
		}
	}
	clear(l.connecting[len(keep):])
	l.connecting = keep
	for _, pc := range late {
		// A retry meanwhile has a later deadline (and an entry of its own).
		if !pc.closed && pc.connecting && pc.sfd >= 0 && !now.Before(pc.deadline) {
			l.connectFailed(pc, fmt.Errorf("i/o timeout after %v", l.p.cfg.DialTimeout))
		}
	}
}

func (l *loop) track(fd int, pc *proxyConn) {
	for fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*proxyConn, len(l.conns)+64)...)
	}
	l.conns[fd] = pc
}

func (l *loop) accept(ln listener) {
	p := l.p
	for range acceptBatch {
		fd, errno := acceptConn(ln.fd)
		if errno != 0 {
			switch errno {
			case unix.EAGAIN:
				return
			case unix.EINTR, unix.ECONNABORTED:
				continue
			}
			// Out of file descriptors and the like: back off as net/http does.
			l.acceptDelay = min(max(2*l.acceptDelay, 5*time.Millisecond), maxAcceptGap)
			p.log.Warn("accept failed", "frontend", ln.f.addr, "err", errno, "retry_in", l.acceptDelay)
			l.removeListeners()
			l.acceptResume = time.Now().Add(l.acceptDelay)
			return
		}
		l.acceptDelay = 0
		if p.active.Add(1) > int64(p.cfg.MaxConns) {
			p.active.Add(-1)
			ln.f.refused.Add(1)
			resetClose(fd) // the client learns at once
			continue
		}
		ln.f.accepted.Add(1)
		p.connWG.Add(1)
		if err := l.add(fd, connEvents); err != nil {
			p.log.Warn("dropping connection", "frontend", ln.f.addr, "err", err)
			unix.Close(fd)
			p.connDone()
			continue
		}
		pc := &proxyConn{l: l, f: ln.f, cfd: fd, sfd: -1}
		pc.up.ready = true // the client usually sent its first message already
		l.track(fd, pc)
		l.dial(pc)
		if !pc.closed && pc.sfd >= 0 {
			l.advance(pc, false)
		}
	}
}

// resetClose closes a socket with an RST.
func resetClose(fd int) {
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	unix.Close(fd)
}

// dial connects pc to a backend it has not tried yet; with none left, it
// closes pc.
func (l *loop) dial(pc *proxyConn) {
	p := l.p
	for {
		b := p.pick(pc.tried)
		if b == nil {
			pc.f.failed.Add(1)
			p.log.Debug("no backend reachable", "frontend", pc.f.addr, "tried", len(pc.tried))
			_ = unix.SetsockoptLinger(pc.cfd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			l.close(pc)
			return
		}
		pc.tried = append(pc.tried, b)
		pc.b = b
		if !p.register(pc) {
			continue // drained meanwhile
		}
		pc.connecting = true
		if !b.ap.IsValid() {
			l.dialHost(pc, b)
			return
		}
		fd, err := connectIP(b.ap, p.localPorts.contains(b.ap.Port()))
		if err != nil {
			p.unregister(pc)
			p.markDown(b, dialErr(b.ap, err))
			continue
		}
		if err := l.add(fd, connEvents); err != nil {
			unix.Close(fd)
			p.unregister(pc)
			l.close(pc)
			return
		}
		pc.sfd = fd
		l.track(fd, pc)
		pc.deadline = time.Now().Add(p.cfg.DialTimeout)
		l.connecting = append(l.connecting, pc)
		return
	}
}

// dialHost connects to a backend given by host name with net.Dialer on
// another goroutine, which hands the connected socket to the loop.
func (l *loop) dialHost(pc *proxyConn, b *backend) {
	p := l.p
	p.mu.Lock()
	ctx := p.runCtx
	p.mu.Unlock()
	p.dialers.Go(func() {
		fd, err := p.dialName(ctx, b)
		if !l.post(func() { l.hostDialed(pc, b, fd, err) }) && fd >= 0 {
			unix.Close(fd)
		}
	})
}

func (l *loop) hostDialed(pc *proxyConn, b *backend, fd int, err error) {
	if pc.closed || l.exit {
		if fd >= 0 {
			unix.Close(fd)
		}
		if !pc.closed {
			l.close(pc)
		}
		return
	}
	if err != nil {
		l.p.unregister(pc)
		pc.registered = false
		if l.p.stoppingNow() {
			l.close(pc)
			return
		}
		l.p.markDown(b, err)
		l.dial(pc)
		if !pc.closed && pc.sfd >= 0 {
			l.advance(pc, false)
		}
		return
	}
	if err := l.add(fd, connEvents); err != nil {
		unix.Close(fd)
		l.close(pc)
		return
	}
	pc.sfd = fd
	l.track(fd, pc)
	l.connected(pc)
}

// connectIP starts a non-blocking connect to ap. On loopback it is done
// when connect(2) returns; elsewhere the first write or EPOLLOUT tells.
// Like net.Dialer, it tries again when the kernel found no free local port
// or connected the socket to itself (checked when mayHitItself: ap's port
// is in the local port range).
func connectIP(ap netip.AddrPort, mayHitItself bool) (int, error) {
	for i := 0; ; i++ {
		fd, err := connectOnce(ap, mayHitItself)
		if i < 2 && (err == errSelfConnect || err == unix.EADDRNOTAVAIL) {
			continue
		}
		if err == errSelfConnect {
			err = unix.ECONNREFUSED // nothing listens there
		}
		return fd, err
	}
}

func connectOnce(ap netip.AddrPort, mayHitItself bool) (int, error) {
	fd, err := startConnect(ap)
	if err != nil {
		return -1, err
	}
	if mayHitItself && connectedToItself(fd, ap) {
		// Reset, not FIN: a TIME_WAIT would keep the port from the retry.
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		closeFD(fd)
		return -1, errSelfConnect
	}
	return fd, nil
}

// connectedToItself: a connect to a local port that nothing listens on can
// pick that same port as the local one and connect the socket to itself
// (TCP simultaneous open). syscall.Getsockname, unlike x/sys/unix's, does
// not also ask for the socket's protocol.
func connectedToItself(fd int, ap netip.AddrPort) bool {
	la, err := syscall.Getsockname(fd)
	if err != nil {
		return false
	}
	switch la := la.(type) {
	case *syscall.SockaddrInet4:
		return la.Port == int(ap.Port()) && la.Addr == ap.Addr().As4()
	case *syscall.SockaddrInet6:
		return la.Port == int(ap.Port()) && la.Addr == ap.Addr().As16()
	}
	return false
}

var errSelfConnect = errors.New("connected to itself")

// event handles epoll events ev on fd, one of pc's sockets.
func (l *loop) event(pc *proxyConn, fd int, ev uint32) {
	hup := ev&hupEvents != 0
	readable := ev&(unix.EPOLLIN|hupEvents) != 0
	writable := ev&(unix.EPOLLOUT|hupEvents) != 0
	if fd == pc.cfd {
		pc.chup = pc.chup || hup
		pc.up.ready = pc.up.ready || readable
		if pc.connecting {
			l.advance(pc, false)
			return
		}
		if readable && !l.move(pc, &pc.up, pc.cfd, pc.sfd, pc.chup) {
			l.close(pc)
			return
		}
		if writable && pc.down.pending() && !l.move(pc, &pc.down, pc.sfd, pc.cfd, pc.shup) {
			l.close(pc)
		}
		return
	}
	pc.shup = pc.shup || hup
	pc.down.ready = pc.down.ready || readable
	if pc.connecting {
		if writable {
			l.advance(pc, true)
		}
		return
	}
	if readable && !l.move(pc, &pc.down, pc.sfd, pc.cfd, pc.shup) {
		l.close(pc)
		return
	}
	if writable && pc.up.pending() && !l.move(pc, &pc.up, pc.cfd, pc.sfd, pc.chup) {
		l.close(pc)
	}
}

// advance moves a connection whose connect has not been confirmed: it
// reads the client's first message and sends it, which confirms the
// connect (or fails it: the next backend gets the message). Without a
// message, outcome asks the socket once EPOLLOUT came.
func (l *loop) advance(pc *proxyConn, outcome bool) {
	f := &pc.up
	if f.n == 0 && !f.eof && f.ready {
		f.buf = copyBufs.Get().(*[]byte)
		n, err := recv(pc.cfd, *f.buf)
		switch {
		case err == unix.EAGAIN:
			f.release()
			f.ready = false
		case err != nil:
			l.close(pc)
			return
		case n == 0:
			f.release()
			f.eof = true
		default:
			f.off, f.n = 0, n
			if n < len(*f.buf) && !pc.chup {
				f.ready = false
			}
		}
	}
	if pc.sfd < 0 {
		return // a host name being dialed
	}
	if f.off < f.n {
		m, err := send(pc.sfd, (*f.buf)[f.off:f.n], false)
		switch {
		case err == unix.EAGAIN:
			return // EPOLLOUT comes once connected
		case err != nil:
			l.connectFailed(pc, err)
			return
		}
		f.off += m
		f.bytes += uint64(m)
		l.connected(pc)
		return
	}
	if !outcome {
		return
	}
	soerr, err := unix.GetsockoptInt(pc.sfd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soerr != 0 {
		err = syscall.Errno(soerr)
	}
	if err != nil {
		l.connectFailed(pc, err)
		return
	}
	l.connected(pc)
}

// connectFailed marks pc's backend down and tries the next one, with the
// client's message still in pc.up.
func (l *loop) connectFailed(pc *proxyConn, err error) {
	l.conns[pc.sfd] = nil
	closeFD(pc.sfd)
	pc.sfd = -1
	l.p.unregister(pc)
	pc.registered = false
	if pc.b.ap.IsValid() {
		err = dialErr(pc.b.ap, err)
	}
	l.p.markDown(pc.b, err)
	l.dial(pc)
	if !pc.closed && pc.sfd >= 0 {
		l.advance(pc, false)
	}
}

// connected starts relaying once the backend accepted pc.
func (l *loop) connected(pc *proxyConn) {
	pc.connecting = false
	l.p.connected(pc)
	if pc.up.eof && !pc.up.pending() {
		if !l.ended(pc, &pc.up, pc.sfd) {
			l.close(pc)
		}
		return
	}
	if !l.move(pc, &pc.up, pc.cfd, pc.sfd, pc.chup) {
		l.close(pc)
		return
	}
	if pc.down.ready && !l.move(pc, &pc.down, pc.sfd, pc.cfd, pc.shup) {
		l.close(pc)
	}
}

func (f *flow) release() {
	if f.buf != nil {
		copyBufs.Put(f.buf)
		f.buf = nil
	}
	f.off, f.n = 0, 0
}

// move passes f on from src to dst until src has nothing more (EAGAIN, or
// a short read without a hang-up: the next data brings another edge) or dst
// is full. It returns false when the connection must be closed: an error,
// or both directions ended.
func (l *loop) move(pc *proxyConn, f *flow, src, dst int, hup bool) bool {
	for {
		if f.splicing {
			return l.splice(pc, f, src, dst)
		}
		for f.off < f.n {
			m, err := send(dst, (*f.buf)[f.off:f.n], f.fin)
			if err == unix.EAGAIN {
				return true
			}
			if err != nil {
				return false
			}
			f.off += m
			f.bytes += uint64(m)
		}
		full := f.buf != nil && f.n == len(*f.buf)
		f.release()
		if f.fin {
			f.fin, f.eof = false, true
			return l.ended(pc, f, dst)
		}
		if full {
			// Bulk data: splice from now on, unless out of descriptors.
			if p, err := l.p.pipes.get(); err == nil {
				f.pipe, f.splicing = p, true
				continue
			}
		}
		if f.eof || !f.ready && !hup {
			return true
		}
		f.buf = copyBufs.Get().(*[]byte)
		n, err := recv(src, *f.buf)
		switch {
		case err == unix.EAGAIN:
			f.release()
			f.ready = false
			return true
		case err != nil:
			f.release()
			return false
		case n == 0:
			f.release()
			f.eof = true
			return l.ended(pc, f, dst)
		}
		if n < len(*f.buf) && hup {
			// The peer's FIN came already: if it follows this data, the
			// data and ours leave in one segment.
			m, err := recv(src, (*f.buf)[n:])
			switch {
			case err == unix.EAGAIN:
			case err != nil:
				f.release()
				return false
			case m == 0:
				f.fin = true
			default:
				n += m
			}
		}
		f.n = n
		if n < len(*f.buf) && !hup {
			f.ready = false
		}
	}
}

func (l *loop) splice(pc *proxyConn, f *flow, src, dst int) bool {
	const flags = unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE
	for {
		for f.inPipe > 0 {
			m, err := unix.Splice(f.pipe.r, nil, dst, nil, f.inPipe, flags)
			if err == unix.EAGAIN {
				return true
			}
			if err != nil {
				return false
			}
			f.inPipe -= int(m)
			f.bytes += uint64(m)
		}
		if f.eof {
			return true
		}
		m, err := unix.Splice(src, nil, f.pipe.w, nil, pipeChunk, flags)
		switch {
		case err == unix.EAGAIN:
			f.ready = false
			return true
		case err != nil:
			return false
		case m == 0:
			f.eof = true
			return l.ended(pc, f, dst)
		}
		f.inPipe = int(m)
	}
}

// ended passes on the end of f's source: with the other direction still
// open as a half-close (shutdown SHUT_WR); otherwise the connection closes,
// which sends the FIN.
func (l *loop) ended(pc *proxyConn, f *flow, dst int) bool {
	other := &pc.up
	if f == &pc.up {
		other = &pc.down
	}
	if other.eof {
		return false
	}
	return shutdownWrite(dst) == nil
}

// close closes both sockets of pc and ends its accounting.
func (l *loop) close(pc *proxyConn) {
	if pc.closed {
		return
	}
	pc.closed = true
	for _, fd := range []int{pc.cfd, pc.sfd} {
		if fd >= 0 {
			l.conns[fd] = nil
			closeFD(fd) // also leaves the epoll set
		}
	}
	pc.cfd, pc.sfd = -1, -1
	for _, f := range []*flow{&pc.up, &pc.down} {
		f.release()
		if f.splicing {
			l.p.pipes.put(f.pipe, f.inPipe == 0)
			f.splicing = false
		}
	}
	if pc.b != nil {
		pc.b.bytesOut.Add(pc.up.bytes)
		pc.b.bytesIn.Add(pc.down.bytes)
	}
	if pc.registered {
		l.p.unregister(pc)
		pc.registered = false
	}
	l.p.connDone()
}

// closeAll closes every connection of the loop and returns how many.
func (l *loop) closeAll(match func(*proxyConn) bool) int {
	n := 0
	for _, pc := range l.conns {
		if pc != nil && !pc.closed && match(pc) {
			l.close(pc)
			n++
		}
	}
	return n
}
