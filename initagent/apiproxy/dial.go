package apiproxy

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// dialName connects to a backend given by host name with net.Dialer and
// returns a duplicate of the connected socket for a loop (the net package
// keeps its own in the runtime's poller and closes it). Keepalive and
// TCP_USER_TIMEOUT are set later, by lateSockopts, on the connections that
// last.
func (p *Proxy) dialName(ctx context.Context, b *backend) (int, error) {
	d := net.Dialer{Timeout: p.cfg.DialTimeout, KeepAlive: -1}
	c, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return -1, err
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) // shares O_NONBLOCK
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	return fd, nil
}

// portRange is the kernel's range of local ports (per network namespace).
// A connect to a local port in it that nothing listens on can pick that
// same port and connect the socket to itself (TCP simultaneous open). The
// apiservers' 6443 is not in it, with the kernel's default range.
type portRange struct{ lo, hi uint16 }

func (r portRange) contains(port uint16) bool { return r.lo <= port && port <= r.hi }

// readLocalPortRange reads this network namespace's range; every port
// when it cannot tell.
func readLocalPortRange() portRange {
	r := portRange{1, 65535}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			lo, err1 := strconv.ParseUint(f[0], 10, 16)
			hi, err2 := strconv.ParseUint(f[1], 10, 16)
			if err1 == nil && err2 == nil {
				r = portRange{uint16(lo), uint16(hi)}
			}
		}
	}
	return r
}

func dialErr(ap netip.AddrPort, err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError("connect", errno)
	}
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
}
