package config

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"gopkg.in/yaml.v3"
)

func TestAPISection(t *testing.T) {
	ca, caPair, err := pki.NewAuthority("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _, _ := pki.NewAuthority("other", time.Hour)
	node, _ := ca.Issue(pki.Request{CommonName: "n1", Server: true})
	node2, _ := ca.Issue(pki.Request{CommonName: "n2", Server: true})
	crl, _ := ca.RevocationList([]*x509.Certificate{}, 1, time.Hour)
	foreignCRL, _ := other.RevocationList(nil, 1, time.Hour)
	doc := func(a API) string {
		b, _ := yaml.Marshal(map[string]any{"apiVersion": APIVersion, "kind": "MachineConfig", "api": a})
		return string(b)
	}
	full := APITLS{Certificate: string(node.CertPEM), Key: string(node.KeyPEM), ClientCA: string(caPair.CertPEM)}
	withCRL := full
	withCRL.CRL = string(crl)
	cfg, _, err := Parse([]byte(doc(API{Listen: "10.0.0.5:50001", TLS: withCRL})))
	if err != nil || !cfg.API.Enabled() || cfg.API.Address() != "10.0.0.5:50001" {
		t.Fatalf("valid api section: %v", err)
	}
	if cfg, _, err := Parse([]byte(doc(API{TLS: full}))); err != nil || cfg.API.Address() != ":50000" {
		t.Fatalf("default listen: %v", err)
	}
	mismatched := full
	mismatched.Key = string(node2.KeyPEM)
	noCA := full
	noCA.ClientCA = ""
	badCA := full
	badCA.ClientCA = "not pem"
	foreign := full
	foreign.CRL = string(foreignCRL)
	for _, c := range []struct {
		name string
		api  API
		path string
		msg  string
	}{
		{"listen without tls", API{Listen: ":50000"}, "api.listen", "set without api.tls"},
		{"bad listen", API{Listen: "50000", TLS: full}, "api.listen", `"50000" is not host:port`},
		{"host name listen", API{Listen: "node:50000", TLS: full}, "api.listen", "must be an IP address"},
		{"missing client CA", API{TLS: noCA}, "api.tls.clientCA", "missing: mutual TLS needs"},
		{"key of another certificate", API{TLS: mismatched}, "api.tls.certificate", "does not load with api.tls.key"},
		{"client CA not PEM", API{TLS: badCA}, "api.tls.clientCA", "no PEM CERTIFICATE block"},
		{"CRL from another CA", API{TLS: foreign}, "api.tls.crl", "not signed by any api.tls.clientCA"},
		{"CRL alone", API{TLS: APITLS{CRL: string(crl)}}, "api.tls.crl", "set without api.tls.certificate"},
	} {
		_, _, err := Parse([]byte(doc(c.api)))
		if err == nil || !strings.Contains(err.Error(), c.path+": ") || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %s: …%s…", c.name, err, c.path, c.msg)
		}
	}
}
