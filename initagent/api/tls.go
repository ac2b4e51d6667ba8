package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/config"
)

// TLSConfig builds the mutual-TLS server settings from the machine
// config's api.tls: the node's certificate, client certificates required and
// verified against clientCA, and serials on the CRL refused.
func TLSConfig(t config.APITLS) (*tls.Config, error) {
	cert, err := tls.X509KeyPair([]byte(t.Certificate), []byte(t.Key))
	if err != nil {
		return nil, fmt.Errorf("api.tls.certificate/key: %w", err)
	}
	cas, err := pki.ParseCertificates([]byte(t.ClientCA))
	if err != nil {
		return nil, fmt.Errorf("api.tls.clientCA: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
	if t.CRL != "" {
		crl, err := pki.ParseRevocationList([]byte(t.CRL))
		if err != nil {
			return nil, fmt.Errorf("api.tls.crl: %w", err)
		}
		revoked := map[string]bool{}
		for _, e := range crl.RevokedCertificateEntries {
			revoked[e.SerialNumber.String()] = true
		}
		issuer := crl.RawIssuer
		cfg.VerifyPeerCertificate = func(_ [][]byte, chains [][]*x509.Certificate) error {
			for _, chain := range chains {
				leaf := chain[0]
				// The CRL covers certificates its CA issued.
				if string(leaf.RawIssuer) == string(issuer) && revoked[leaf.SerialNumber.String()] {
					return fmt.Errorf("client certificate %q (serial %s) is revoked", leaf.Subject, leaf.SerialNumber)
				}
			}
			return nil
		}
	}
	return cfg, nil
}

// errNoTLS refuses every client while the node has no api.tls.
var errNoTLS = errors.New("node api has no TLS settings (api.tls is not in the committed config)")

// verifyClient judges a client's certificates by conf as a handshake would:
// chained to conf.ClientCAs for client authentication, valid now, and
// accepted by conf.VerifyPeerCertificate (the CRL).
func verifyClient(conf *tls.Config, certs []*x509.Certificate) error {
	if conf == nil {
		return errNoTLS
	}
	if len(certs) == 0 {
		return errors.New("no client certificate")
	}
	intermediates := x509.NewCertPool()
	raw := [][]byte{certs[0].Raw}
	for _, c := range certs[1:] {
		intermediates.AddCert(c)
		raw = append(raw, c.Raw)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: conf.ClientCAs, Intermediates: intermediates,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return err
	}
	if conf.VerifyPeerCertificate != nil {
		return conf.VerifyPeerCertificate(raw, chains)
	}
	return nil
}

// closeGrace is how long a connection busy with a request may finish it
// after new TLS settings refused its client (the operator who applied them
// gets the answer); then it is closed even mid-stream (`logs -f`).
const closeGrace = 5 * time.Second

// TLSListener holds the current TLS settings so a new config takes effect
// without restarting the listener: the next handshake and the next request
// on an open connection use them, and open connections whose client they
// refuse are closed (idle ones at once, busy ones once their request ends,
// within closeGrace).
type TLSListener struct {
	current atomic.Pointer[tls.Config]

	mu    sync.Mutex
	conns map[*tls.Conn]http.ConnState // connections past their handshake
	// refused are connections to close when their request ends.
	refused map[*tls.Conn]bool
	grace   time.Duration // zero: closeGrace
}

// Set replaces the TLS settings; nil refuses every client.
func (l *TLSListener) Set(c *tls.Config) {
	l.current.Store(c)
	l.mu.Lock()
	open := make(map[*tls.Conn]http.ConnState, len(l.conns))
	for tc, st := range l.conns {
		open[tc] = st
	}
	l.mu.Unlock()
	for tc, st := range open {
		if verifyClient(c, tc.ConnectionState().PeerCertificates) == nil {
			continue
		}
		if st == http.StateIdle {
			_ = tc.NetConn().Close()
			continue
		}
		l.mu.Lock()
		if l.refused == nil {
			l.refused = map[*tls.Conn]bool{}
		}
		l.refused[tc] = true
		l.mu.Unlock()
		grace := l.grace
		if grace == 0 {
			grace = closeGrace
		}
		time.AfterFunc(grace, func() { _ = tc.NetConn().Close() })
	}
}

// track follows the server's connections (http.Server.ConnState).
func (l *TLSListener) track(c net.Conn, st http.ConnState) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st {
	case http.StateActive, http.StateIdle:
		if st == http.StateIdle && l.refused[tc] {
			_ = tc.NetConn().Close()
			return
		}
		if l.conns == nil {
			l.conns = map[*tls.Conn]http.ConnState{}
		}
		l.conns[tc] = st
	case http.StateClosed, http.StateHijacked:
		delete(l.conns, tc)
		delete(l.refused, tc)
	}
}

// authorize judges every request by the settings in force when it arrives,
// so a client refused by new settings gets nothing more on a connection
// that was open before.
func (l *TLSListener) authorize(log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var certs []*x509.Certificate
		if r.TLS != nil {
			certs = r.TLS.PeerCertificates
		}
		if err := verifyClient(l.current.Load(), certs); err != nil {
			log.Warn("node api: client refused by the current TLS settings", "client", Client(r), "remote", r.RemoteAddr, "err", err)
			w.Header().Set("Connection", "close")
			writeJSON(w, http.StatusForbidden, ErrorResponse{Error: "client certificate refused by the node's current TLS settings: " + err.Error()})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// ServeTLS serves the Full API with mutual TLS on addr until ctx ends. A
// handshake that fails (no, expired, revoked or foreign client
// certificate) is logged with the peer's address.
func (s *Server) ServeTLS(ctx context.Context, addr string, tl *TLSListener) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("node api: %w", err)
	}
	return s.ServeTLSListener(ctx, ln, tl)
}

// ServeTLSListener is ServeTLS on an open listener.
func (s *Server) ServeTLSListener(ctx context.Context, ln net.Listener, tl *TLSListener) error {
	base := &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if c := tl.current.Load(); c != nil {
			return c, nil
		}
		return nil, errNoTLS
	}}
	srv := &http.Server{
		Handler:           tl.authorize(s.Log, s.Handler(Full)),
		ConnState:         tl.track,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slogErrorLog(s.Log),
		// Streams (logs --follow) end with the server.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	s.Log.Info("node api serving mutual TLS", "addr", ln.Addr().String())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(tls.NewListener(ln, base)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// TLSEndpoint is the node API's mutual-TLS listener as the committed
// config describes it, following every change while it runs: new
// certificates, client CAs or CRL through its TLSListener, a new address
// by moving the listener, and no settings (api.tls removed) by refusing
// every client at once and closing the listener.
type TLSEndpoint struct {
	Server *Server
	// Listen opens the listener for an address; nil means net.Listen("tcp", addr).
	Listen func(addr string) (net.Listener, error)

	tl   TLSListener
	mu   sync.Mutex
	addr string // wanted; "" while disabled
	wake chan struct{}
}

func (e *TLSEndpoint) wakeup() chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.wake == nil {
		e.wake = make(chan struct{}, 1)
	}
	return e.wake
}

