package agent

import (
	"log/slog"
	"slices"
	"testing"

	"github.com/ballast-os/ballast/initagent/apiproxy"
)

// TestProxyBackendsUnion: the API proxy gets the config's apiservers and
// those registered in the cluster, each once, and keeps the config's
// when the cluster's change.
func TestProxyBackendsUnion(t *testing.T) {
	p, err := apiproxy.New(apiproxy.Config{Logger: slog.New(slog.DiscardHandler), Frontends: []string{"127.0.0.1:7445"},
		Backends: []string{"10.0.0.11:6443"}, InsecureUntilCA: true})
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{Log: slog.New(slog.DiscardHandler)}
	a.ha.proxy = p
	cfg := parse(t, "cluster:\n  apiServers: [\"10.0.0.11:6443\"]\n")
	backends := func() []string {
		var out []string
		for _, b := range p.Status().Backends {
			out = append(out, b.Addr)
		}
		slices.Sort(out)
		return out
	}
	a.discovered = []string{"10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"}
	a.setProxyBackends(cfg)
	if got := backends(); !slices.Equal(got, []string{"10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"}) {
		t.Errorf("backends %v", got)
	}
	a.discovered = []string{"10.0.0.12:6443"}
	a.setProxyBackends(cfg)
	var up []string
	for _, b := range p.Status().Backends {
		if b.State != apiproxy.StateDraining {
			up = append(up, b.Addr)
		}
	}
	slices.Sort(up)
	if !slices.Equal(up, []string{"10.0.0.11:6443", "10.0.0.12:6443"}) {
		t.Errorf("backends after 10.0.0.13 left %v", up)
	}
}
