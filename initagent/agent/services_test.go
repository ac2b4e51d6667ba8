package agent

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/vip"
)

func parse(t *testing.T, doc string) *config.MachineConfig {
	t.Helper()
	cfg, _, err := config.Parse([]byte("apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\n" + doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

const haDoc = `network:
  interfaces:
    - {name: eth0, addresses: [10.0.0.5/24, "2001:db8::5/64"]}
cluster:
  name: prod
  domain: example.com
  apiVIPs: [10.0.0.100, "2001:db8::100"]
  ingressVIPs: [10.0.0.101]
  apiServers: ["10.0.0.11:6443", "10.0.0.12:6443"]
  peers: [10.0.0.6, 10.0.0.7, "2001:db8::6"]
`

func eth0(netip.Addr) (string, error) { return "eth0", nil }

func TestServicesFromConfig(t *testing.T) {
	cfg := parse(t, haDoc+"  vip: {priority: 150, preempt: true, advertIntervalMs: 200, ingressCheck: {tcp: \"127.0.0.1:443\", weight: 20}}\n")
	pc, ok := apiProxyConfig(cfg, "control-plane")
	if !ok {
		t.Fatal("no proxy for a config with apiServers")
	}
	if got := strings.Join(pc.Frontends, " "); got != "127.0.0.1:7445 10.0.0.100:6443 [2001:db8::100]:6443" {
		t.Errorf("frontends %s", got)
	}
	if !pc.InsecureUntilCA || len(pc.Backends) != 2 {
		t.Errorf("proxy config %+v", pc)
	}
	if pw, _ := apiProxyConfig(cfg, "worker"); len(pw.Frontends) != 1 {
		t.Errorf("worker frontends %v, want only the node-local one", pw.Frontends)
	}

	vc, err := vipConfig(cfg, "control-plane", true, eth0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range vc.Routers {
		names = append(names, r.Name)
	}
	if strings.Join(names, ",") != "api,api-v6,ingress" {
		t.Fatalf("routers %v", names)
	}
	api, api6, ing := vc.Routers[0], vc.Routers[1], vc.Routers[2]
	if api.Priority != 150 || !api.Preempt || api.AdvertInterval != 200*time.Millisecond || len(api.Peers) != 2 || api.VIPs[0].String() != "10.0.0.100/32" {
		t.Errorf("api router %+v", api)
	}
	if len(api6.Peers) != 1 || api6.VIPs[0].String() != "2001:db8::100/128" {
		t.Errorf("api-v6 router %+v", api6)
	}
	if len(api.Tracks) != 1 || api.Tracks[0].Name != apiProxyTrack || api.Tracks[0].Fault || 254-int(api.Tracks[0].Weight) > vip.YieldPriority {
		t.Errorf("api router must yield the VIP (priority %d from any) when the proxy has no backend, not give it up: %+v", vip.YieldPriority, api.Tracks)
	}
	if len(ing.Tracks) != 1 || ing.Tracks[0].TCP != "127.0.0.1:443" || ing.Tracks[0].Weight != 20 {
		t.Errorf("ingress tracks %+v", ing.Tracks)
	}
	if vc.Cluster != "prod" || api.VRID != 0 {
		t.Errorf("VRIDs must be derived from the cluster name unless set: %+v", vc)
	}

	if w, _ := vipConfig(cfg, "worker", true, eth0); w != nil {
		t.Error("a worker runs no VIP speaker by default")
	}
	off := parse(t, haDoc+"services: {vip: false, apiProxy: false}\n")
	if _, ok := apiProxyConfig(off, "control-plane"); ok {
		t.Error("services.apiProxy: false still runs the proxy")
	}
	if v, _ := vipConfig(off, "control-plane", false, eth0); v != nil {
		t.Error("services.vip: false still runs the speaker")
	}
	_, err = vipConfig(cfg, "control-plane", true, func(netip.Addr) (string, error) { return "", errors.New("no interface has a subnet holding it") })
	if err == nil || !strings.Contains(err.Error(), "set cluster.vip.interface") {
		t.Errorf("unknown interface: %v", err)
	}
}
