package ignite

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
)

// configServer serves Ignition configs by path on loopback.
func configServer(t *testing.T, tls bool, docs map[string]string) *httptest.Server {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		doc, ok := docs[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(doc))
	})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv
}

func sha512Of(s string) string {
	h := sha512.Sum512([]byte(s))
	return "sha512-" + hex.EncodeToString(h[:])
}
func sha256Of(s string) string {
	h := sha256.Sum256([]byte(s))
	return "sha256-" + hex.EncodeToString(h[:])
}

const merged = `{"ignition": {"version": "3.3.0"},
	"storage": {"files": [{"path": "/etc/from-merge", "contents": {"source": "data:,merged"}},
		{"path": "/etc/both", "overwrite": true, "contents": {"source": "data:,child"}}]},
	"passwd": {"users": [{"name": "ops", "uid": 1500}]}}`

// Defect 14: ignition.config.merge was silently ignored; a PXE farm's pointer
// config then gave a node without its files.
func TestApplyConfigMerge(t *testing.T) {
	srv := configServer(t, false, map[string]string{"/node.ign": merged})
	for _, hash := range []string{"", sha512Of(merged), sha256Of(merged)} {
		name, _, _ := strings.Cut(hash, "-")
		t.Run("hash="+name, func(t *testing.T) {
			verification := ""
			if hash != "" {
				verification = fmt.Sprintf(`, "verification": {"hash": %q}`, hash)
			}
			ign := parse(t, fmt.Sprintf(`{"ignition": {"version": "3.4.0", "config": {"merge": [{"source": "%s/node.ign"%s}]}},
				"storage": {"files": [{"path": "/etc/pointer", "contents": {"source": "data:,pointer"}},
					{"path": "/etc/both", "contents": {"source": "data:,parent"}}]}}`, srv.URL, verification))
			root := t.TempDir()
			if err := Apply(context.Background(), ign, Options{Root: root}); err != nil {
				t.Fatal(err)
			}
			for p, want := range map[string]string{"etc/pointer": "pointer", "etc/from-merge": "merged", "etc/both": "child"} {
				if got := readFile(t, root, p); got != want {
					t.Errorf("/%s = %q, want %q", p, got, want)
				}
			}
			if got := readFile(t, root, "etc/passwd"); !strings.Contains(got, "ops:x:1500:") {
				t.Errorf("/etc/passwd = %q", got)
			}
		})
	}
}

func TestApplyConfigReplace(t *testing.T) {
	srv := configServer(t, false, map[string]string{"/node.ign": merged})
	ign := parse(t, fmt.Sprintf(`{"ignition": {"version": "3.4.0", "config": {"replace": {"source": "%s/node.ign", "verification": {"hash": %q}}}},
		"storage": {"files": [{"path": "/etc/pointer", "contents": {"source": "data:,pointer"}}]}}`, srv.URL, sha512Of(merged)))
	root := t.TempDir()
	if err := Apply(context.Background(), ign, Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, root, "etc/from-merge"); got != "merged" {
		t.Errorf("/etc/from-merge = %q", got)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/pointer")); err == nil {
		t.Error("replace kept the pointer config's own file")
	}
}

func TestApplyConfigReferenceRefused(t *testing.T) {
	srv := configServer(t, false, map[string]string{
		"/node.ign":    merged,
		"/systemd.ign": `{"ignition": {"version": "3.4.0"}, "systemd": {"units": [{"name": "a.service"}]}}`,
		"/gz.ign":      "not gzip",
	})
	for _, tc := range []struct{ name, ref, want string }{
		{"hash mismatch", fmt.Sprintf(`"merge": [{"source": "%s/node.ign", "verification": {"hash": %q}}]`, srv.URL, sha512Of("other")),
			"ignition.ignition.config.merge[0].verification.hash: content has sha512"},
		{"not found", fmt.Sprintf(`"replace": {"source": "%s/missing.ign"}`, srv.URL),
			"ignition.ignition.config.replace.source: GET " + srv.URL + "/missing.ign: 404 Not Found"},
		{"what the node refuses", fmt.Sprintf(`"merge": [{"source": "%s/systemd.ign"}]`, srv.URL),
			"ignition.ignition.config.merge[0](" + srv.URL + "/systemd.ign).systemd.units[0]: ballast runs no systemd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ign := parse(t, `{"ignition": {"version": "3.4.0", "config": {`+tc.ref+`}},
				"storage": {"files": [{"path": "/etc/pointer", "contents": {"source": "data:,pointer"}}]}}`)
			root := t.TempDir()
			err := Apply(context.Background(), ign, Options{Root: root})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Apply = %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(root, "etc/pointer")); err == nil {
				t.Error("the pointer config's file was written although its reference failed")
			}
		})
	}
}

// A config that references itself ends with an error, not a hang.
func TestApplyConfigReferenceLoop(t *testing.T) {
	var url string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"ignition": {"version": "3.4.0", "config": {"merge": [{"source": "%s/self.ign"}]}}}`, url)
	}))
	defer srv.Close()
	url = srv.URL
	ign := parse(t, fmt.Sprintf(`{"ignition": {"version": "3.4.0", "config": {"merge": [{"source": "%s/self.ign"}]}}}`, url))
	err := Apply(context.Background(), ign, Options{Root: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "nest deeper than 10") {
		t.Fatalf("Apply = %v", err)
	}
}

