package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/config"
)

// runGen makes what a cluster's nodes share:
//
//	nodectl gen cluster-secrets [--out FILE]
//
// writes the machine config's cluster fragment with the Kubernetes CA,
// etcd CA, front-proxy CA, service-account key and bootstrap token, for
// every control plane; workers take ca.certificate and token only.
func runGen(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "cluster-secrets" {
		return errors.New("usage: nodectl gen cluster-secrets [--out FILE]")
	}
	fs := flag.NewFlagSet("nodectl gen cluster-secrets", flag.ContinueOnError)
	file := fs.String("out", "", "file to write (default: stdout); mode 0600")
	validity := fs.Duration("validity", 10*365*24*time.Hour, "validity of the CAs")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	s, err := clusterSecrets(*validity)
	if err != nil {
		return err
	}
	data, err := yaml.Marshal(map[string]any{"cluster": s})
	if err != nil {
		return err
	}
	head := "# Shared by the cluster's nodes. Control planes: all of it. Workers: ca.certificate and token only.\n"
	if *file == "" {
		_, err := io.WriteString(out, head+string(data))
		return err
	}
	if err := os.WriteFile(*file, []byte(head+string(data)), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s: merge its cluster section into each control plane's machine config; workers take ca.certificate and token\n", *file)
	return nil
}

// secrets is the cluster fragment, in the machine config's field names.
type secrets struct {
	CA                config.ClusterCA `yaml:"ca"`
	EtcdCA            config.ClusterCA `yaml:"etcdCA"`
	FrontProxyCA      config.ClusterCA `yaml:"frontProxyCA"`
	ServiceAccountKey string           `yaml:"serviceAccountKey"`
	Token             string           `yaml:"token"`
}

func clusterSecrets(validity time.Duration) (secrets, error) {
	var s secrets
	for _, c := range []struct {
		name string
		to   *config.ClusterCA
	}{{"kubernetes", &s.CA}, {"etcd-ca", &s.EtcdCA}, {"front-proxy-ca", &s.FrontProxyCA}} {
		_, pair, err := pki.NewAuthority(c.name, validity)
		if err != nil {
			return s, err
		}
		*c.to = config.ClusterCA{Certificate: string(pair.CertPEM), Key: string(pair.KeyPEM)}
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
