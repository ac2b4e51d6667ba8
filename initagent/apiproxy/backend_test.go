package apiproxy

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// TestMain runs every test in a throwaway network namespace.
func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }

// testPKI is a CA and an apiserver certificate valid for 127.0.0.1.
type testPKI struct {
	pool *x509.CertPool
	cert tls.Certificate
	pin  string // hex SHA-256 of the serving key's SubjectPublicKeyInfo
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"kubernetes"},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	sum := sha256.Sum256(parsed.RawSubjectPublicKeyInfo)
	return &testPKI{
		pool: pool,
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: parsed},
		pin:  hex.EncodeToString(sum[:]),
	}
}

// testBackend plays an apiserver on one port: TLS connections get HTTPS
// (GET /readyz answers readyStatus), plain ones a tiny protocol the tests
// use as API traffic, selected by the first byte:
//
//	'I': reply "<name>\n", then echo until EOF, then close
//	'E': echo until EOF, then close
//	'C': read until EOF, then reply with the byte count and close
type testBackend struct {
	t           *testing.T
	name        string
	addr        string
	pki         *testPKI
	readyStatus atomic.Int32

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	tlsCh chan net.Conn
	srv   *http.Server
	wg    sync.WaitGroup
}

func startBackend(t *testing.T, name string, pki *testPKI) *testBackend {
	t.Helper()
	return startBackendAt(t, name, pki, "127.0.0.1:0")
}

func startBackendAt(t *testing.T, name string, pki *testPKI, addr string) *testBackend {
	t.Helper()
	b := &testBackend{t: t, name: name, pki: pki, addr: addr}
	b.readyStatus.Store(http.StatusOK)
	b.start()
	t.Cleanup(b.kill)
	return b
}

// start listens on b.addr (again, after kill).
func (b *testBackend) start() {
	b.t.Helper()
	ln, err := net.Listen("tcp", b.addr)
	if err != nil {
		b.t.Fatalf("backend %s: %v", b.name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addr = ln.Addr().String()
	b.ln = ln
	b.conns = map[net.Conn]struct{}{}
	b.tlsCh = make(chan net.Conn)
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(b.readyStatus.Load()))
		fmt.Fprintln(w, b.name)
	})
	b.srv = &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{b.pki.cert}}}
	tlsLn := tls.NewListener(&chanListener{ch: b.tlsCh, addr: ln.Addr()}, b.srv.TLSConfig)
	srv := b.srv
	b.wg.Go(func() { _ = srv.Serve(tlsLn) })
	tlsCh := b.tlsCh
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns[c] = struct{}{}
			b.mu.Unlock()
			b.wg.Go(func() { b.handle(c, tlsCh) })
		}
	})
}

func (b *testBackend) handle(c net.Conn, tlsCh chan net.Conn) {
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	if first[0] == 0x16 { // TLS handshake record
		select {
		case tlsCh <- &peekedConn{Conn: c, r: br}:
		case <-time.After(5 * time.Second):
			c.Close()
		}
		return
	}
	defer func() {
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		c.Close()
	}()
	cmd, _ := br.ReadByte()
	if cmd == 'C' {
		n, err := io.Copy(io.Discard, br)
		if err == nil {
			fmt.Fprintf(c, "%d", n)
		}
		return
	}
	if cmd == 'I' {
		if _, err := io.WriteString(c, b.name+"\n"); err != nil {
			return
		}
	}
	if _, err := io.Copy(c, br); err == nil {
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, br)
	}
}

// kill closes the listener and every connection, as a crashed apiserver:
// connects to its port are refused from now on.
func (b *testBackend) kill() {
	b.mu.Lock()
	if b.ln == nil {
		b.mu.Unlock()
		return
	}
	b.ln.Close()
	b.ln = nil
	for c := range b.conns {
		c.Close()
	}
	srv := b.srv
	b.mu.Unlock()
	srv.Close()
	b.wg.Wait()
}

type chanListener struct {
	ch   chan net.Conn
	addr net.Addr
	once sync.Once
	done chan struct{}
	mu   sync.Mutex
}

func (l *chanListener) init() {
	l.mu.Lock()
	if l.done == nil {
		l.done = make(chan struct{})
	}
	l.mu.Unlock()
}

func (l *chanListener) Accept() (net.Conn, error) {
	l.init()
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.init()
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// client is one "API" connection through the proxy.
type client struct {
	c  *net.TCPConn
	br *bufio.Reader
}

// dialID connects to addr with the 'I' command and returns the connection
// and the name of the backend that answered.
func dialID(addr string) (*client, string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, "", err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{'I'}); err != nil {
		c.Close()
		return nil, "", err
	}
	br := bufio.NewReader(c)
	name, err := br.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("read backend name: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return &client{c: c.(*net.TCPConn), br: br}, strings.TrimSpace(name), nil
}

// echo checks that the connection still carries data both ways.
func (cl *client) echo(msg string) error {
	_ = cl.c.SetDeadline(time.Now().Add(10 * time.Second))
	defer cl.c.SetDeadline(time.Time{})
	if _, err := io.WriteString(cl.c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(cl.br, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo = %q, want %q", buf, msg)
	}
	return nil
}

// waitClosed waits until the proxy closed the connection.
func (cl *client) waitClosed() error {
	_ = cl.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, cl.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("connection still open after 30s")
	}
	return nil
}
