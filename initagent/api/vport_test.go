package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/logring"
)

// openPort gives a byte stream like a virtio-serial port: the slave side of
// a pseudo-terminal in raw mode (no echo, no newline translation), whose path
// ServePort opens; the test talks through the master.
func openPort(t *testing.T) (host *os.File, dev string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	dev = fmt.Sprintf("/dev/pts/%d", n)
	s, err := os.OpenFile(dev, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Raw mode (cfmakeraw); it holds while the master stays open.
	tio, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB
	tio.Cflag |= unix.CS8
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(int(s.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, dev
}

// portClient sends requests over the port one after another, as the QEMU
// tests do, and reads each answer within a deadline.
type portClient struct {
	t    *testing.T
	host *os.File
	br   *bufio.Reader
}

func (c *portClient) get(path string) (*http.Response, []byte) {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.host, "GET %s HTTP/1.1\r\nHost: port\r\n\r\n", path); err != nil {
		c.t.Fatal(err)
	}
	// A jammed port never answers: read in the background and give up.
	type result struct {
		resp *http.Response
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			done <- result{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		done <- result{resp, body, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			c.t.Fatalf("GET %s on the port: %v", path, r.err)
		}
		return r.resp, r.body
	case <-time.After(5 * time.Second):
		c.t.Fatalf("GET %s on the port: no answer within 5s: the port is jammed", path)
		return nil, nil
	}
}

func startPort(t *testing.T, srv *Server) *portClient {
	t.Helper()
	host, dev := openPort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServePort(ctx, dev) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			// Only a leaked handler keeps ServePort from returning; the
			// test has failed already if so.
			t.Error("ServePort did not return 5s after cancel")
		}
	})
	return &portClient{t: t, host: host, br: bufio.NewReader(host)}
}

// TestPortRefusesFollow: logs?follow=true never ends, so on the port it held
// the port for good (every later request unanswered) while its buffered body
// grew in PID 1's heap. It is refused with an error naming the mTLS API, and
// the port answers the next request.
func TestPortRefusesFollow(t *testing.T) {
	srv := newServer(t, slog.New(slog.DiscardHandler))
	srv.Logs = logring.New(1000)
	srv.Logs.Add("agent", "booted")
	c := startPort(t, srv)

	// Lines keep coming while the follow would run: a stream would buffer them all.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				srv.Logs.Add("dns", strings.Repeat("x", 200)+fmt.Sprint(i))
			}
		}
	}()
	for _, path := range []string{"/v1/logs?follow=true", "/v1/logs?service=dns&lines=5&follow=true"} {
		resp, body := c.get(path)
		var e ErrorResponse
		if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, "mTLS API") {
			t.Errorf("GET %s on the port = %d %s, want 400 with an error naming the mTLS API", path, resp.StatusCode, body)
		}
	}
	resp, body := c.get("/v1/logs?service=agent&lines=1")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "booted") {
		t.Errorf("logs without follow after a refused follow = %d %q, want the line", resp.StatusCode, body)
	}
	resp, body = c.get("/v1/status")
	var st Status
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &st) != nil || st.Hostname != "node-1" {
		t.Errorf("status after a refused follow = %d %s, want node-1's status", resp.StatusCode, body)
	}
}

// TestPortBoundsResponses: a response beyond the port's bound is replaced by
// an error, and the port goes on serving.
func TestPortBoundsResponses(t *testing.T) {
	srv := newServer(t, slog.New(slog.DiscardHandler))
	srv.Logs = logring.New(1000)
	for i := range 1000 {
		srv.Logs.Add("agent", fmt.Sprintf("line %d %s", i, strings.Repeat("y", 100)))
	}
	old := portResponseMax
	portResponseMax = 16 << 10
	t.Cleanup(func() { portResponseMax = old })
	c := startPort(t, srv)

	resp, body := c.get("/v1/logs?lines=0")
	if resp.StatusCode != http.StatusInsufficientStorage || !strings.Contains(string(body), "lines=") {
		t.Errorf("1000 lines over a 16 KiB bound = %d %.200s, want 507 saying to ask for fewer lines", resp.StatusCode, body)
	}
	resp, body = c.get("/v1/logs?lines=3")
	if resp.StatusCode != http.StatusOK || strings.Count(string(body), "\n") != 3 {
		t.Errorf("3 lines after an oversized answer = %d %q, want them", resp.StatusCode, body)
	}
}
