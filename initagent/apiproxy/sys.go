package apiproxy

import (
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The calls a loop makes per connection. Every socket in a loop is
// non-blocking, so these return at once: they go to the kernel with
// RawSyscall, without entersyscall/exitsyscall around each one, and
// without leaving the loop's P in a syscall state that sysmon wakes up
// every 20µs to look at (together 4% of the proxy's CPU at 6000 new
// connections per second, tools/bench/apiproxy with -cpuprofile). Reads
// and writes use recvfrom and sendto, as HAProxy does: read(2) and write(2)
// on a socket also pass through the VFS (fdget_pos, vfs_read).

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func recv(fd int, b []byte) (int, error) {
	n, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// send writes b to fd; with more, it holds a short segment back
// (MSG_MORE) for the FIN that follows.
func send(fd int, b []byte, more bool) (int, error) {
	flags := unix.MSG_NOSIGNAL
	if more {
		flags |= unix.MSG_MORE
	}
	n, _, e := syscall.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// closeFD closes a socket. Without SO_LINGER (or with a zero linger, which
// resets) close(2) of a socket does not wait.
func closeFD(fd int) {
	_, _, _ = syscall.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// acceptConn takes a connection from a listener without asking for the
// peer's address.
func acceptConn(lfd int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	return int(r), e
}

func epollAdd(epfd, fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	_, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), unix.EPOLL_CTL_ADD, uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	return errnoErr(e)
}

// epollPoll returns the events ready now without waiting.
func epollPoll(epfd int, events []unix.EpollEvent) int {
	n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0
	}
	return int(n)
}

func shutdownWrite(fd int) error {
	_, _, e := syscall.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
	return errnoErr(e)
}

// startConnect opens a non-blocking TCP socket with TCP_NODELAY and starts
// connecting it to ap (EINPROGRESS is not an error).
func startConnect(ap netip.AddrPort) (int, error) {
	var sa4 unix.RawSockaddrInet4
	var sa6 unix.RawSockaddrInet6
	family := unix.AF_INET6
	ptr, size := unsafe.Pointer(&sa6), unsafe.Sizeof(sa6)
	port := [2]byte{byte(ap.Port() >> 8), byte(ap.Port())}
	if ap.Addr().Is4() {
		family = unix.AF_INET
		sa4.Family = unix.AF_INET
		sa4.Port = *(*uint16)(unsafe.Pointer(&port))
		sa4.Addr = ap.Addr().As4()
		ptr, size = unsafe.Pointer(&sa4), unsafe.Sizeof(sa4)
	} else {
		sa6.Family = unix.AF_INET6
		sa6.Port = *(*uint16)(unsafe.Pointer(&port))
		sa6.Addr = ap.Addr().As16()
	}
	r, _, e := syscall.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if e != 0 {
		return -1, e
	}
	fd := int(r)
	one := int32(1)
	if _, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, uintptr(unsafe.Pointer(&one)), 4, 0); e != 0 {
		closeFD(fd)
		return -1, e
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(ptr), size); e != 0 && e != unix.EINPROGRESS {
		closeFD(fd)
		return -1, e
	}
	return fd, nil
}
