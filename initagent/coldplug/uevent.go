package coldplug

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// errOverrun: the kernel dropped uevents because the socket's buffer was full.
var errOverrun = errors.New("uevent receive buffer overrun")

// uevent is one kernel uevent: "ACTION@DEVPATH" then KEY=VALUE pairs.
type uevent struct {
	Action string
	Env    map[string]string
}

// parseUevent decodes a kernel uevent message; messages from udev
// ("libudev" header) and malformed ones are rejected.
func parseUevent(msg []byte) (uevent, error) {
	fields := bytes.Split(bytes.TrimRight(msg, "\x00"), []byte{0})
	head := string(fields[0])
	action, _, ok := strings.Cut(head, "@")
	if !ok || action == "" {
		return uevent{}, fmt.Errorf("not a kernel uevent: %.40q", head)
	}
	ev := uevent{Action: action, Env: map[string]string{}}
	for _, f := range fields[1:] {
		if k, v, ok := strings.Cut(string(f), "="); ok {
			ev.Env[k] = v
		}
	}
	if a := ev.Env["ACTION"]; a != "" && a != action {
		return uevent{}, fmt.Errorf("uevent header %q disagrees with ACTION=%s", head, a)
	}
	return ev, nil
}

// ueventSocket is a NETLINK_KOBJECT_UEVENT socket on the kernel's group,
// read through Go's poller so Close unblocks a Read.
type ueventSocket struct {
	f   *os.File
	rc  syscall.RawConn
	buf []byte
}

func openUevents() (*ueventSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	// Boot loads many drivers at once; a large buffer keeps the burst.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind uevent socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "uevent")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	return &ueventSocket{f: f, rc: rc, buf: make([]byte, 64<<10)}, nil
}

// Read returns the next kernel uevent, skipping anything else: messages
// another process multicast on the kernel's group (only the kernel's, port
// 0, are trusted) and ones that do not parse.
func (s *ueventSocket) Read() (uevent, error) {
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := s.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), s.buf, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if errors.Is(err, unix.ENOBUFS) {
			return uevent{}, errOverrun
		}
		if err != nil {
			return uevent{}, err
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
		}
		if ev, err := parseUevent(s.buf[:n]); err == nil {
			return ev, nil
		}
	}
}

// TryRead is Read without waiting: ok is false when no event is queued.
func (s *ueventSocket) TryRead() (ev uevent, ok bool, err error) {
	for {
		var (
			n    int
			from unix.Sockaddr
		)
		cerr := s.rc.Read(func(fd uintptr) bool {
			n, from, err = unix.Recvfrom(int(fd), s.buf, unix.MSG_DONTWAIT)
			return true
		})
		switch {
		case cerr != nil:
			return uevent{}, false, cerr
		case errors.Is(err, unix.EAGAIN):
			return uevent{}, false, nil
		case errors.Is(err, unix.ENOBUFS):
			return uevent{}, false, errOverrun
		case err != nil:
			return uevent{}, false, err
		}
		if nl, isNL := from.(*unix.SockaddrNetlink); !isNL || nl.Pid != 0 {
			continue
		}
		if ev, perr := parseUevent(s.buf[:n]); perr == nil {
			return ev, true, nil
		}
	}
}

func (s *ueventSocket) Close() error { return s.f.Close() }
