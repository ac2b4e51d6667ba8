package payload

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildPause builds the pause component into a fresh cache (seconds: it has
// no dependencies).
func buildPause(t *testing.T) (cache, bin string) {
	t.Helper()
	cache = t.TempDir()
	b := &Builder{CacheDir: cache}
	bins, err := b.Build(context.Background(), Pause)
	if err != nil {
		t.Fatal(err)
	}
	return cache, bins["pause"]
}

// TestPause builds the pause binary once (seconds) and checks it.
func TestPause(t *testing.T) {
	cache, bin := buildPause(t)
	t.Run("BuildCached", func(t *testing.T) { testPauseBuildCached(t, cache, bin) })
	t.Run("ExitsOnSignal", func(t *testing.T) { testPauseExitsOnSignal(t, bin) })
	t.Run("ReapsZombies", func(t *testing.T) { testPauseReapsZombies(t, bin) })
}

func testPauseBuildCached(t *testing.T, cache, bin string) {
	out, err := exec.Command(bin, "-v").Output()
	if err != nil || strings.TrimSpace(string(out)) != "pause.go "+PauseVersion {
		t.Errorf("pause -v = %q, %v; want \"pause.go %s\"", out, err, PauseVersion)
	}
	if file, err := exec.Command("file", bin).Output(); err == nil && !strings.Contains(string(file), "statically linked") {
		t.Errorf("pause is not static: %s", file)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	// A second Build reuses the cache entry rather than rebuilding it.
	again, err := (&Builder{CacheDir: cache}).Build(context.Background(), Pause)
	if err != nil {
		t.Fatal(err)
	}
	fi2, err := os.Stat(again["pause"])
	if err != nil {
		t.Fatal(err)
	}
	if again["pause"] != bin || !os.SameFile(fi, fi2) || !fi.ModTime().Equal(fi2.ModTime()) {
		t.Errorf("second build gave %s, want the cached %s", again["pause"], bin)
	}
	entries, err := os.ReadDir(cache)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary entry left in the cache: %s", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(bin), "build.json")); err != nil {
		t.Errorf("no build record: %v", err)
	}
	// The build time is remembered (any version) for the next cold build's estimates.
	if times := (&Builder{CacheDir: cache}).lastBuildTimes(); times[Pause] <= 0 {
		t.Errorf("build times %v: no time recorded for %s", times, Pause)
	}
}

func TestBuildUnknownComponent(t *testing.T) {
	_, err := (&Builder{CacheDir: t.TempDir()}).Build(context.Background(), "kube-nope")
	if err == nil || !strings.Contains(err.Error(), `"kube-nope": unknown`) {
		t.Errorf("Build(kube-nope) err = %v", err)
	}
}

func testPauseExitsOnSignal(t *testing.T, bin string) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(bin)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The warning (not PID 1) comes once the signal handlers are in place.
		r := bufio.NewReader(stderr)
		line, err := r.ReadString('\n')
		if err != nil || !strings.Contains(line, "pause should be the first process") {
			t.Fatalf("pause stderr = %q, %v; want the not-PID-1 warning", line, err)
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(r)
		if err := cmd.Wait(); err != nil || !strings.Contains(string(rest), "Shutting down, got signal") {
			t.Errorf("pause after %v: %v, stderr %q; want exit 0 and a shutdown message", sig, err, rest)
		}
	}
}

// testPauseReapsZombies runs pause as PID 1 of a new PID namespace, orphans
// a child into it and checks that pause reaps it once it exits.
func testPauseReapsZombies(t *testing.T, bin string) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a PID namespace")
	}
	needTool(t, "nsenter", "util-linux")
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start pause in a PID namespace: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pause := cmd.Process.Pid

	// sh exits at once; its sleep is reparented to the namespace's PID 1.
	// The sleep gets no pipe of ours, so CombinedOutput returns with sh.
	orphan := exec.Command("nsenter", "--target", strconv.Itoa(pause), "--pid", "--",
		"sh", "-c", "sleep 3600 </dev/null >/dev/null 2>&1 & exit 0")
	if out, err := orphan.CombinedOutput(); err != nil {
		t.Fatalf("nsenter: %v\n%s", err, out)
	}
	var child int
	deadline := time.Now().Add(60 * time.Second)
	for child == 0 && time.Now().Before(deadline) {
		child = childOf(t, pause)
		time.Sleep(20 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("the orphaned sleep never became a child of pause")
	}
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Reaped means gone from /proc; a zombie would stay.
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(child)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			state, _ := os.ReadFile("/proc/" + strconv.Itoa(child) + "/stat")
			t.Fatalf("child %d of pause not reaped: %s", child, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("pause as PID 1 after SIGTERM: %v, stderr %q", err, stderr.String())
	}
}

// childOf returns the PID of a child of parent, or 0.
func childOf(t *testing.T, parent int) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after "(comm)": state ppid ...
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(parent) {
			return pid
		}
	}
	return 0
}