// Defect 14: ignition.security.tls.certificateAuthorities was ignored, so an
// https source signed by a private CA failed at first boot.
func TestApplyHTTPSWithConfigCA(t *testing.T) {
	srv := configServer(t, true, map[string]string{"/node.ign": merged, "/file": "over tls"})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	ca := "data:;base64," + base64.StdEncoding.EncodeToString(caPEM)
	body := fmt.Sprintf(`"config": {"merge": [{"source": "%[1]s/node.ign"}]}},
		"storage": {"files": [{"path": "/etc/tls-file", "contents": {"source": "%[1]s/file"}}]}}`, srv.URL)

	root := t.TempDir()
	withCA := parse(t, fmt.Sprintf(`{"ignition": {"version": "3.4.0", "security": {"tls": {"certificateAuthorities": [{"source": %q, "verification": {"hash": %q}}]}}, `, ca, sha256Of(string(caPEM)))+body)
	if err := Apply(context.Background(), withCA, Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, root, "etc/tls-file"); got != "over tls" {
		t.Errorf("/etc/tls-file = %q", got)
	}
	if got := readFile(t, root, "etc/from-merge"); got != "merged" {
		t.Errorf("/etc/from-merge = %q", got)
	}

	without := parse(t, `{"ignition": {"version": "3.4.0", `+body)
	if err := Apply(context.Background(), without, Options{Root: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA: %v, want a certificate error", err)
	}
}

// Defect 14: ignition.proxy was ignored.
func TestApplyProxy(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.String())
		mu.Unlock()
		if r.URL.Host != "config.example" {
			http.Error(w, "not proxied", http.StatusBadGateway)
			return
		}
		switch r.URL.Path {
		case "/node.ign":
			w.Write([]byte(merged))
		case "/file":
			w.Write([]byte("via proxy"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer proxy.Close()
	ign := parse(t, fmt.Sprintf(`{"ignition": {"version": "3.4.0",
		"proxy": {"httpProxy": %q, "noProxy": ["internal.example"]},
		"config": {"merge": [{"source": "http://config.example/node.ign"}]}},
		"storage": {"files": [{"path": "/etc/proxied", "contents": {"source": "http://config.example/file"}}]}}`, proxy.URL))
	root := t.TempDir()
	if err := Apply(context.Background(), ign, Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, root, "etc/proxied"); got != "via proxy" {
		t.Errorf("/etc/proxied = %q", got)
	}
	if got := readFile(t, root, "etc/from-merge"); got != "merged" {
		t.Errorf("/etc/from-merge = %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "GET http://config.example/node.ign GET http://config.example/file"; strings.Join(seen, " ") != want {
		t.Errorf("proxy saw %q, want %q", seen, want)
	}
}

func TestProxyNoProxy(t *testing.T) {
	p := "http://proxy:3128"
	fn := proxyFunc(igntypes.Proxy{HTTPProxy: &p, NoProxy: []igntypes.NoProxyItem{"internal.example", "10.0.0.0/8", "192.0.2.1"}})
	for u, want := range map[string]bool{
		"http://config.example/x":        true,
		"http://internal.example/x":      false,
		"http://a.internal.example:80/x": false,
		"http://10.1.2.3/x":              false,
		"http://192.0.2.1/x":             false,
		"http://192.0.2.2/x":             true,
		"http://127.0.0.1/x":             false,
		"https://config.example/x":       false, // no httpsProxy
	} {
		req, _ := http.NewRequest("GET", u, nil)
		got, err := fn(req)
		if err != nil || (got != nil) != want {
			t.Errorf("%s: proxy %v, %v; want proxied %v", u, got, err, want)
		}
	}
}
