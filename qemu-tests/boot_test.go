package qemutests

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/pid1/readiness"
)

// Generous: under TCG on a loaded 2-core CI machine a boot takes a few seconds.
const bootTimeout = 90 * time.Second

var (
	modulesRE  = regexp.MustCompile(`msg="kernel modules" loaded=(\d+) already=\d+ failed=(\d+)`)
	poweroffRE = regexp.MustCompile(`^ballast: poweroff$`)
	powerOffRE = regexp.MustCompile(`reboot: Power down`)
	buttonRE   = regexp.MustCompile(`msg="shutting down" action=poweroff reason="power button `)
)

// TestBootControlPlaneToReadyThenACPIPowerOff boots the control-plane PXE
// artifacts, waits for the readiness line, presses the ACPI power button and
// checks that the node shuts down cleanly and QEMU exits.
func TestBootControlPlaneToReadyThenACPIPowerOff(t *testing.T) {
	vm := bootVM(t, "control-plane", "ballast.hostname=cp-1")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()

	m, next, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	if m[1] != "cp-1" || m[2] != "control-plane" || m[3] != "control-plane" {
		t.Errorf("readiness line %q: want hostname=cp-1 recipe=control-plane role=control-plane", m[0])
	}
	// The boot modules load in the background: their summary may come
	// before or after the readiness line.
	m, _, err = vm.Expect(ctx, modulesRE, 0)
	must(t, err)
	if m[2] != "0" {
		t.Errorf("%s kernel modules failed to load", m[2])
	}

	// The power button driver may still be probing right after ready; press until the agent reacts.
	pressed := false
	for !pressed {
		must(t, vm.Powerdown(ctx))
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		_, next2, err := vm.Expect(pctx, buttonRE, next)
		pcancel()
		if err == nil {
			pressed, next = true, next2
		} else if ctx.Err() != nil {
			t.Fatal("the agent never reacted to the ACPI power button")
		}
	}
	_, next, err = vm.Expect(ctx, poweroffRE, next)
	must(t, err)
	_, _, err = vm.Expect(ctx, powerOffRE, next)
	must(t, err)
	must(t, vm.Wait(ctx))
}

// TestBootWorkerPowerOffFromCmdline boots the worker image with
// ballast.shutdown=poweroff: it must reach ready and power itself off.
func TestBootWorkerPowerOffFromCmdline(t *testing.T) {
	vm := bootVM(t, "worker", "ballast.shutdown=poweroff")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	m, next, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	if m[1] != "ballast-worker" {
		t.Errorf("hostname %q, want the recipe's ballast-worker", m[1])
	}
	_, _, err = vm.Expect(ctx, powerOffRE, next)
	must(t, err)
	must(t, vm.Wait(ctx))
}

// TestBootRebootRequest checks the reboot path: with -no-reboot QEMU exits
// on the guest's reboot, and the console says it was a restart.
func TestBootRebootRequest(t *testing.T) {
	vm := bootVM(t, "control-plane", "ballast.shutdown=reboot")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	_, next, err := vm.Expect(ctx, readiness.Pattern, 0)
	must(t, err)
	_, _, err = vm.Expect(ctx, regexp.MustCompile(`reboot: Restarting system`), next)
	must(t, err)
	must(t, vm.Wait(ctx))
}
