package slot

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash test runs a transaction in a child process (this test binary,
// re-executed) and SIGKILLs it at a fault point. The child prints
// crashReady and then blocks at the point, so the kill lands exactly there.
const (
	envCrashImage = "BALLAST_SLOT_CRASH_IMAGE"
	envCrashFault = "BALLAST_SLOT_CRASH_FAULT"
	crashReady    = "CRASH-POINT-REACHED"
)

// faultStore blocks after the store call that completes a fault point.
type faultStore struct {
	Store
	fault string
}

func (f faultStore) at(point string) {
	if f.fault != point {
		return
	}
	fmt.Println(crashReady)
	os.Stdout.Sync()
	time.Sleep(time.Minute) // killed here
	os.Exit(3)
}

func (f faultStore) Write(name string, h Header, data []byte) error {
	err := f.Store.Write(name, h, data)
	f.at("after-payload")
	return err
}

func (f faultStore) SetSelector(name string, s Selector) error {
	err := f.Store.SetSelector(name, s)
	switch {
	case s == Selector{}:
		f.at("after-retire")
	case s.Tries == 1:
		f.at("after-selector")
	case s.Priority == MaxPriority-1:
		f.at("mid-renormalise")
	case s.Successful:
		f.at("after-commit-selector")
	}
	return err
}

// TestCrashChild is the child's side; it does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(envCrashImage)
	if path == "" {
		t.Skip("runs only as the child of TestCrash")
	}
	g, err := NewGPT(path)
	if err != nil {
		t.Fatal(err)
	}
	s := faultStore{Store: g, fault: os.Getenv(envCrashFault)}
	name, err := Begin(s, Header{}, []byte("cfg-new"))
	if err != nil {
		t.Fatal(err)
	}
	s.at("before-commit")
	if err := Commit(s, name); err != nil {
		t.Fatal(err)
	}
}

func TestCrash(t *testing.T) {
	gen2 := func(t *testing.T, g *GPT) { mustCommit(t, g, mustBegin(t, g, "cfg-2")) }
	top := func(t *testing.T, g *GPT) {
		if err := g.SetSelector(A, Selector{Priority: MaxPriority, Successful: true}); err != nil {
			t.Fatal(err)
		}
	}
	type boot struct {
		name, data string
		sel        Selector
	}
	tests := []struct {
		fault string
		setup func(t *testing.T, g *GPT) // after cfg-1 is committed in A
		boots []boot                     // what two starts after the crash boot
	}{
		// The old config in the target slot is made unbootable before it is
		// overwritten, so a commit of the old config cannot bless the new one.
		{"after-retire", gen2, []boot{{B, "cfg-2", Selector{2, 0, true}}, {B, "cfg-2", Selector{2, 0, true}}}},
		{"after-payload", nil, []boot{{A, "cfg-1", good}, {A, "cfg-1", good}}},
		{"after-selector", nil, []boot{{B, "cfg-new", Selector{Priority: 2}}, {A, "cfg-1", good}}},
		{"before-commit", nil, []boot{{B, "cfg-new", Selector{Priority: 2}}, {A, "cfg-1", good}}},
		{"after-commit-selector", nil, []boot{{B, "cfg-new", Selector{2, 0, true}}, {B, "cfg-new", Selector{2, 0, true}}}},
		{"mid-renormalise", top, []boot{{A, "cfg-1", Selector{14, 0, true}}, {A, "cfg-1", Selector{14, 0, true}}}},
		{"none", nil, []boot{{B, "cfg-new", Selector{2, 0, true}}, {B, "cfg-new", Selector{2, 0, true}}}},
	}
	for _, tc := range tests {
		t.Run(tc.fault, func(t *testing.T) {
			t.Parallel()
			p := newImage(t)
			g, err := NewGPT(p)
			if err != nil {
				t.Fatal(err)
			}
			mustCommit(t, g, mustBegin(t, g, "cfg-1"))
			if tc.setup != nil {
				tc.setup(t, g)
			}
			g.Close()

			runChild(t, p, tc.fault)

			for i, want := range tc.boots {
				g, err := NewGPT(p) // a new start
				if err != nil {
					t.Fatal(err)
				}
				sl, data, err := Boot(g)
				g.Close()
				if err != nil || sl.Name != want.name || string(data) != want.data || sl.Selector != want.sel {
					t.Fatalf("start %d: Boot() = %s %+v %q %v, want %s %+v %q", i+1, sl.Name, sl.Selector, data, err, want.name, want.sel, want.data)
				}
			}
			// Both payloads stay whole: B's was synced before any fault point.
			wantB := "cfg-new"
			if tc.fault == "after-retire" {
				wantB = "cfg-2"
			}
			g, err = NewGPT(p)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			for name, want := range map[string]string{A: "cfg-1", B: wantB} {
				if _, data, err := g.Read(name); err != nil || string(data) != want {
					t.Errorf("Read(%s) = %q %v, want %q", name, data, err, want)
				}
			}
			if pr, bk := rawSelectors(t, p); pr != bk {
				t.Fatalf("GPT copies disagree: %+v / %+v", pr, bk)
			}
		})
	}
}

// runChild runs TestCrashChild against the image and kills it with SIGKILL
// once it reports the fault point (or lets it finish for fault "none").
func runChild(t *testing.T, image, fault string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), envCrashImage+"="+image, envCrashFault+"="+fault)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reached := make(chan bool, 1)
	var lines []string
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if sc.Text() == crashReady {
				reached <- true
				return
			}
		}
		reached <- false
	}()
	select {
	case ok := <-reached:
		if ok {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Signal(syscall.SIGKILL)
		t.Fatal("child did not reach the fault point in 20s")
	}
	err = cmd.Wait()
	if fault == "none" {
		if err != nil {
			t.Fatalf("child: %v\n%s\n%s", err, strings.Join(lines, "\n"), stderr.String())
		}
		return
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed at %s: %v\n%s\n%s", fault, err, strings.Join(lines, "\n"), stderr.String())
	}
}
