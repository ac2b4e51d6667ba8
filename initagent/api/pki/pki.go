// Package pki makes the certificates of the node API: a CA, node (server)
// and operator (client) certificates, and revocation lists. nodectl uses it
// for `nodectl pki`; tests use it for real mutual TLS.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Authority signs certificates.
type Authority struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Pair is a PEM certificate and its PEM private key.
type Pair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// NewAuthority creates a self-signed CA valid for validity from now.
func NewAuthority(name string, validity time.Duration) (*Authority, Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, Pair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"ballast"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, Pair{}, err
	}
	cert, _ := x509.ParseCertificate(der)
	p, err := pair(der, key)
	return &Authority{Cert: cert, Key: key}, p, err
}

// LoadAuthority reads a CA from PEM.
func LoadAuthority(certPEM, keyPEM []byte) (*Authority, error) {
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("certificate %q is not a CA", cert.Subject.CommonName)
	}
	return &Authority{Cert: cert, Key: key}, nil
}

// Request describes a certificate to issue.
type Request struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	Server       bool // serverAuth usage
	Client       bool // clientAuth usage
	NotBefore    time.Time
	NotAfter     time.Time
}

// Issue signs a new key pair for req.
func (a *Authority) Issue(req Request) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	if req.NotBefore.IsZero() {
		req.NotBefore = time.Now().Add(-5 * time.Minute)
	}
	if req.NotAfter.IsZero() {
		req.NotAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.CommonName, Organization: req.Organization},
		DNSNames:     req.DNSNames,
		IPAddresses:  req.IPs,
		NotBefore:    req.NotBefore,
		NotAfter:     req.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if req.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if req.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, &key.PublicKey, a.Key)
	if err != nil {
		return Pair{}, err
	}
	return pair(der, key)
}

// RevocationList returns a PEM CRL signed by a that revokes certs, valid
// for validity.
func (a *Authority) RevocationList(certs []*x509.Certificate, number int64, validity time.Duration) ([]byte, error) {
	now := time.Now()
	var entries []x509.RevocationListEntry
	for _, c := range certs {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(number),
		ThisUpdate:                now.Add(-time.Minute),
		NextUpdate:                now.Add(validity),
		RevokedCertificateEntries: entries,
	}, a.Cert, a.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// Revoke returns a new revocation list, signed by a, that revokes cert
// and everything crlPEM (a's previous list; empty: none) revoked, numbered
// one higher than crlPEM and valid for validity, and how many certificates
// it revokes. `nodectl pki revoke` writes it for api.tls.crl.
func (a *Authority) Revoke(crlPEM []byte, cert *x509.Certificate, validity time.Duration) ([]byte, int, error) {
	if err := cert.CheckSignatureFrom(a.Cert); err != nil {
		return nil, 0, fmt.Errorf("certificate %q was not issued by %q: %w", cert.Subject, a.Cert.Subject, err)
	}
	revoked := []*x509.Certificate{cert}
	number := int64(1)
	if len(crlPEM) > 0 {
		crl, err := ParseRevocationList(crlPEM)
		if err != nil {
			return nil, 0, fmt.Errorf("previous revocation list: %w", err)
		}
		if err := crl.CheckSignatureFrom(a.Cert); err != nil {
			return nil, 0, fmt.Errorf("previous revocation list was not signed by %q: %w", a.Cert.Subject, err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(cert.SerialNumber) != 0 {
				revoked = append(revoked, &x509.Certificate{SerialNumber: new(big.Int).Set(e.SerialNumber)})
			}
		}
		if crl.Number != nil {
			number = crl.Number.Int64() + 1
		}
	}
	out, err := a.RevocationList(revoked, number, validity)
	return out, len(revoked), err
}

// ParseCertificate reads the first certificate of a PEM document.
func ParseCertificate(data []byte) (*x509.Certificate, error) {
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ParseCertificates reads every certificate of a PEM document.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

// ParseKey reads a PEM private key (PKCS#8, EC or PKCS#1).
func ParseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM private key block")
	}
	var k any
	var err error
	switch b.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	}
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return s, nil
}

// ParseRevocationList reads a PEM (or DER) CRL.
func ParseRevocationList(data []byte) (*x509.RevocationList, error) {
	if b, _ := pem.Decode(data); b != nil {
		data = b.Bytes
	}
	return x509.ParseRevocationList(data)
}

func pair(der []byte, key *ecdsa.PrivateKey) (Pair, error) {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}),
	}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}
