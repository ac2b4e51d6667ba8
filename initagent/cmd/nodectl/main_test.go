package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/api"
	"github.com/ballast-os/ballast/initagent/boottime"
	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/txn"
	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// hostless applies nothing to the host: these configs have no interfaces,
// so the transaction is judged by the slots and validation alone.
type hostless struct{}

func (hostless) Apply(context.Context, *config.MachineConfig, string) error { return nil }

const okConfig = "apiVersion: ballast.dev/v1alpha1\nkind: MachineConfig\ncluster: {name: c1}\n"

func TestNodectlAgainstLocalAPI(t *testing.T) {
	dir := t.TempDir()
	store, err := slot.NewDir(filepath.Join(dir, "slots"))
	if err != nil {
		t.Fatal(err)
	}
	m := &txn.Manager{Store: store, Network: hostless{}}
	srv := &api.Server{Log: slog.New(slog.DiscardHandler), Txn: m, Hostname: "node-1", ConsoleAccess: api.Full,
		Sections: map[string]func() any{"boot": func() any {
			return []boottime.Mark{{Name: boottime.KernelHandover, Seconds: 1.5}, {Name: boottime.NetworkCommitted, Seconds: 2.25}}
		}}}
	sock := filepath.Join(dir, "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeLocal(ctx, sock) }()
	defer func() { cancel(); <-done }()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 99 {
			t.Fatal("socket never appeared")
		}
		time.Sleep(20 * time.Millisecond)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", okConfig)
	bad := write("bad.yaml", strings.Replace(okConfig, "cluster: {name: c1}", "cluster: {name: c1, role: boss}", 1))

	var out bytes.Buffer
	if err := run([]string{"apply", "--socket", sock, "--dry-run", "-f", good}, &out); err != nil {
		t.Fatalf("dry run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "DryRun") || !strings.Contains(out.String(), "+ cluster: {name: c1}") {
		t.Errorf("dry run output: %s", out.String())
	}
	out.Reset()
	if err := run([]string{"apply", "--socket", sock, "-f", good}, &out); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "generation 1 slot A: Available") {
		t.Errorf("apply output: %s", out.String())
	}
	out.Reset()
	err = run([]string{"apply", "--socket", sock, "-f", bad}, &out)
	if err == nil || !strings.Contains(err.Error(), `cluster.role: "boss": use control-plane or worker`) {
		t.Errorf("invalid apply: %v", err)
	}
	out.Reset()
	if err := run([]string{"status", "--socket", sock}, &out); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	if !strings.Contains(table, "node node-1") || !strings.Contains(table, "Available") || !strings.Contains(table, "InvalidConfig") ||
		!strings.Contains(table, "boot:\n     1.500s  +  1.500s  kernel handover\n     2.250s  +  0.750s  network committed\n") {
		t.Errorf("status table:\n%s", table)
	}
	if err := run([]string{"status", "--socket", filepath.Join(dir, "nope.sock")}, &out); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("unreachable agent: %v", err)
	}
}

func TestOpenImageChecksSHA256(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, []byte("image"), 0o644); err != nil {
		t.Fatal(err)
	}
	const sum = "6105d6cc76af400325e94d588ce511be5bfdbb73b437dc51eca43917d7a43e3d"
	f, got, err := openImage(p, "")
	if err != nil || got != sum {
		t.Fatalf("open: %v %s", err, got)
	}
	f.Close()
	if _, _, err := openImage(p, strings.Repeat("0", 64)); err == nil || !strings.Contains(err.Error(), "not the expected") {
		t.Errorf("wrong sha256 accepted: %v", err)
	}
	if _, _, err := openImage("http://192.0.2.1/img", ""); err == nil || !strings.Contains(err.Error(), "needs --sha256") {
		t.Errorf("URL without sha256: %v", err)
	}
}
