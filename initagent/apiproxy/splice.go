package apiproxy

import (
	"errors"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// pipeChunk is the most one splice(2) call moves: the default pipe size.
// io.Copy between two *net.TCPConn splices too, but through 1 MiB pipes
// in 1 MiB steps, which measured 2–3× slower over 64 streams (a stream
// stalls while a large chunk is pumped out); 64 KiB steps keep both
// sockets busy (tools/bench/apiproxy).
const pipeChunk = 64 << 10

type pipe struct{ r, w int }

// pipePool keeps emptied pipes for the next connections: creating one costs
// three system calls.
type pipePool chan pipe

func (pp pipePool) get() (pipe, error) {
	select {
	case p := <-pp:
		return p, nil
	default:
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return pipe{}, err
	}
	return pipe{r: fds[0], w: fds[1]}, nil
}

func (pp pipePool) put(p pipe, empty bool) {
	if empty {
		select {
		case pp <- p:
			return
		default:
		}
	}
	unix.Close(p.r)
	unix.Close(p.w)
}

func (pp pipePool) close() {
	for {
		select {
		case p := <-pp:
			pp.put(p, false)
		default:
			return
		}
	}
}

// splice copies src to dst through a pipe with splice(2), waiting on the
// runtime's netpoller: the bytes never enter Go. It returns at EOF (nil
// error) or on the first error.
func (pp pipePool) splice(dst, src *net.TCPConn) (written int64, err error) {
	p, err := pp.get()
	if err != nil {
		return io.Copy(dst, src) // the runtime's own splice
	}
	inPipe := int64(0)
	defer func() { pp.put(p, inPipe == 0) }()
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var serr error
	drain := func(fd uintptr) bool {
		var n int64
		n, serr = unix.Splice(int(fd), nil, p.w, nil, pipeChunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if serr == nil {
			inPipe = n
		}
		return !errors.Is(serr, syscall.EAGAIN)
	}
	pump := func(fd uintptr) bool {
		var n int64
		n, serr = unix.Splice(p.r, nil, int(fd), nil, int(inPipe), unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if serr == nil {
			inPipe -= n
			written += n
		}
		return !errors.Is(serr, syscall.EAGAIN)
	}
	for {
		if err := srcRC.Read(drain); err != nil {
			return written, err
		}
		if serr != nil {
			return written, serr
		}
		if inPipe == 0 {
			return written, nil // EOF
		}
		for inPipe > 0 {
			if err := dstRC.Write(pump); err != nil {
				return written, err
			}
			if serr != nil {
				return written, serr
			}
		}
	}
}
