package ignite

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v3 "github.com/coreos/ignition/v2/config/v3_5"
	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
)

func parse(t *testing.T, doc string) *igntypes.Config {
	t.Helper()
	cfg, rpt, err := v3.ParseCompatibleVersion([]byte(doc))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, rpt)
	}
	return &cfg
}

func TestApplyFilesDirsLinksUsers(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("compressed payload\n"))
	zw.Close()
	sum := sha512.Sum512([]byte("compressed payload\n")) // Ignition hashes the decompressed content
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("from http\n")) }))
	defer srv.Close()
	doc := fmt.Sprintf(`{"ignition": {"version": "3.4.0"},
	"storage": {
		"directories": [{"path": "/var/lib/app", "mode": 448}],
		"files": [
			{"path": "/etc/motd", "contents": {"source": "data:,hello%%20node%%0A"}, "mode": 420},
			{"path": "/var/lib/app/blob", "contents": {"source": "data:;base64,%s", "compression": "gzip", "verification": {"hash": "sha512-%s"}}},
			{"path": "/etc/from-http", "contents": {"source": "%s/x"}}
		],
		"links": [{"path": "/etc/localtime", "target": "/usr/share/zoneinfo/UTC"}]
	},
	"passwd": {"users": [{"name": "ops", "uid": 1500, "sshAuthorizedKeys": ["ssh-ed25519 AAAA ops@example"]}]}}`,
		base64.StdEncoding.EncodeToString(gz.Bytes()), hex.EncodeToString(sum[:]), srv.URL)
	root := t.TempDir()
	if err := Apply(context.Background(), parse(t, doc), Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"etc/motd":                      "hello node\n",
		"var/lib/app/blob":              "compressed payload\n",
		"etc/from-http":                 "from http\n",
		"home/ops/.ssh/authorized_keys": "ssh-ed25519 AAAA ops@example\n",
	} {
		got, err := os.ReadFile(filepath.Join(root, path))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "var/lib/app")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("/var/lib/app mode = %v, %v; want 0700", st.Mode(), err)
	}
	if target, err := os.Readlink(filepath.Join(root, "etc/localtime")); err != nil || target != "/usr/share/zoneinfo/UTC" {
		t.Errorf("link = %q, %v", target, err)
	}
	passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if !strings.Contains(string(passwd), "ops:x:1500:1500::/home/ops:/bin/sh\n") {
		t.Errorf("/etc/passwd:\n%s", passwd)
	}
}

func TestApplyRefusesAndWritesNothing(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"read-only image", `{"ignition": {"version": "3.0.0"}, "storage": {"files": [
			{"path": "/etc/ok", "contents": {"source": "data:,x"}},
			{"path": "/usr/bin/evil", "contents": {"source": "data:,x"}}]}}`,
			"ignition.storage.files[1].path: /usr/bin/evil is on the read-only system image: write under /etc, /var, /root, /home, /opt, /srv"},
		{"bad hash", `{"ignition": {"version": "3.0.0"}, "storage": {"files": [
			{"path": "/etc/ok", "contents": {"source": "data:,x"}},
			{"path": "/etc/h", "contents": {"source": "data:,x", "verification": {"hash": "sha512-121b4774a759924a2929c4a412fb6e31b9aaa746466840efcc4a76d69a94149e2364e3983d646feafaa1b511785e5c9e90aedc30da6a6bead5520ecc99c6626a"}}}]}}`,
			"ignition.storage.files[1].contents.verification.hash: content has sha512"},
		{"systemd", `{"ignition": {"version": "3.0.0"}, "storage": {"files": [{"path": "/etc/ok", "contents": {"source": "data:,x"}}]},
			"systemd": {"units": [{"name": "x.service", "enabled": true}]}}`,
			"ignition.systemd.units[0]: ballast runs no systemd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			err := Apply(context.Background(), parse(t, tc.doc), Options{Root: root})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Apply = %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(root, "etc/ok")); err == nil {
				t.Error("a valid file was written although the config was refused")
			}
		})
	}
}

func TestApplyExistingFileNeedsOverwrite(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/motd"), []byte("old"), 0o644)
	doc := `{"ignition": {"version": "3.0.0"}, "storage": {"files": [{"path": "/etc/motd", "contents": {"source": "data:,new"}}]}}`
	err := Apply(context.Background(), parse(t, doc), Options{Root: root})
	if err == nil || !strings.Contains(err.Error(), "/etc/motd already exists: set overwrite: true") {
		t.Fatalf("Apply = %v", err)
	}
	doc = strings.Replace(doc, `"path": "/etc/motd"`, `"path": "/etc/motd", "overwrite": true`, 1)
	if err := Apply(context.Background(), parse(t, doc), Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(got) != "new" {
		t.Errorf("/etc/motd = %q, want new", got)
	}
}
