package ignite

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// reboot simulates a reboot of an installed node: the root (initramfs) is
// rebuilt, /var (STATE) stays.
func reboot(t *testing.T, root string) {
	t.Helper()
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "var" {
			if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func readFile(t *testing.T, root, p string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		t.Errorf("%s: %v", p, err)
	}
	return string(data)
}

// Defect 10: files, links and users outside /var vanished after the first
// reboot of an installed node, since the marker on STATE stopped Ignition
// from running again.
func TestBootReappliesRootEveryBoot(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "served %s\n", r.URL.Path)
	}))
	doc := fmt.Sprintf(`{"ignition": {"version": "3.4.0"},
	"storage": {
		"directories": [{"path": "/var/lib/app", "mode": 448}, {"path": "/opt/tools", "mode": 493}],
		"files": [
			{"path": "/etc/motd", "contents": {"source": "data:,hello"}},
			{"path": "/etc/app.conf", "contents": {"source": "%[1]s/app.conf"}},
			{"path": "/var/lib/app/seed", "contents": {"source": "%[1]s/seed"}}
		],
		"links": [{"path": "/etc/localtime", "target": "/usr/share/zoneinfo/UTC"}]
	},
	"passwd": {"users": [{"name": "ops", "uid": 1500, "sshAuthorizedKeys": ["ssh-ed25519 AAAA ops@example"]}]}}`, srv.URL)
	ign := parse(t, doc)
	root := t.TempDir()
	ctx := context.Background()

	res, err := Boot(ctx, ign, Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "first boot" || res.Files != 3 || res.Users != 1 {
		t.Errorf("first boot result = %+v", res)
	}
	// The application changes its file on STATE; the server goes away.
	os.WriteFile(filepath.Join(root, "var/lib/app/seed"), []byte("changed by the app\n"), 0o644)
	srv.Close()

	for boot := 2; boot <= 3; boot++ {
		reboot(t, root)
		res, err := Boot(ctx, ign, Options{Root: root})
		if err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
		if res.Mode != "from STATE" {
			t.Errorf("boot %d: mode %q, want from STATE", boot, res.Mode)
		}
		if got := readFile(t, root, "etc/motd"); got != "hello" {
			t.Errorf("boot %d: /etc/motd = %q", boot, got)
		}
		if got := readFile(t, root, "etc/app.conf"); got != "served /app.conf\n" {
			t.Errorf("boot %d: /etc/app.conf = %q (fetched at first boot, kept on STATE)", boot, got)
		}
		if got := readFile(t, root, "home/ops/.ssh/authorized_keys"); got != "ssh-ed25519 AAAA ops@example\n" {
			t.Errorf("boot %d: authorized_keys = %q", boot, got)
		}
		if got := readFile(t, root, "etc/passwd"); !strings.Contains(got, "ops:x:1500:1500:") {
			t.Errorf("boot %d: /etc/passwd = %q", boot, got)
		}
		if l, err := os.Readlink(filepath.Join(root, "etc/localtime")); err != nil || l != "/usr/share/zoneinfo/UTC" {
			t.Errorf("boot %d: /etc/localtime = %q, %v", boot, l, err)
		}
		if st, err := os.Stat(filepath.Join(root, "opt/tools")); err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("boot %d: /opt/tools = %v, %v", boot, st, err)
		}
		if got := readFile(t, root, "var/lib/app/seed"); got != "changed by the app\n" {
			t.Errorf("boot %d: /var/lib/app/seed = %q: entries on STATE are applied once", boot, got)
		}
	}
	// A second call in the same boot changes nothing and does not fail.
	if res, err := Boot(ctx, ign, Options{Root: root}); err != nil || res.Mode != "already applied" {
		t.Errorf("second Boot in one boot = %+v, %v", res, err)
	}
}

