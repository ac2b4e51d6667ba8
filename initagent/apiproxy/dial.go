package apiproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// conn is one side of a proxied connection: a *net.TCPConn, or a rawConn
// from dialRaw.
type conn interface {
	SyscallConn() (syscall.RawConn, error)
	CloseWrite() error
	Close() error
}

// dial connects to b. Keepalive and TCP_USER_TIMEOUT are set later, by
// lateSockopts, on the connections that last.
func (p *Proxy) dial(ctx context.Context, b *backend) (conn, error) {
	if b.ap.IsValid() {
		return p.dialRaw(ctx, b.ap)
	}
	d := net.Dialer{Timeout: p.cfg.DialTimeout, KeepAlive: -1}
	c, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// rawConn is a connected TCP socket in the runtime's poller, without the
// net package's bookkeeping.
type rawConn struct {
	f  *os.File
	rc syscall.RawConn
}

func (c *rawConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }
func (c *rawConn) Close() error                          { return c.f.Close() }

func (c *rawConn) CloseWrite() error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) }); err != nil {
		return err
	}
	return serr
}

// dialRaw connects to an ip:port with system calls of its own: net.Dialer
// also asks the kernel for both addresses and parks the goroutine until the
// poller reports the connect done, while a connect to a local apiserver is
// done at once; polling with connect(2) itself finds that out. Like
// net.Dialer, it tries again when the kernel found no free local port or
// connected the socket to itself.
func (p *Proxy) dialRaw(ctx context.Context, ap netip.AddrPort) (conn, error) {
	for i := 0; ; i++ {
		c, err := p.dialRawOnce(ctx, ap)
		var errno syscall.Errno
		if i < 2 && (err == errSelfConnect || errors.As(err, &errno) && errno == unix.EADDRNOTAVAIL) {
			continue
		}
		if err == errSelfConnect {
			err = unix.ECONNREFUSED // nothing listens there
		}
		if err != nil {
			return nil, dialErr(ap, err)
		}
		return c, nil
	}
}

var errSelfConnect = errors.New("connected to itself")

// mayConnectToItself reports whether port is in the kernel's range of
// local ports: a connect to a local port that nothing listens on can then
// pick that same port and connect the socket to itself (TCP simultaneous
// open). The apiservers' 6443 is not, with the kernel's default range.
func mayConnectToItself(port uint16) bool {
	localPorts.once.Do(func() {
		localPorts.lo, localPorts.hi = 1, 65535
		if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
			if f := strings.Fields(string(b)); len(f) == 2 {
				lo, err1 := strconv.ParseUint(f[0], 10, 16)
				hi, err2 := strconv.ParseUint(f[1], 10, 16)
				if err1 == nil && err2 == nil {
					localPorts.lo, localPorts.hi = uint16(lo), uint16(hi)
				}
			}
		}
	})
	return localPorts.lo <= port && port <= localPorts.hi
}

var localPorts struct {
	once   sync.Once
	lo, hi uint16
}

func (p *Proxy) dialRawOnce(ctx context.Context, ap netip.AddrPort) (conn, error) {
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if ap.Addr().Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setsockopt", err)
	}
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	f := os.NewFile(uintptr(fd), "tcp") // non-blocking: in the poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	var cerr error
	connected := func(fd uintptr) bool {
		cerr = unix.Connect(int(fd), sa)
		switch cerr {
		case unix.EALREADY, unix.EINPROGRESS, unix.EINTR:
			return false
		case unix.EISCONN:
			cerr = nil
		}
		return true
	}
	if !connected(uintptr(fd)) {
		_ = f.SetWriteDeadline(time.Now().Add(p.cfg.DialTimeout))
		stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
		err = rc.Write(connected)
		stop()
		_ = f.SetWriteDeadline(time.Time{})
		if err != nil {
			f.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, fmt.Errorf("i/o timeout after %v", p.cfg.DialTimeout)
			}
			return nil, err
		}
	}
	if cerr != nil {
		f.Close()
		return nil, os.NewSyscallError("connect", cerr)
	}
	if mayConnectToItself(ap.Port()) {
		var self bool
		_ = rc.Control(func(fd uintptr) {
			la, err := unix.Getsockname(int(fd))
			switch la := la.(type) {
			case *unix.SockaddrInet4:
				self = err == nil && la.Port == int(ap.Port()) && la.Addr == ap.Addr().As4()
			case *unix.SockaddrInet6:
				self = err == nil && la.Port == int(ap.Port()) && la.Addr == ap.Addr().As16()
			}
		})
		if self {
			f.Close()
			return nil, errSelfConnect
		}
	}
	return &rawConn{f: f, rc: rc}, nil
}

func dialErr(ap netip.AddrPort, err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
}
