package config

import (
	"crypto/tls"
	"crypto/x509"
)

func (v *validator) clusterCA() {
	ca := v.cfg.Cluster.CA
	if ca.Certificate == "" && ca.Key == "" {
		return
	}
	if ca.Certificate == "" || ca.Key == "" {
		v.fail("cluster.ca", "certificate and key go together: set both (PEM) or neither (the first control-plane node then creates the CA)")
		return
	}
	pair, err := tls.X509KeyPair([]byte(ca.Certificate), []byte(ca.Key))
	if err != nil {
		v.fail("cluster.ca.certificate", "does not load with cluster.ca.key: %v (both must be PEM, and the key must belong to the certificate)", err)
		return
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		v.fail("cluster.ca.certificate", "not a certificate: %v", err)
		return
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		v.fail("cluster.ca.certificate", "%q is not a CA (needs basic constraints CA:true and the certSign key usage)", cert.Subject.CommonName)
	}
	if len(pair.Certificate) > 1 {
		v.fail("cluster.ca.certificate", "holds %d certificates: give the CA certificate alone", len(pair.Certificate))
	}
}
