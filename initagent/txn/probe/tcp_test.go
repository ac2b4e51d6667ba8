package probe

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

func TestTCP(t *testing.T) {
	l := newLab(t)
	ln := l.listen(t, "10.9.0.1:6443")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, c := range []probeCase{
		{name: "listening", probe: TCP("10.9.0.1:6443")},
		{name: "closed port", probe: TCP("10.9.0.1:6444"),
			want: ErrRefused, wantMsg: []string{"tcp 10.9.0.1:6444", "connection refused", "listens on 10.9.0.1:6444"}},
		{name: "nobody", probe: TCP("10.9.0.99:6443"), timeout: 700 * time.Millisecond,
			want: ErrTimeout, wantMsg: []string{"tcp 10.9.0.99:6443", "no connection within"}},
		{name: "no route", probe: TCP("192.0.2.1:6443"), timeout: 700 * time.Millisecond,
			want: ErrUnreachable, wantMsg: []string{"network is unreachable"}},
		// HostTCP: a refusal is the host answering; silence still fails.
		{name: "host listening", probe: HostTCP("10.9.0.1:6443")},
		{name: "host with closed port", probe: HostTCP("10.9.0.1:6444")},
		{name: "no host", probe: HostTCP("10.9.0.99:6443"), timeout: 700 * time.Millisecond,
			want: ErrTimeout, wantMsg: []string{"tcp host 10.9.0.99:6443", "no connection within"}},
		{name: "no route to host", probe: HostTCP("192.0.2.1:6443"), timeout: 700 * time.Millisecond,
			want: ErrUnreachable, wantMsg: []string{"network is unreachable"}},
	} {
		t.Run(c.name, c.run)
	}
}

// testCA is a CA and a serving certificate it signed for ips.
type testCA struct {
	pool *x509.CertPool
	cert tls.Certificate
}

func newTestCA(t *testing.T, ips ...string) testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "probe test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return testCA{pool: pool, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// serveHTTP serves h on ln (TLS with cert if not nil) until the test ends.
func serveHTTP(t *testing.T, ln net.Listener, cert *tls.Certificate, h http.Handler) {
	t.Helper()
	if cert != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
	}
	// Handshakes the probes abort (TCP probe, wrong CA) are expected.
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
}

func TestHTTP(t *testing.T) {
	l := newLab(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/gone", http.StatusFound) })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "backend down", http.StatusInternalServerError)
	})
	serveHTTP(t, l.listen(t, "10.9.0.1:8080"), nil, mux)
	for _, c := range []probeCase{
		{name: "200", probe: HTTP("http://10.9.0.1:8080/ok", nil)},
		{name: "302 is not followed and passes", probe: HTTP("http://10.9.0.1:8080/moved", nil)},
		{name: "redirect followed by the caller's client", probe: HTTP("http://10.9.0.1:8080/moved", &http.Client{Transport: &http.Transport{}}),
			want: ErrWrongAnswer, wantMsg: []string{"404"}},
		{name: "500", probe: HTTP("http://10.9.0.1:8080/fail", nil),
			want: ErrWrongAnswer, wantMsg: []string{"http http://10.9.0.1:8080/fail", `status "500 Internal Server Error", want 2xx or 3xx`, "backend down"}},
		{name: "refused", probe: HTTP("http://10.9.0.1:8081/ok", nil), want: ErrRefused},
	} {
		t.Run(c.name, c.run)
	}
}

func TestAPIServer(t *testing.T) {
	l := newLab(t)
	ca := newTestCA(t, "10.9.0.1")
	other := newTestCA(t, "10.9.0.1")
	ready := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
		}
	}
	notReady := func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed", http.StatusInternalServerError)
	}
	serveHTTP(t, l.listen(t, "10.9.0.1:6443"), &ca.cert, http.HandlerFunc(ready))
	serveHTTP(t, l.listen(t, "10.9.0.1:7443"), &ca.cert, http.HandlerFunc(notReady))
	for _, c := range []probeCase{
		{name: "ready", probe: APIServer("10.9.0.1:6443", ca.pool)},
		{name: "not ready", probe: APIServer("10.9.0.1:7443", ca.pool),
			want: ErrWrongAnswer, wantMsg: []string{"https https://10.9.0.1:7443/readyz", "500", "[-]etcd failed", "kube-apiserver on 10.9.0.1:7443"}},
		{name: "wrong CA", probe: APIServer("10.9.0.1:6443", other.pool),
			want: ErrWrongAnswer, wantMsg: []string{"certificate signed by unknown authority", "check the CA bundle"}},
		{name: "no CA: TCP", probe: APIServer("10.9.0.1:6443", nil)},
		{name: "no CA: TCP refused", probe: APIServer("10.9.0.1:6444", nil), want: ErrRefused},
	} {
		t.Run(c.name, c.run)
	}

	// The certificate names 10.9.0.1 only.
	wrongName := newTestCA(t, "10.9.0.7")
	serveHTTP(t, l.listen(t, "10.9.0.1:8443"), &wrongName.cert, http.HandlerFunc(ready))
	probeCase{probe: APIServer("10.9.0.1:8443", wrongName.pool), want: ErrWrongAnswer,
		wantMsg: []string{"valid for 10.9.0.7, not 10.9.0.1"}}.run(t)
}

func TestNames(t *testing.T) {
	pool := x509.NewCertPool()
	for _, c := range []struct {
		p    Probe
		want string
	}{
		{APIServer("10.0.0.11:6443", pool), "https https://10.0.0.11:6443/readyz"},
		{APIServer("10.0.0.11", pool), "https https://10.0.0.11:6443/readyz"},
		{APIServer("https://api.example.:443/", pool), "https https://api.example.:443/readyz"},
		{APIServer("fd00::11", pool), "https https://[fd00::11]:6443/readyz"},
		{APIServer("[fd00::11]", nil), "tcp [fd00::11]:6443"},
		{APIServer("10.0.0.11:6443", nil), "tcp 10.0.0.11:6443"},
		{HTTP("http://10.0.0.1/healthz", nil), "http http://10.0.0.1/healthz"},
		{TCP("10.0.0.11:6443"), "tcp 10.0.0.11:6443"},
		{DNS(netip.MustParseAddr("192.0.2.53"), ""), "dns 192.0.2.53"},
		{ICMP(netip.MustParseAddr("fe80::1%eth0")), "icmp fe80::1%eth0"},
		{Gateway("eth0", netip.MustParseAddr("192.0.2.1")), "gateway 192.0.2.1 on eth0"},
		{Gateway("eth0", netip.MustParseAddr("fe80::1%eth0")), "gateway fe80::1 on eth0"},
	} {
		if got := c.p.Name(); got != c.want {
			t.Errorf("Name() = %q, want %q", got, c.want)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	cause := errors.New("read: connection refused")
	err := &Error{Probe: "tcp 10.0.0.11:6443", Kind: ErrRefused, Detail: "connect", Err: cause, Hint: "that a service listens"}
	if got, want := err.Error(), "tcp 10.0.0.11:6443: refused: connect: read: connection refused; check that a service listens"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, ErrRefused) || !errors.Is(err, cause) || errors.Is(err, ErrTimeout) {
		t.Errorf("errors.Is(%v, …) does not match exactly its kind and cause", err)
	}
}
