package pki

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"time"
)

// ClusterSecrets are what a Kubernetes cluster's nodes share, in the
// machine config's cluster field names: control planes carry all of it,
// workers ca.certificate and token only.
type ClusterSecrets struct {
	CA                CAPair `yaml:"ca"`
	EtcdCA            CAPair `yaml:"etcdCA"`
	FrontProxyCA      CAPair `yaml:"frontProxyCA"`
	ServiceAccountKey string `yaml:"serviceAccountKey"`
	Token             string `yaml:"token"`
}

// CAPair is a CA certificate and key in PEM.
type CAPair struct {
	Certificate string `yaml:"certificate"`
	Key         string `yaml:"key"`
}

// NewClusterSecrets makes the three CAs (Kubernetes, etcd, front proxy),
// an RSA service-account key and a bootstrap token.
func NewClusterSecrets(validity time.Duration) (ClusterSecrets, error) {
	var s ClusterSecrets
	for _, c := range []struct {
		name string
		to   *CAPair
	}{{"kubernetes", &s.CA}, {"etcd-ca", &s.EtcdCA}, {"front-proxy-ca", &s.FrontProxyCA}} {
		_, pair, err := NewAuthority(c.name, validity)
		if err != nil {
			return s, err
		}
		*c.to = CAPair{Certificate: string(pair.CertPEM), Key: string(pair.KeyPEM)}
	}
	// RSA as kubeadm makes sa.key: every token verifier accepts it.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return s, err
	}
	s.ServiceAccountKey = string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	s.Token = randomString(6) + "." + randomString(16)
	return s, nil
}

// randomString is n characters of [a-z0-9], the bootstrap token alphabet.
func randomString(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, n)
	buf := make([]byte, 1)
	for len(out) < n {
		_, _ = rand.Read(buf) // never fails (crypto/rand)
		if buf[0] < 252 {     // 252 = 7*36: no bias
			out = append(out, alphabet[int(buf[0])%len(alphabet)])
		}
	}
	return string(out)
}
