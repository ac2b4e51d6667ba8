// Package boottime records when the node reached each step of its boot, in
// seconds since the kernel started, so a slow boot explains itself in
// `nodectl status` (section "boot") and in the Prometheus metrics
// (ballast_boot_milestone_seconds).
//
//	t := boottime.New(true)
//	t.Mark(boottime.ModulesLoaded)
package boottime

import (
	"fmt"
	"io"
	"math"
	"sync"

	"golang.org/x/sys/unix"
)

// The milestones the agent marks, in boot order.
const (
	KernelHandover   = "kernel handover" // PID 1 started: the kernel's own boot before it
	ModulesLoaded    = "modules loaded"
	NetworkCommitted = "network committed" // the boot's network transaction settled
	ServicesStarted  = "services started"  // DNS, API proxy, VIP
	NodeAPIServing   = "node API serving"  // the readiness line
	ImagesReady      = "images ready"      // the system image's images registered with containerd
	ContainerdReady  = "containerd ready"
	KubeletStarted   = "kubelet started"
	APIServerHealthy = "kube-apiserver healthy"
	PodNetwork       = "pod network configured" // the node's pod CIDRs known, the CNI config written
	NodeReady        = "node Ready"
	// A control plane's kube-controller-manager and kube-scheduler both
	// answer /healthz: from here pods get scheduled. On the bootstrapping
	// node of a slow machine it comes after node Ready.
	ControlPlaneRunning = "controller manager and scheduler running"
)

// Mark is one milestone reached.
type Mark struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

// Timeline is the milestones of one boot. Safe for concurrent use.
type Timeline struct {
	mu    sync.Mutex
	base  float64
	marks []Mark
	clock func() float64
}

// New starts a timeline. With fromKernel the times count from the kernel's
// start (CLOCK_BOOTTIME) and KernelHandover is marked now; without (a
// container node, whose kernel started long before) they count from now.
func New(fromKernel bool) *Timeline {
	t := &Timeline{clock: bootClock}
	if fromKernel {
		t.Mark(KernelHandover)
	} else {
		t.base = t.clock()
	}
	return t
}

func bootClock() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// Mark records that the boot reached name now; only the first time counts
// (a daemon restarted later does not move its milestone).
func (t *Timeline) Mark(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.marks {
		if m.Name == name {
			return
		}
	}
	t.marks = append(t.marks, Mark{Name: name, Seconds: math.Round((t.clock()-t.base)*1000) / 1000})
}

// Marks returns the milestones reached, in the order reached.
func (t *Timeline) Marks() []Mark {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Mark(nil), t.marks...)
}

// WriteMetrics writes the milestones in the Prometheus text format.
func (t *Timeline) WriteMetrics(w io.Writer) {
	marks := t.Marks()
	fmt.Fprintln(w, "# HELP ballast_boot_milestone_seconds Seconds from the kernel's start (a container node: the agent's) to each boot milestone.")
	fmt.Fprintln(w, "# TYPE ballast_boot_milestone_seconds gauge")
	for _, m := range marks {
		fmt.Fprintf(w, "ballast_boot_milestone_seconds{milestone=%q} %g\n", m.Name, m.Seconds)
	}
}
