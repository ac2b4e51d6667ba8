package apiproxy

import (
	"errors"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// copyBufSize is the buffer small messages go through, as HAProxy's
// splice-auto does: for a request of a few hundred bytes, read(2) and
// write(2) cost less than splicing into a pipe and out of it. A read that
// fills the buffer means bulk data: the direction switches to splice(2)
// for good.
const copyBufSize = 16 << 10

// pipeChunk is the most one splice(2) call moves: the default pipe size.
// io.Copy between two *net.TCPConn splices too, but through 1 MiB pipes
// in 1 MiB steps, which measured 2–3× slower over 64 streams (a stream
// stalls while a large chunk is pumped out); 64 KiB steps keep both
// sockets busy (tools/bench/apiproxy).
const pipeChunk = 64 << 10

// copyBufs holds the buffers; one is taken only while a message passes
// through it, never while a connection waits, so idle connections hold
// no memory.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

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

// relay copies src to dst until EOF (nil error) or the first error,
// waiting on the runtime's netpoller: messages through a pooled buffer,
// bulk data with splice(2) so that it never enters Go.
func (pp pipePool) relay(dst, src conn) (written int64, err error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		buf    *[]byte
		n, off int
		serr   error
	)
	read := func(fd uintptr) bool {
		if buf == nil {
			buf = copyBufs.Get().(*[]byte)
		}
		n, serr = unix.Read(int(fd), *buf)
		if errors.Is(serr, syscall.EAGAIN) {
			copyBufs.Put(buf) // not while waiting
			buf = nil
			return false
		}
		return true
	}
	write := func(fd uintptr) bool {
		var m int
		m, serr = unix.Write(int(fd), (*buf)[off:n])
		if serr == nil {
			off += m
		}
		return !errors.Is(serr, syscall.EAGAIN)
	}
	defer func() {
		if buf != nil {
			copyBufs.Put(buf)
		}
	}()
	// A short read does not mean that the next one would wait: a FIN that
	// came with the data is only seen by a read that returns 0.
	for {
		if err := srcRC.Read(read); err != nil {
			return written, err
		}
		if serr != nil {
			return written, serr
		}
		if n == 0 {
			return written, nil // EOF
		}
		for off = 0; off < n; {
			if err := dstRC.Write(write); err != nil {
				return written + int64(off), err
			}
			if serr != nil {
				return written + int64(off), serr
			}
		}
		written += int64(n)
		full := n == len(*buf)
		copyBufs.Put(buf)
		buf = nil
		if full {
			// Bulk data: splice from now on.
			if p, err := pp.get(); err == nil {
				m, err := pp.splice(p, dstRC, srcRC)
				return written + m, err
			}
			// Out of descriptors for a pipe: go on copying.
		}
	}
}

// relayFirst passes on what src has sent already, without waiting for
// more: usually the client's first message (a TLS ClientHello), which
// then reaches the backend before another goroutine is scheduled. done
// reports that src ended (EOF: nil error).
func (pp pipePool) relayFirst(dst, src conn) (written int64, done bool, err error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, true, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, true, err
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	var n, off int
	var serr error
	if err := srcRC.Read(func(fd uintptr) bool {
		n, serr = unix.Read(int(fd), *buf)
		return true
	}); err != nil {
		return 0, true, err
	}
	switch {
	case errors.Is(serr, syscall.EAGAIN):
		return 0, false, nil
	case serr != nil:
		return 0, true, serr
	case n == 0:
		return 0, true, nil
	}
	write := func(fd uintptr) bool {
		var m int
		m, serr = unix.Write(int(fd), (*buf)[off:n])
		if serr == nil {
			off += m
		}
		return !errors.Is(serr, syscall.EAGAIN)
	}
	for off < n {
		if err := dstRC.Write(write); err != nil {
			return int64(off), true, err
		}
		if serr != nil {
			return int64(off), true, serr
		}
	}
	return int64(n), false, nil
}

// splice copies src to dst through p with splice(2) until EOF or the
// first error, and gives p back.
func (pp pipePool) splice(p pipe, dstRC, srcRC syscall.RawConn) (written int64, err error) {
	inPipe := int64(0)
	defer func() { pp.put(p, inPipe == 0) }()
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
