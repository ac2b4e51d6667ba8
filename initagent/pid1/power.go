package pid1

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Action is what to do with the machine.
type Action string

const (
	Poweroff Action = "poweroff"
	Reboot   Action = "reboot"
	Halt     Action = "halt"
)

// ParseAction reads the value of ballast.shutdown.
func ParseAction(s string) (Action, error) {
	switch a := Action(s); a {
	case Poweroff, Reboot, Halt:
		return a, nil
	}
	return "", fmt.Errorf("unknown power action %q: use poweroff, reboot or halt", s)
}

// Request asks init to take the machine down.
type Request struct {
	Action Action
	Reason string
}

// WatchSignals turns signals into requests until ctx is done:
// SIGTERM and SIGUSR2 power off, SIGINT (Ctrl-Alt-Del once it is routed to
// init) reboots, SIGUSR1 halts — the busybox/sysvinit conventions.
func WatchSignals(ctx context.Context, out chan<- Request) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGUSR1, unix.SIGUSR2)
	defer signal.Stop(sigs)
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sigs:
			req := Request{Action: Poweroff, Reason: "signal " + unix.SignalName(s.(unix.Signal))}
			switch s {
			case unix.SIGINT:
				req.Action = Reboot
			case unix.SIGUSR1:
				req.Action = Halt
			}
			select {
			case out <- req:
			case <-ctx.Done():
				return
			}
		}
	}
}

// keyPower is KEY_POWER from linux/input-event-codes.h.
const (
	evKey    = 0x01
	keyPower = 116
)

// WatchPowerButton reads every input device that can report KEY_POWER (the
// ACPI power button driver registers one) and sends a poweroff request on a
// press. Devices are looked for a few times, since devtmpfs creates nodes
// asynchronously after the driver loads.
func WatchPowerButton(ctx context.Context, log *slog.Logger, out chan<- Request) {
	var devs []string
	for delay := 50 * time.Millisecond; len(devs) == 0 && delay < 5*time.Second; delay *= 2 {
		devs = powerButtonDevices("/sys/class/input", "/dev/input")
		if len(devs) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
	if len(devs) == 0 {
		log.Warn("no power button input device; power off with SIGTERM or ballast.shutdown instead")
		return
	}
	var wg sync.WaitGroup
	for _, dev := range devs {
		f, err := os.Open(dev)
		if err != nil {
			log.Warn("open power button", "device", dev, "err", err)
			continue
		}
		log.Debug("watching power button", "device", dev)
		go func() {
			<-ctx.Done()
			f.Close() // unblocks the read below
		}()
		wg.Go(func() { readPowerKey(ctx, f, dev, out) })
	}
	<-ctx.Done()
	wg.Wait()
}

func readPowerKey(ctx context.Context, f *os.File, dev string, out chan<- Request) {
	// struct input_event on 64-bit: struct timeval (16 bytes), __u16 type, __u16 code, __s32 value.
	var ev [24]byte
	for {
		if _, err := f.Read(ev[:]); err != nil {
			return
		}
		typ := binary.NativeEndian.Uint16(ev[16:])
		code := binary.NativeEndian.Uint16(ev[18:])
		value := int32(binary.NativeEndian.Uint32(ev[20:]))
		if typ == evKey && code == keyPower && value == 1 {
			select {
			case out <- Request{Action: Poweroff, Reason: "power button " + dev}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// powerButtonDevices lists /dev/input/eventN nodes whose key capability
// bitmap (sysfs, hex words, most significant first) has KEY_POWER set.
func powerButtonDevices(sysClass, devDir string) []string {
	caps, _ := filepath.Glob(filepath.Join(sysClass, "event*", "device", "capabilities", "key"))
	var devs []string
	for _, c := range caps {
		data, err := os.ReadFile(c)
		if err != nil || !keyBitSet(string(data), keyPower) {
			continue
		}
		event := filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(c))))
		devs = append(devs, filepath.Join(devDir, event))
	}
	return devs
}

// keyBitSet reports whether bit is set in a sysfs bitmap such as
// "40000 0 0 0" (space-separated hex longs, most significant first).
func keyBitSet(bitmap string, bit int) bool {
	words := strings.Fields(bitmap)
	n := new(big.Int)
	for _, w := range words {
		v, ok := new(big.Int).SetString(w, 16)
		if !ok {
			return false
		}
		n.Lsh(n, 64).Or(n, v)
	}
	return n.Bit(bit) == 1
}
