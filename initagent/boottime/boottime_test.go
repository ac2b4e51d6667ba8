package boottime

import (
	"strings"
	"sync"
	"testing"
)

func TestTimeline(t *testing.T) {
	now := 100.0
	tl := &Timeline{clock: func() float64 { return now }}
	tl.base = 40 // a container node started at 40 s of its host's uptime
	tl.Mark(ModulesLoaded)
	now = 101.25
	tl.Mark(NetworkCommitted)
	now = 130
	tl.Mark(ModulesLoaded) // again: the first time stays
	got := tl.Marks()
	want := []Mark{{ModulesLoaded, 60}, {NetworkCommitted, 61.25}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("marks %v, want %v", got, want)
	}
	var b strings.Builder
	tl.WriteMetrics(&b)
	for _, line := range []string{
		"# TYPE ballast_boot_milestone_seconds gauge",
		`ballast_boot_milestone_seconds{milestone="modules loaded"} 60`,
		`ballast_boot_milestone_seconds{milestone="network committed"} 61.25`,
	} {
		if !strings.Contains(b.String(), line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, b.String())
		}
	}
}

// From the kernel: the handover is the kernel's own time before PID 1, a
// positive uptime; later marks come after it.
func TestFromKernel(t *testing.T) {
	tl := New(true)
	tl.Mark(NodeAPIServing)
	m := tl.Marks()
	if len(m) != 2 || m[0].Name != KernelHandover || m[0].Seconds <= 0 || m[1].Seconds < m[0].Seconds {
		t.Errorf("marks %v: want the kernel handover at a positive uptime, then node API serving", m)
	}
	c := New(false)
	c.Mark(NodeAPIServing)
	if m := c.Marks(); len(m) != 1 || m[0].Seconds < 0 || m[0].Seconds > 60 {
		t.Errorf("container timeline %v: want only node API serving, seconds since New", m)
	}
}

func TestConcurrentMarks(t *testing.T) {
	tl := New(false)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { tl.Mark(KubeletStarted); tl.Marks() })
	}
	wg.Wait()
	if n := len(tl.Marks()); n != 1 {
		t.Errorf("%d marks, want 1", n)
	}
}
