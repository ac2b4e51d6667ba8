package api

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// ServePort serves the API on a virtio-serial character device: one HTTP
// connection at a time over the port's byte stream, reopened after the host
// side goes away.
func (s *Server) ServePort(ctx context.Context, dev string) error {
	ln := &portListener{dev: dev, ctx: ctx, next: make(chan struct{}, 1)}
	ln.next <- struct{}{}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 0}
	go func() {
		<-ctx.Done()
		srv.Close()
		ln.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && ctx.Err() == nil {
		return err
	}
	return nil
}

// portListener hands out the port as a connection, again whenever the
// previous one was closed.
type portListener struct {
	dev  string
	ctx  context.Context
	next chan struct{}
	once sync.Once
}

func (l *portListener) Accept() (net.Conn, error) {
	select {
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	case <-l.next:
	}
	f, err := os.OpenFile(l.dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", l.dev, err)
	}
	return &portConn{File: f, done: func() {
		// The host closed its end (reads return EOF): wait a little before reopening to avoid spinning.
		time.AfterFunc(100*time.Millisecond, func() { l.next <- struct{}{} })
	}}, nil
}

func (l *portListener) Close() error   { return nil }
func (l *portListener) Addr() net.Addr { return portAddr(l.dev) }

type portConn struct {
	*os.File
	once sync.Once
	done func()
}

func (c *portConn) Close() error {
	err := c.File.Close()
	c.once.Do(c.done)
	return err
}
func (c *portConn) LocalAddr() net.Addr  { return portAddr(c.Name()) }
func (c *portConn) RemoteAddr() net.Addr { return portAddr("host") }

type portAddr string

func (a portAddr) Network() string { return "virtio-serial" }
func (a portAddr) String() string  { return string(a) }
