package sysslot

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Mount points on a node, relative to its root.
const (
	ESPMount    = "run/ballast/esp"
	SystemMount = "run/ballast/system"
	StateMount  = "var"
	// UpgradeSpool holds an upgrade image while it is checked (on STATE).
	UpgradeSpool = "var/lib/ballast/upgrade"
)

// Node is the system-slot view of a booted node.
type Node struct {
	Root string // "/" on a node
	Log  *slog.Logger
}

func (n Node) log() *slog.Logger {
	if n.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return n.Log
}

// Open finds the disk and mounts the ESP (once; a second Open reuses the
// mount) and returns the manager for the slot named by running.
func (n Node) Open(running string) (*Manager, *Layout, error) {
	if !ValidSlot(running) {
		return nil, nil, fmt.Errorf("%s=%q: must be a or b", SlotParam, running)
	}
	l, err := FindLayout(n.Root)
	if err != nil {
		return nil, nil, err
	}
	esp := filepath.Join(n.Root, ESPMount)
	if err := mountOnce(l.Parts[PartESP], esp, "vfat", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return nil, nil, fmt.Errorf("mount ESP %s: %w (is the vfat module in the recipe?)", l.Parts[PartESP], err)
	}
	m := &Manager{Log: n.Log, ESP: esp, Running: running, Spool: filepath.Join(n.Root, UpgradeSpool), Systems: map[string]string{
		"a": l.Parts[PartSystemA], "b": l.Parts[PartSystemB],
	}}
	return m, l, nil
}

// Prepare runs early at boot on a node that booted from a system slot: it
// mounts the ESP, the running slot's system image (read-only) and STATE at
// /var, first moving the backup GPT to the disk's end and growing STATE to
// fill the disk when the disk is larger than the image.
func (n Node) Prepare(running string) (*Manager, error) {
	m, l, err := n.Open(running)
	if err != nil {
		return nil, err
	}
	log := n.log()
	sys := filepath.Join(n.Root, SystemMount)
	if err := mountOnce(m.Systems[running], sys, "squashfs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		log.Error("system image not mounted", "slot", running, "partition", m.Systems[running], "err", err)
	} else {
		log.Info("system image mounted", "slot", running, "partition", m.Systems[running], "at", "/"+SystemMount)
	}
	if err := n.prepareState(l); err != nil {
		log.Error("STATE not mounted, /var stays in memory", "err", err)
	}
	return m, nil
}

func (n Node) prepareState(l *Layout) error {
	dev, ok := l.Parts[PartState]
	if !ok {
		return errors.New("no STATE partition")
	}
	log := n.log()
	start, length, changed, err := GrowGPT(l.Disk, PartState)
	if err != nil {
		return fmt.Errorf("grow GPT: %w", err)
	}
	if changed {
		log.Info("GPT moved to the end of the disk, STATE extended", "disk", l.Disk, "stateBytes", length)
		if err := resizePartition(l.Disk, l.Index[PartState], start, length); err != nil {
			return err
		}
	}
	bs, blocks, err := ext4Size(dev)
	if err != nil {
		return err
	}
	target := filepath.Join(n.Root, StateMount)
	if err := mountOnce(dev, target, "ext4", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("mount %s on /var: %w", dev, err)
	}
	if want := uint64(length / bs); want > blocks {
		if err := growExt4(target, want); err != nil {
			return err
		}
		log.Info("STATE filesystem grown", "from", int64(blocks)*bs, "to", int64(want)*bs)
	}
	if err := os.MkdirAll(filepath.Join(target, "lib/ballast"), 0o755); err != nil {
		return err
	}
	log.Info("STATE mounted", "partition", dev, "at", "/"+StateMount)
	return nil
}

// mountOnce mounts source on target unless something is mounted there.
func mountOnce(source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if mounted(target) {
		return nil
	}
	return unix.Mount(source, target, fstype, flags, data)
}

// mounted compares device numbers: a mount point's differ from its parent's.
func mounted(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
