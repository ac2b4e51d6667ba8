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
		rw := &bufferedResponse{header: http.Header{}, code: http.StatusOK}
		h.ServeHTTP(rw, req.WithContext(withClient(ctx, "console port")))
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

// bufferedResponse collects a handler's response so it can be written
// with its exact length.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
	wrote  bool
}

func (b *bufferedResponse) Header() http.Header { return b.header }
func (b *bufferedResponse) WriteHeader(code int) {
	if !b.wrote {
		b.code, b.wrote = code, true
	}
}
func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.wrote = true
	return b.body.Write(p)
}
