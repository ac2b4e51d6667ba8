package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"regexp"
)

// TokenRE is a kubeadm bootstrap token: id.secret.
var TokenRE = regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)

// clusterSecrets checks the cluster's shared keys against the node's role:
// a control plane with peers carries every shared CA, the service-account
// key and the token; a worker carries the CA certificate and the token,
// and no key.
func (v *validator) clusterSecrets() {
	c := &v.cfg.Cluster
	worker := c.Role == "worker"
	joining := c.Role == "control-plane" && len(c.Peers) > 0
	if worker {
		if c.CA.Key != "" {
			v.fail("cluster.ca.key", "workers must not carry the CA key: remove it (a worker needs cluster.ca.certificate only)")
		}
		if c.CA.Certificate == "" {
			v.fail("cluster.ca.certificate", "missing: a worker trusts the apiservers through the cluster CA certificate; add it (PEM)")
		} else {
			v.caCert("cluster.ca.certificate", c.CA.Certificate)
		}
		for _, f := range []struct {
			path string
			set  bool
		}{{"cluster.etcdCA", c.EtcdCA != ClusterCA{}}, {"cluster.frontProxyCA", c.FrontProxyCA != ClusterCA{}}, {"cluster.serviceAccountKey", c.ServiceAccountKey != ""}} {
			if f.set {
				v.fail(f.path, "workers must not carry the control plane's keys: remove it")
			}
		}
	} else {
		v.caPair("cluster.ca", c.CA, joining)
		v.caPair("cluster.etcdCA", c.EtcdCA, joining)
		v.caPair("cluster.frontProxyCA", c.FrontProxyCA, joining)
		switch {
		case c.ServiceAccountKey != "":
			if block, _ := pem.Decode([]byte(c.ServiceAccountKey)); block == nil {
				v.fail("cluster.serviceAccountKey", "not a PEM private key (e.g. `openssl genrsa 2048`, or nodectl gen cluster-secrets)")
			} else if _, err := parsePrivateKey(block); err != nil {
				v.fail("cluster.serviceAccountKey", "not an RSA or ECDSA private key: %v", err)
			}
		case joining:
			v.fail("cluster.serviceAccountKey", "missing: control planes with peers sign service-account tokens with one shared key; add it (nodectl gen cluster-secrets makes one)")
		}
	}
	switch {
	case c.Token != "":
		if !TokenRE.MatchString(c.Token) {
			v.fail("cluster.token", "not a bootstrap token: write 6 then 16 characters of [a-z0-9] joined by a dot, e.g. abcdef.0123456789abcdef")
		}
	case worker:
		v.fail("cluster.token", "missing: a worker joins with the cluster's bootstrap token; add it (nodectl gen cluster-secrets makes one)")
	case joining:
		v.fail("cluster.token", "missing: the control plane that bootstraps the cluster creates the workers' bootstrap token; add the same token to every node (nodectl gen cluster-secrets makes one)")
	}
}

// caPair checks a CA certificate and key set together; required: a control
// plane with peers must share them.
func (v *validator) caPair(path string, ca ClusterCA, required bool) {
	if ca.Certificate == "" && ca.Key == "" {
		if required {
			v.fail(path, "missing: control planes with peers (cluster.peers) share this CA: add its certificate and key (PEM), the same on every control plane (nodectl gen cluster-secrets makes them)")
		}
		return
	}
	if ca.Certificate == "" || ca.Key == "" {
		v.fail(path, "certificate and key go together: set both (PEM) or neither (a lone control-plane node then creates the CA)")
		return
	}
	pair, err := tls.X509KeyPair([]byte(ca.Certificate), []byte(ca.Key))
	if err != nil {
		v.fail(path+".certificate", "does not load with %s.key: %v (both must be PEM, and the key must belong to the certificate)", path, err)
		return
	}
	if len(pair.Certificate) > 1 {
		v.fail(path+".certificate", "holds %d certificates: give the CA certificate alone", len(pair.Certificate))
		return
	}
	v.caCert(path+".certificate", ca.Certificate)
}

func (v *validator) caCert(path, certPEM string) {
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil || block.Type != "CERTIFICATE" {
		v.fail(path, "not a PEM certificate")
		return
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		v.fail(path, "not a certificate: %v", err)
		return
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		v.fail(path, "%q is not a CA (needs basic constraints CA:true and the certSign key usage)", cert.Subject.CommonName)
	}
}

func parsePrivateKey(block *pem.Block) (any, error) {
	switch block.Type {
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(block.Bytes)
	default:
		return x509.ParsePKCS8PrivateKey(block.Bytes)
	}
}
