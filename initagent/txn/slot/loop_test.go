package slot

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestGPTLoopDevice runs the GPT store against a real block device: the image
// attached to a loop device. The attributes are then read from the image's
// raw bytes after detaching.
func TestGPTLoopDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for losetup")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("losetup not installed")
	}
	p := newImage(t)
	out, err := exec.Command(losetup, "--find", "--show", p).CombinedOutput()
	if err != nil {
		t.Skipf("cannot attach a loop device here: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	attached := true
	detach := func() {
		if attached {
			if out, err := exec.Command(losetup, "--detach", dev).CombinedOutput(); err != nil {
				t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
			}
			attached = false
		}
	}
	defer detach()

	g, err := NewGPT(dev)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dev)
	if err != nil || fi.Mode()&os.ModeDevice == 0 {
		t.Fatalf("%s is not a block device: %v", dev, err)
	}
	if g.lss != 512 {
		t.Fatalf("logical sector size %d, want 512", g.lss)
	}
	mustCommit(t, g, mustBegin(t, g, "cfg1"))
	mustBegin(t, g, "cfg2")
	wantBoot(t, g, B, "cfg2", Selector{Priority: 2})
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	detach()

	pr, bk := rawSelectors(t, p)
	if want := [2]Selector{good, {Priority: 2}}; pr != want || bk != want {
		t.Fatalf("image selectors primary %+v backup %+v, want %+v", pr, bk, want)
	}
	f := openGPT(t, p)
	if h, data, err := f.Read(B); err != nil || string(data) != "cfg2" || h.Result != ResultTrying {
		t.Fatalf("image Read(B) = %+v %q %v, want cfg2 trying", h, data, err)
	}
}