// Set takes new settings: conf nil turns mutual TLS off. Clients are
// judged by conf from when Set returns; the listener follows addr
// asynchronously.
func (e *TLSEndpoint) Set(addr string, conf *tls.Config) {
	if conf == nil {
		addr = ""
	}
	e.tl.Set(conf)
	e.mu.Lock()
	e.addr = addr
	e.mu.Unlock()
	select {
	case e.wakeup() <- struct{}{}:
	default:
	}
}

func (e *TLSEndpoint) wanted() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.addr
}

// Run serves as the latest Set says until ctx ends. It returns an error
// when the address cannot be listened on (the supervisor tries again).
func (e *TLSEndpoint) Run(ctx context.Context) error {
	listen := e.Listen
	if listen == nil {
		listen = func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	}
	wake := e.wakeup()
	var (
		serving string
		stop    context.CancelFunc
		done    chan error
	)
	halt := func() {
		if stop == nil {
			return
		}
		stop()
		if err := <-done; err != nil {
			e.Server.Log.Error("node api: mutual TLS listener", "addr", serving, "err", err)
		}
		e.Server.Log.Info("node api stopped serving mutual TLS", "addr", serving)
		stop, done, serving = nil, nil, ""
	}
	defer halt()
	for {
		if want := e.wanted(); want != serving {
			halt()
			if want != "" {
				ln, err := listen(want)
				if err != nil {
					return fmt.Errorf("node api: api.listen %s: %w", want, err)
				}
				stop, done = e.serve(ctx, ln)
				serving = want
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case err := <-done:
			stop()
			stop, done, serving = nil, nil, ""
			return fmt.Errorf("node api: mutual TLS listener stopped: %v", err)
		}
	}
}

// serve runs the API on ln until the returned function is called.
func (e *TLSEndpoint) serve(ctx context.Context, ln net.Listener) (context.CancelFunc, chan error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.Server.ServeTLSListener(ctx, ln, &e.tl) }()
	return cancel, done
}