// A config changed after the first boot (nodectl apply) rules the root on
// the next boot; its entries under /var are not applied again.
func TestBootConfigChanged(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	first := parse(t, `{"ignition": {"version": "3.4.0"}, "storage": {"files": [
		{"path": "/etc/motd", "contents": {"source": "data:,one"}},
		{"path": "/var/lib/once", "contents": {"source": "data:,once"}}]}}`)
	if _, err := Boot(ctx, first, Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	reboot(t, root)
	second := parse(t, `{"ignition": {"version": "3.4.0"}, "storage": {"files": [
		{"path": "/etc/motd", "contents": {"source": "data:,two"}},
		{"path": "/var/lib/once", "contents": {"source": "data:,again"}}]}}`)
	res, err := Boot(ctx, second, Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "config changed" || res.Files != 1 {
		t.Errorf("result = %+v", res)
	}
	if got := readFile(t, root, "etc/motd"); got != "two" {
		t.Errorf("/etc/motd = %q, want two", got)
	}
	if got := readFile(t, root, "var/lib/once"); got != "once" {
		t.Errorf("/var/lib/once = %q, want once", got)
	}
	reboot(t, root)
	if res, err := Boot(ctx, second, Options{Root: root}); err != nil || res.Mode != "from STATE" || readFile(t, root, "etc/motd") != "two" {
		t.Errorf("third boot = %+v, %v", res, err)
	}
}

// Defect 10: a file under /etc/kubernetes made /etc/kubernetes a directory on
// the root, and the runtime refuses to start Kubernetes then ("exists and is
// not the link"). Such files go to STATE, where the runtime links it.
func TestBootKubernetesFilesGoToState(t *testing.T) {
	root := t.TempDir()
	ign := parse(t, `{"ignition": {"version": "3.4.0"}, "storage": {"files": [
		{"path": "/etc/kubernetes/audit-policy.yaml", "contents": {"source": "data:,rules"}},
		{"path": "/etc/kubernetes/manifests/extra.yaml", "contents": {"source": "data:,pod"}}]}}`)
	if _, err := Boot(context.Background(), ign, Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	// what runtime.prepareHost requires of /etc/kubernetes
	if fi, err := os.Lstat(filepath.Join(root, "etc/kubernetes")); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("/etc/kubernetes is a %v: the runtime then refuses to start Kubernetes", fi.Mode())
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if got := readFile(t, root, "var/lib/ballast/kubernetes/audit-policy.yaml"); got != "rules" {
		t.Errorf("audit policy on STATE = %q", got)
	}
	if got := readFile(t, root, "var/lib/ballast/kubernetes/manifests/extra.yaml"); got != "pod" {
		t.Errorf("static pod on STATE = %q", got)
	}
}

// Defect 10: the README's "all or nothing" — a failure while writing left
// the entries written before it in place.
func TestApplyAllOrNothingWhenWritingFails(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	// /etc/blocker is a file, so /etc/blocker/x cannot be written; that is
	// found only when writing.
	os.WriteFile(filepath.Join(root, "etc/blocker"), []byte("file"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/motd"), []byte("old"), 0o644)
	ign := parse(t, `{"ignition": {"version": "3.4.0"}, "storage": {"files": [
		{"path": "/etc/new/dir/a", "contents": {"source": "data:,a"}},
		{"path": "/etc/motd", "overwrite": true, "contents": {"source": "data:,new"}},
		{"path": "/etc/blocker/x", "contents": {"source": "data:,x"}}]},
		"passwd": {"users": [{"name": "ops"}]}}`)
	err := Apply(context.Background(), ign, Options{Root: root})
	if err == nil || !strings.Contains(err.Error(), "ignition.storage.files[2]") {
		t.Fatalf("Apply = %v, want an error for files[2]", err)
	}
	var left []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if p != root {
			rel, _ := filepath.Rel(root, p)
			left = append(left, rel)
		}
		return nil
	})
	if want := "etc etc/blocker etc/motd"; strings.Join(left, " ") != want {
		t.Errorf("after a failed Apply the root holds %q, want %q", left, want)
	}
	if got := readFile(t, root, "etc/motd"); got != "old" {
		t.Errorf("/etc/motd = %q, want old", got)
	}
}

// A hard link to a file of the same config, and modes with setuid bits.
func TestApplyHardLinkAndSpecialModes(t *testing.T) {
	root := t.TempDir()
	ign := parse(t, `{"ignition": {"version": "3.4.0"}, "storage": {
		"files": [{"path": "/opt/bin/tool", "mode": 2541, "contents": {"source": "data:,bin"}}],
		"links": [{"path": "/opt/bin/tool2", "target": "/opt/bin/tool", "hard": true}]}}`)
	if err := Apply(context.Background(), ign, Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	a, err1 := os.Stat(filepath.Join(root, "opt/bin/tool"))
	b, err2 := os.Stat(filepath.Join(root, "opt/bin/tool2"))
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		t.Fatalf("hard link: %v, %v, same file %v", err1, err2, err1 == nil && err2 == nil && os.SameFile(a, b))
	}
	if a.Mode()&fs.ModeSetuid == 0 || a.Mode().Perm() != 0o755 {
		t.Errorf("mode 2541 (04755) gave %v", a.Mode())
	}
}

// Owners given by name resolve against the users the config declares.
func TestApplyOwnerByName(t *testing.T) {
	root := t.TempDir()
	ign := parse(t, `{"ignition": {"version": "3.4.0"},
		"storage": {"files": [{"path": "/home/ops/notes", "user": {"name": "ops"}, "group": {"name": "ops"}, "contents": {"source": "data:,x"}}]},
		"passwd": {"users": [{"name": "ops", "uid": 1500}]}}`)
	if err := Apply(context.Background(), ign, Options{Root: root}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(root, "home/ops/notes"))
	if err != nil {
		t.Fatal(err)
	}
	if uid, gid := owners(st); uid != 1500 || gid != 1500 {
		t.Errorf("owner %d:%d, want 1500:1500", uid, gid)
	}
	ign = parse(t, `{"ignition": {"version": "3.4.0"},
		"storage": {"files": [{"path": "/etc/x", "user": {"name": "nobody-here"}, "contents": {"source": "data:,x"}}]}}`)
	if err := Apply(context.Background(), ign, Options{Root: t.TempDir()}); err == nil || !strings.Contains(err.Error(), `ignition.storage.files[0].user.name: no user "nobody-here"`) {
		t.Errorf("unknown user: %v", err)
	}
}

func owners(fi fs.FileInfo) (uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}
