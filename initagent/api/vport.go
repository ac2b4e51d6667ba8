package api

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// VirtioPortName names the virtio-serial port on which a hypervisor host
// reaches the local API (like qemu-guest-agent's org.qemu.guest_agent.0).
const VirtioPortName = "org.ballast.api.0"

// FindVirtioPort returns the /dev path of the named virtio-serial port, or "".
func FindVirtioPort(root, name string) string {
	names, _ := filepath.Glob(filepath.Join(root, "sys/class/virtio-ports/*/name"))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join(root, "dev", filepath.Base(filepath.Dir(n)))
		}
	}
	return ""
}

// ServePort serves the API on a virtio-serial character device: HTTP/1.1
// requests one after another over the port's byte stream, read and answered
// in order. The device stays open for good (the kernel drops what the host
// sends while the guest side is closed), and nothing reads ahead of the
// request being served, so no byte of the next request is ever lost.
// Each answer is buffered whole (bounded by portResponseMax) and sent with
// its length; a stream (logs with follow=true) would never end and hold the
// port, so it is refused with ErrPortFollow.
func (s *Server) ServePort(ctx context.Context, dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	// A stop (e.g. the reboot this port asked for) waits for the answer
	// being written, then closes the device to end the blocked read.
	var inflight sync.Mutex
	go func() {
		<-ctx.Done()
		inflight.Lock()
		f.Close()
		inflight.Unlock()
	}()
	h := s.Handler(s.ConsoleAccess)
	br := bufio.NewReader(f)
	for ctx.Err() == nil {
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				// No host on the other end: reads return EOF at once until one connects.
				br.Reset(f)
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
			if ctx.Err() != nil {
				break
			}
			s.Log.Warn("bad request on the API port", "err", err)
			br.Reset(f)
			continue
		}
		inflight.Lock()
		rw := &bufferedResponse{header: http.Header{}, code: http.StatusOK, max: portResponseMax}
		if streaming(req) {
			writeJSON(rw, http.StatusBadRequest, ErrorResponse{Error: ErrPortFollow.Error()})
		} else {
			h.ServeHTTP(rw, req.WithContext(withClient(ctx, "console port")))
		}
		if rw.overflow {
			// The handler stopped at the bound: an error replaces its cut-off body.
			rw = &bufferedResponse{header: http.Header{}, code: http.StatusOK}
			writeJSON(rw, http.StatusInsufficientStorage, ErrorResponse{Error: fmt.Sprintf(
				"the response exceeds the console port's bound of %d bytes: ask for less (e.g. logs with lines=), or use the mTLS API", portResponseMax)})
		}
		_, _ = io.Copy(io.Discard, req.Body)
		resp := &http.Response{StatusCode: rw.code, ProtoMajor: 1, ProtoMinor: 1, Header: rw.header,
			ContentLength: int64(rw.body.Len()), Body: io.NopCloser(&rw.body), Request: req}
		if err := resp.Write(f); err != nil && ctx.Err() == nil {
			s.Log.Warn("write on the API port", "err", err)
		}
		inflight.Unlock()
	}
	return nil
}

// ErrPortFollow is the answer to a streaming request (logs with
// follow=true) on the console port.
var ErrPortFollow = errors.New("follow is not available on the console port: it answers one request at a time, " +
	"each whole with its length, so a stream would hold the port for good; ask for logs without follow (lines=N), " +
	"or follow them through the mTLS API (nodectl logs -f with a nodeconfig)")

// portResponseMax bounds one buffered response on the console port (PID 1's
// heap); the largest real one, every line of the log ring, is a few MiB.
// A variable for the tests.
var portResponseMax = 32 << 20

// streaming reports whether r asks for a response that never ends.
func streaming(r *http.Request) bool {
	return r.URL.Path == "/v1/logs" && r.URL.Query().Get("follow") == "true"
}

// errPortOverflow ends a handler whose response outgrew the port's bound.
var errPortOverflow = errors.New("response too large for the console port")

// bufferedResponse collects a handler's response so it can be written
// with its exact length; with max set, a body beyond max bytes is refused.
type bufferedResponse struct {
	header   http.Header
	code     int
	body     bytes.Buffer
	wrote    bool
	max      int
	overflow bool
}

func (b *bufferedResponse) Header() http.Header { return b.header }
func (b *bufferedResponse) WriteHeader(code int) {
	if !b.wrote {
		b.code, b.wrote = code, true
	}
}
func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.wrote = true
	if b.max > 0 && b.body.Len()+len(p) > b.max {
		b.overflow = true
		return 0, errPortOverflow
	}
	return b.body.Write(p)
}
