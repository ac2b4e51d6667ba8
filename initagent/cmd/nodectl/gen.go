package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/initagent/api/pki"
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
	s, err := pki.NewClusterSecrets(*validity)
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
