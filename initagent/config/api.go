package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"strconv"
)

// DefaultAPIPort is where the node API listens with mutual TLS.
const DefaultAPIPort = 50000

// API is the node API: served with mutual TLS only when tls is complete;
// without it the node serves a read-only status on its console socket.
type API struct {
	Listen string `yaml:"listen"` // host:port; empty means :50000
	TLS    APITLS `yaml:"tls"`
}

// APITLS holds PEM documents inline (the machine config is delivered over
// an authenticated channel, like the rest of the node's secrets).
type APITLS struct {
	Certificate string `yaml:"certificate"` // the node's server certificate (chain)
	Key         string `yaml:"key"`         // its private key
	ClientCA    string `yaml:"clientCA"`    // CA(s) that sign operators' client certificates
	CRL         string `yaml:"crl"`         // optional revocation list signed by the client CA
}

// Enabled reports whether the mTLS API is configured.
func (a API) Enabled() bool { return a.TLS.Certificate != "" }

// Address is the listen address with the default port filled in.
func (a API) Address() string {
	if a.Listen == "" {
		return ":" + strconv.Itoa(DefaultAPIPort)
	}
	return a.Listen
}

func (v *validator) api() {
	a := v.cfg.API
	t := a.TLS
	if a.Listen != "" {
		host, port, err := net.SplitHostPort(a.Listen)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
			v.fail("api.listen", "%q is not host:port (e.g. \":%d\" or \"10.0.0.5:%d\")", a.Listen, DefaultAPIPort, DefaultAPIPort)
		} else if host != "" && net.ParseIP(host) == nil {
			v.fail("api.listen", "%q: the host must be an IP address or empty for every address", a.Listen)
		}
	}
	set := 0
	for _, s := range []string{t.Certificate, t.Key, t.ClientCA} {
		if s != "" {
			set++
		}
	}
	if set == 0 {
		if t.CRL != "" {
			v.fail("api.tls.crl", "set without api.tls.certificate, key and clientCA: the API needs all three to serve mutual TLS")
		}
		if a.Listen != "" {
			v.fail("api.listen", "set without api.tls: the network API serves only mutual TLS; add api.tls.certificate, key and clientCA")
		}
		return
	}
	if set < 3 {
		for p, s := range map[string]string{"api.tls.certificate": t.Certificate, "api.tls.key": t.Key, "api.tls.clientCA": t.ClientCA} {
			if s == "" {
				v.fail(p, "missing: mutual TLS needs api.tls.certificate, api.tls.key and api.tls.clientCA together")
			}
		}
		return
	}
	if _, err := tls.X509KeyPair([]byte(t.Certificate), []byte(t.Key)); err != nil {
		v.fail("api.tls.certificate", "does not load with api.tls.key: %v (both must be PEM, and the key must belong to the certificate)", err)
	}
	var cas []*x509.Certificate
	rest := []byte(t.ClientCA)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			v.fail("api.tls.clientCA", "not a certificate: %v", err)
			return
		}
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		v.fail("api.tls.clientCA", "no PEM CERTIFICATE block: paste the CA certificate that signs operators' client certificates")
		return
	}
	if t.CRL != "" {
		der := []byte(t.CRL)
		if b, _ := pem.Decode(der); b != nil {
			der = b.Bytes
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			v.fail("api.tls.crl", "not a revocation list: %v", err)
			return
		}
		signed := false
		for _, ca := range cas {
			if crl.CheckSignatureFrom(ca) == nil {
				signed = true
			}
		}
		if !signed {
			v.fail("api.tls.crl", "not signed by any api.tls.clientCA: a CRL must come from the CA whose certificates it revokes")
		}
	}
}
