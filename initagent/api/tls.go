package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
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

// TLSListener holds the current TLS settings so a new config takes effect
// for the next connection without restarting the listener.
type TLSListener struct {
	current atomic.Pointer[tls.Config]
}

// Set replaces the TLS settings.
func (l *TLSListener) Set(c *tls.Config) { l.current.Store(c) }

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
		return nil, errors.New("node api has no TLS settings")
	}}
	srv := &http.Server{
		Handler:           s.Handler(Full),
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
