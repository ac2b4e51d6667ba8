package apiproxy

import (
	"sync"

	"golang.org/x/sys/unix"
)

// copyBufSize is the buffer small messages go through (see flow).
const copyBufSize = 16 << 10

// pipeChunk is the most one splice(2) call moves: the default pipe size.
// Splicing through 1 MiB pipes in 1 MiB steps, as io.Copy between two
// *net.TCPConn does, measured 2–3× slower over 64 streams (a stream stalls
// while a large chunk is pumped out); 64 KiB steps keep both sockets busy
// (tools/bench/apiproxy).
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
