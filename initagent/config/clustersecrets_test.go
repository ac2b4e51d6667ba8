package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"gopkg.in/yaml.v3"
)

// testSecrets are generated once: three CAs and a service-account key.
var testSecrets = sync.OnceValue(func() (s struct {
	CA, EtcdCA, FrontProxyCA, Other, Leaf pki.Pair
	SAKey                                 string
}) {
	for _, p := range []*pki.Pair{&s.CA, &s.EtcdCA, &s.FrontProxyCA, &s.Other} {
		_, *p, _ = pki.NewAuthority("test", time.Hour)
	}
	ca, _ := pki.LoadAuthority(s.CA.CertPEM, s.CA.KeyPEM)
	s.Leaf, _ = ca.Issue(pki.Request{CommonName: "leaf", Server: true})
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	s.SAKey = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return s
})

const testToken = "abcdef.0123456789abcdef"

// clusterYAML is a cluster section's extra fields as indented YAML lines.
func clusterYAML(fields map[string]any) string {
	b, _ := yaml.Marshal(fields)
	var out strings.Builder
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			out.WriteString("  " + l)
		}
	}
	return out.String()
}

func ca(p pki.Pair) ClusterCA {
	return ClusterCA{Certificate: string(p.CertPEM), Key: string(p.KeyPEM)}
}

// workerJoin is what a worker needs to join: the CA certificate and the token.
func workerJoin() string {
	return clusterYAML(map[string]any{"token": testToken, "ca": map[string]string{"certificate": string(testSecrets().CA.CertPEM)}})
}

// TestClusterSecrets: every shared key and the token, by role: each rule
// refused with the field it is about.
func TestClusterSecrets(t *testing.T) {
	s := testSecrets()
	full := func() map[string]any {
		return map[string]any{"role": "control-plane", "peers": []string{"10.0.0.6"}, "token": testToken,
			"ca": ca(s.CA), "etcdCA": ca(s.EtcdCA), "frontProxyCA": ca(s.FrontProxyCA), "serviceAccountKey": s.SAKey}
	}
	worker := func() map[string]any {
		return map[string]any{"role": "worker", "token": testToken, "ca": map[string]string{"certificate": string(s.CA.CertPEM)}}
	}
	with := func(m map[string]any, k string, v any) map[string]any {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		cluster map[string]any
		path    string // "" means valid
		msg     string
	}{
		{"control plane with peers and every secret", full(), "", ""},
		{"lone control plane without secrets", map[string]any{"role": "control-plane"}, "", ""},
		{"lone control plane with its own CA", map[string]any{"role": "control-plane", "ca": ca(s.CA)}, "", ""},
		{"worker with certificate and token", worker(), "", ""},
		{"worker with the CA key", with(worker(), "ca", ca(s.CA)), "cluster.ca.key", "workers must not carry the CA key"},
		{"worker without the CA certificate", with(worker(), "ca", nil), "cluster.ca.certificate", "missing"},
		{"worker without a token", with(worker(), "token", nil), "cluster.token", "a worker joins with the cluster's bootstrap token"},
		{"worker with the etcd CA", with(worker(), "etcdCA", ca(s.EtcdCA)), "cluster.etcdCA", "workers must not carry"},
		{"worker with the service-account key", with(worker(), "serviceAccountKey", s.SAKey), "cluster.serviceAccountKey", "workers must not carry"},
		{"worker with a leaf as CA", with(worker(), "ca", map[string]string{"certificate": string(s.Leaf.CertPEM)}), "cluster.ca.certificate", "is not a CA"},
		{"bad token", with(full(), "token", "ABCDEF.0123456789abcdef"), "cluster.token", "not a bootstrap token"},
		{"short token", with(full(), "token", "abc.0123456789abcdef"), "cluster.token", "not a bootstrap token"},
		{"peers without a token", with(full(), "token", nil), "cluster.token", "creates the workers' bootstrap token"},
		{"peers without the etcd CA", with(full(), "etcdCA", nil), "cluster.etcdCA", "control planes with peers (cluster.peers) share this CA"},
		{"peers without the front-proxy CA", with(full(), "frontProxyCA", nil), "cluster.frontProxyCA", "share this CA"},
		{"peers without the cluster CA", with(full(), "ca", nil), "cluster.ca", "share this CA"},
		{"peers without the service-account key", with(full(), "serviceAccountKey", nil), "cluster.serviceAccountKey", "one shared key"},
		{"etcd CA key alone", with(full(), "etcdCA", ClusterCA{Key: string(s.EtcdCA.KeyPEM)}), "cluster.etcdCA", "go together"},
		{"etcd CA key of another CA", with(full(), "etcdCA", ClusterCA{Certificate: string(s.EtcdCA.CertPEM), Key: string(s.Other.KeyPEM)}),
			"cluster.etcdCA.certificate", "does not load with cluster.etcdCA.key"},
		{"front-proxy CA that is a leaf", with(full(), "frontProxyCA", ca(s.Leaf)), "cluster.frontProxyCA.certificate", "is not a CA"},
		{"service-account key not PEM", with(full(), "serviceAccountKey", "secret"), "cluster.serviceAccountKey", "not a PEM private key"},
		{"service-account key a certificate", with(full(), "serviceAccountKey", string(s.CA.CertPEM)), "cluster.serviceAccountKey", "not an RSA or ECDSA private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := yaml.Marshal(map[string]any{"apiVersion": APIVersion, "kind": "MachineConfig", "cluster": tc.cluster})
			_, _, err := Parse(b)
			if tc.path == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.path+": ") || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v, want %s: …%s…", err, tc.path, tc.msg)
			}
		})
	}
}
