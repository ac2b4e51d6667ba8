package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/config"
)

// runPKI makes the credentials of the node API in a directory:
//
//	nodectl pki init   --dir D --node NAME --ip IP [--dns NAME] [--client admin]
//	nodectl pki issue  --dir D (--node NAME --ip IP | --client NAME)
//	nodectl pki revoke --dir D --cert D/client-bob.crt
//
// init creates the CA, a node certificate, a client certificate and a
// nodeconfig; each node certificate comes with node-NAME.api.yaml, the
// machine config's api section to paste.
func runPKI(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: nodectl pki init|issue|revoke --dir DIR ...")
	}
	fs := flag.NewFlagSet("nodectl pki "+args[0], flag.ContinueOnError)
	dir := fs.String("dir", ".", "directory holding the CA and certificates")
	node := fs.String("node", "", "node name (certificate common name)")
	ips := fs.String("ip", "", "node addresses for its certificate, comma separated")
	dnsNames := fs.String("dns", "", "node DNS names for its certificate, comma separated")
	client := fs.String("client", "", "operator name for a client certificate")
	certFile := fs.String("cert", "", "revoke: the client certificate to revoke")
	validity := fs.Duration("validity", 365*24*time.Hour, "validity of issued certificates")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	caCert, caKey := filepath.Join(*dir, "ca.crt"), filepath.Join(*dir, "ca.key")
	switch args[0] {
	case "init":
		if _, err := os.Stat(caKey); err == nil {
			return fmt.Errorf("%s exists: use `nodectl pki issue` to add nodes or clients", caKey)
		}
		if *node == "" || *ips == "" {
			return errors.New("pki init needs --node NAME and --ip ADDRESS")
		}
		if *client == "" {
			*client = "admin"
		}
		_, pair, err := pki.NewAuthority("ballast node API CA", 10*365*24*time.Hour)
		if err != nil {
			return err
		}
		if err := writePair(caCert, caKey, pair); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s and %s\n", caCert, caKey)
	case "issue", "revoke":
	default:
		return fmt.Errorf("unknown pki command %q: use init, issue or revoke", args[0])
	}
	ca, err := loadCA(caCert, caKey)
	if err != nil {
		return err
	}
	if args[0] == "revoke" {
		return revoke(out, ca, *dir, *certFile)
	}
	if *node == "" && *client == "" {
		return errors.New("pki issue needs --node NAME --ip ADDRESS or --client NAME")
	}
	if *node != "" {
		var addrs []net.IP
		for _, s := range splitList(*ips) {
			ip := net.ParseIP(s)
			if ip == nil {
				return fmt.Errorf("--ip %q is not an IP address", s)
			}
			addrs = append(addrs, ip)
		}
		if len(addrs) == 0 {
			return errors.New("--node needs --ip: nodectl connects to the node by address")
		}
		pair, err := ca.Issue(pki.Request{CommonName: *node, DNSNames: splitList(*dnsNames), IPs: addrs, Server: true,
			NotAfter: time.Now().Add(*validity)})
		if err != nil {
			return err
		}
		certPath, keyPath := filepath.Join(*dir, "node-"+*node+".crt"), filepath.Join(*dir, "node-"+*node+".key")
		if err := writePair(certPath, keyPath, pair); err != nil {
			return err
		}
		caPEM, _ := os.ReadFile(caCert)
		snippet, _ := yaml.Marshal(map[string]config.API{"api": {TLS: config.APITLS{
			Certificate: string(pair.CertPEM), Key: string(pair.KeyPEM), ClientCA: string(caPEM)}}})
		apiPath := filepath.Join(*dir, "node-"+*node+".api.yaml")
		if err := os.WriteFile(apiPath, snippet, 0o600); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s, %s and %s (the machine config's api section for %s)\n", certPath, keyPath, apiPath, *node)
		if err := addNode(filepath.Join(*dir, "nodeconfig.yaml"), *node, net.JoinHostPort(addrs[0].String(), strconv.Itoa(config.DefaultAPIPort)), *client); err != nil {
			return err
		}
	}
	if *client != "" {
		certPath, keyPath := filepath.Join(*dir, "client-"+*client+".crt"), filepath.Join(*dir, "client-"+*client+".key")
		if _, err := os.Stat(certPath); err == nil {
			return nil
		}
		pair, err := ca.Issue(pki.Request{CommonName: *client, Organization: []string{"ballast:operators"}, Client: true,
			NotAfter: time.Now().Add(*validity)})
		if err != nil {
			return err
		}
		if err := writePair(certPath, keyPath, pair); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s and %s\n", certPath, keyPath)
	}
	return nil
}

// addNode adds or updates a node in the nodeconfig at path.
func addNode(path, name, endpoint, client string) error {
	nc := &NodeConfig{}
	if _, err := os.Stat(path); err == nil {
		if nc, err = loadNodeConfig(path); err != nil {
			return err
		}
	}
	if client == "" {
		client = "admin"
	}
	n := Node{Name: name, Endpoint: endpoint, CA: "ca.crt", Certificate: "client-" + client + ".crt", Key: "client-" + client + ".key"}
	found := false
	for i := range nc.Nodes {
		if nc.Nodes[i].Name == name {
			nc.Nodes[i], found = n, true
		}
	}
	if !found {
		nc.Nodes = append(nc.Nodes, n)
	}
	if nc.Current == "" {
		nc.Current = name
	}
	data, err := yaml.Marshal(nc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

func revoke(out io.Writer, ca *pki.Authority, dir, certFile string) error {
	if certFile == "" {
		return errors.New("pki revoke needs --cert FILE")
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return err
	}
	cert, err := pki.ParseCertificate(data)
	if err != nil {
		return fmt.Errorf("%s: %w", certFile, err)
	}
	crlPath := filepath.Join(dir, "crl.pem")
	old, err := os.ReadFile(crlPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	pemCRL, n, err := ca.Revoke(old, cert, 365*24*time.Hour)
	if err != nil {
		return fmt.Errorf("revoke %s (revocation list %s): %w", certFile, crlPath, err)
	}
	if err := os.WriteFile(crlPath, pemCRL, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s revoking %d certificate(s); put it in each node's api.tls.crl and apply\n", crlPath, n)
	return nil
}

func loadCA(certPath, keyPath string) (*pki.Authority, error) {
	c, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("%w: run `nodectl pki init` first", err)
	}
	k, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	return pki.LoadAuthority(c, k)
}

func writePair(certPath, keyPath string, p pki.Pair) error {
	if err := os.WriteFile(keyPath, p.KeyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, p.CertPEM, 0o644)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
