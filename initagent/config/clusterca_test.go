package config

import (
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"gopkg.in/yaml.v3"
)

func TestClusterCA(t *testing.T) {
	ca, caPair, err := pki.NewAuthority("kubernetes", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, otherPair, _ := pki.NewAuthority("other", time.Hour)
	leaf, _ := ca.Issue(pki.Request{CommonName: "leaf", Server: true})
	doc := func(c ClusterCA) []byte {
		b, _ := yaml.Marshal(map[string]any{"apiVersion": APIVersion, "kind": "MachineConfig",
			"cluster": map[string]any{"name": "c", "ca": c}})
		return b
	}
	if cfg, _, err := Parse(doc(ClusterCA{Certificate: string(caPair.CertPEM), Key: string(caPair.KeyPEM)})); err != nil ||
		cfg.Cluster.CA.Certificate == "" {
		t.Fatalf("valid CA refused: %v", err)
	}
	for _, c := range []struct {
		name string
		ca   ClusterCA
		path string
		msg  string
	}{
		{"certificate alone", ClusterCA{Certificate: string(caPair.CertPEM)}, "cluster.ca", "go together"},
		{"key alone", ClusterCA{Key: string(caPair.KeyPEM)}, "cluster.ca", "go together"},
		{"key of another CA", ClusterCA{Certificate: string(caPair.CertPEM), Key: string(otherPair.KeyPEM)}, "cluster.ca.certificate", "does not load with cluster.ca.key"},
		{"not a CA", ClusterCA{Certificate: string(leaf.CertPEM), Key: string(leaf.KeyPEM)}, "cluster.ca.certificate", "is not a CA"},
		{"chain", ClusterCA{Certificate: string(caPair.CertPEM) + string(leaf.CertPEM), Key: string(caPair.KeyPEM)}, "cluster.ca.certificate", "holds 2 certificates"},
	} {
		_, _, err := Parse(doc(c.ca))
		if err == nil || !strings.Contains(err.Error(), c.path+": ") || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %s: …%s…", c.name, err, c.path, c.msg)
		}
	}
}
