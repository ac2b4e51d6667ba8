package qemutests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/pid1/readiness"
)

// vipConfig is a control-plane node of the lab cluster: the API VIP
// 192.0.2.100, the other node as its only VRRP peer, and the lab's
// apiserver stand-in behind the local API proxy.
// Control planes with peers share the cluster's keys (the config refuses
// them without); these nodes never bootstrap, so the keys only validate.
func vipConfig(addr, peer string, priority int, secrets string) string {
	return strings.Replace(fmt.Sprintf(`apiVersion: ballast.dev/v1alpha1
kind: MachineConfig
network:
  interfaces:
    - name: eth0
      addresses: [%s/24]
      routes:
        - {to: default, via: 192.0.2.1}
cluster:
  name: lab
  domain: example
  role: control-plane
  apiVIPs: [192.0.2.100]
  apiServers: ["192.0.2.1:6443"]
  peers: [%s]
  vip: {priority: %d, advertIntervalMs: 300} # TCG is slow: keep adverts well apart
`, addr, peer, priority), "  role: control-plane\n", "  role: control-plane\n"+secrets, 1)
}

// TestAPIVIPMovesWhenMasterPowersOff boots two control-plane images on one
// lab bridge: the higher-priority node holds the API VIP (its proxy has a
// healthy apiserver); powering it off moves the VIP to the other node,
// whose gratuitous ARP updates the lab's neighbour entry.
func TestAPIVIPMovesWhenMasterPowersOff(t *testing.T) {
	lab := newLab(t)
	// An apiserver stand-in answering /readyz over TLS.
	ln, err := lab.Listen("tcp", "192.0.2.1:6443")
	must(t, err)
	cert, err := selfSigned()
	must(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }),
		ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	t.Cleanup(func() { srv.Close() })

	secrets := clusterSecrets(t)
	configs := map[string]string{
		"/a.yaml": vipConfig("192.0.2.10", "192.0.2.11", 150, secrets),
		"/b.yaml": vipConfig("192.0.2.11", "192.0.2.10", 100, secrets),
	}
	must(t, lab.Serve(8080, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := configs[r.URL.Path]; ok {
			fmt.Fprint(w, c)
			return
		}
		http.NotFound(w, r)
	})))
	boot := func(name, mac string) *VM {
		sum := sha256.Sum256([]byte(configs["/"+name+".yaml"]))
		return bootOnLab(t, lab, "control-plane", mac, "ballast.hostname=cp-"+name,
			"ballast.config=http://192.0.2.1:8080/"+name+".yaml", "ballast.config.sha256="+hex.EncodeToString(sum[:]))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*bootTimeout)
	defer cancel()
	a := boot("a", "52:54:00:00:00:41")
	_, _, err = a.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	_, _, err = a.Expect(ctx, regexp.MustCompile(`msg="vrrp state" part=vip router=api .*to=master`), 0)
	must(t, err)
	b := boot("b", "52:54:00:00:00:42")
	_, _, err = b.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	_, _, err = b.Expect(ctx, regexp.MustCompile(`msg="vrrp state" part=vip router=api .*to=backup`), 0)
	must(t, err)

	must(t, lab.Ping(ctx, "192.0.2.100"))
	if mac := neighbour(lab, "192.0.2.100"); mac != "52:54:00:00:00:41" {
		t.Fatalf("VIP answers from %q, want node a (52:54:00:00:00:41)", mac)
	}

	must(t, a.Powerdown(ctx))
	_, _, err = b.Expect(ctx, regexp.MustCompile(`msg="vrrp state" part=vip router=api .*to=master`), 0)
	must(t, err)
	// The gratuitous ARP moves the lab's entry without it having to expire.
	for neighbour(lab, "192.0.2.100") != "52:54:00:00:00:42" {
		if ctx.Err() != nil {
			t.Fatalf("lab's neighbour entry for the VIP still %q after node b took over", neighbour(lab, "192.0.2.100"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	must(t, lab.Ping(ctx, "192.0.2.100"))
}

// neighbour returns the lab gateway's link-layer address for ip.
func neighbour(lab *Lab, ip string) string {
	out, _ := exec.Command("ip", "-n", lab.Name, "neigh", "show", ip).Output()
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// selfSigned makes a throwaway serving certificate for the lab's apiserver stand-in.
func selfSigned() (tls.Certificate, error) {
	ca, _, err := pki.NewAuthority("lab apiserver", time.Hour)
	if err != nil {
		return tls.Certificate{}, err
	}
	p, err := ca.Issue(pki.Request{CommonName: "apiserver", IPs: []net.IP{net.ParseIP("192.0.2.1")}, Server: true})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(p.CertPEM, p.KeyPEM)
}

// clusterSecrets are the cluster section's shared keys as indented YAML
// lines (what nodectl gen cluster-secrets makes).
func clusterSecrets(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	block := func(pemData []byte) string {
		return "|\n      " + strings.ReplaceAll(strings.TrimSpace(string(pemData)), "\n", "\n      ") + "\n"
	}
	for _, name := range []string{"ca", "etcdCA", "frontProxyCA"} {
		_, pair, err := pki.NewAuthority(name, 24*time.Hour)
		must(t, err)
		fmt.Fprintf(&b, "  %s:\n    certificate: %s    key: %s", name, block(pair.CertPEM), block(pair.KeyPEM))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	must(t, err)
	fmt.Fprintf(&b, "  serviceAccountKey: %s", strings.Replace(block(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "      ", "    ", -1))
	b.WriteString("  token: abcdef.0123456789abcdef\n")
	return b.String()
}

// TestVIPConfigsValidate: the VIP test's configs pass the agent's
// validation (no VM needed).
func TestVIPConfigsValidate(t *testing.T) {
	secrets := clusterSecrets(t)
	for _, doc := range []string{vipConfig("192.0.2.10", "192.0.2.11", 150, secrets), vipConfig("192.0.2.11", "192.0.2.10", 100, secrets)} {
		if _, _, err := config.Parse([]byte(doc)); err != nil {
			t.Errorf("%v\n%s", err, doc)
		}
	}
}
