// Package sysslot manages a node's two system slots (SYSTEM-A/SYSTEM-B
// squashfs partitions plus their kernel, initramfs and boot loader entry on
// the ESP) with systemd-boot's automatic boot assessment: a new slot's entry
// is written as ballast-<slot>+3.conf and made the default; systemd-boot
// counts its tries down, and once the node is healthy initagent blesses the
// running slot (drops the counter, as systemd-bless-boot does). A slot that
// used up its tries is sorted last by systemd-boot, so the previous slot
// boots again without a human.
package sysslot

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// GPT partition names of the disk layout (DESIGN §4).
const (
	PartESP     = "ESP"
	PartSystemA = "SYSTEM-A"
	PartSystemB = "SYSTEM-B"
	PartConfigA = "CONFIG-A"
	PartConfigB = "CONFIG-B"
	PartState   = "STATE"
	// PartBIOSBoot holds GRUB's core.img for BIOS boots, in the gap
	// before the first MiB-aligned partition.
	PartBIOSBoot = "BIOS-BOOT"
)

// GPT partition type GUIDs.
const (
	TypeESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" // EFI System Partition
	// TypeSystem is ballast's own type, so no other OS's auto-mounter claims a slot.
	TypeSystem = "1F4C2D7A-3B5E-4C8F-9A61-0D2B7E5C4A93"
	TypeState  = "4D21B016-B534-45C2-A9FB-5C16E091FD2D" // Linux /var (Discoverable Partitions Spec)
	// TypeBIOSBoot is GRUB's "BIOS boot partition".
	TypeBIOSBoot = "21686148-6449-6E6F-744E-656564454649"
)

// SlotParam on the kernel command line names the system slot the entry boots.
const SlotParam = "ballast.slot"

// PartitionName is the GPT name of a system slot's partition.
func PartitionName(slot string) string { return "SYSTEM-" + strings.ToUpper(slot) }

// Other is the slot that is not s.
func Other(s string) string {
	if s == "a" {
		return "b"
	}
	return "a"
}

// ValidSlot reports whether s names a system slot.
func ValidSlot(s string) bool { return s == "a" || s == "b" }

// Manager reads and changes the system slots of one node. Its methods are
// safe for concurrent use.
type Manager struct {
	Log *slog.Logger
	// ESP is the directory the EFI system partition is mounted on.
	ESP string
	// Systems maps a slot name to its SYSTEM partition (a device, or an image
	// file in tests).
	Systems map[string]string
	// Running is the slot this boot came from ("a" or "b").
	Running string
	// Spool is where Upgrade keeps an image while it checks it, before
	// anything is written (an unlinked file; it needs room for the whole
	// image). Empty means os.TempDir().
	Spool string

	mu sync.Mutex
}

func (m *Manager) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

// SlotStatus is one slot as Status reports it.
type SlotStatus struct {
	Name      string `json:"name"`
	State     string `json:"state"` // good, trying, bad, empty
	TriesLeft int    `json:"triesLeft,omitempty"`
	TriesDone int    `json:"triesDone,omitempty"`
	Version   uint64 `json:"version,omitempty"`
	Entry     string `json:"entry,omitempty"`
	Running   bool   `json:"running"`
	Default   bool   `json:"default"` // what the next boot picks
	Title     string `json:"title,omitempty"`
}

// Status is the state of both system slots.
type Status struct {
	Running string       `json:"running"`
	Default string       `json:"default"`
	Slots   []SlotStatus `json:"slots"`
	// Message explains a fallback: the newest slot is not the running one.
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Status reads the entries and reports both slots.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Running: m.Running}
	entries, err := ReadEntries(m.ESP)
	if err != nil {
		st.Error = err.Error()
		return st
	}
	order := BootOrder(entries)
	if len(order) > 0 {
		st.Default = order[0].Slot
	}
	for _, s := range [2]string{"a", "b"} {
		ss := SlotStatus{Name: s, State: "empty", Running: s == m.Running, Default: s == st.Default}
		if e, ok := entries[s]; ok {
			ss.State, ss.TriesLeft, ss.TriesDone, ss.Version, ss.Entry, ss.Title = e.State(), e.TriesLeft, e.TriesDone, e.Version, e.File, e.Title
		}
		st.Slots = append(st.Slots, ss)
	}
	for _, e := range entries {
		if e.Bad() {
			st.Message = fmt.Sprintf("slot %s failed its %d boot tries; running slot %s", e.Slot, e.TriesDone, m.Running)
		}
	}
	return st
}

// Bless marks the running slot good: its entry loses the boot counter
// (ballast-b+2-1.conf → ballast-b.conf). A good slot is left alone.
func (m *Manager) Bless() (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	entries, err := ReadEntries(m.ESP)
	if err != nil {
		return false, err
	}
	e, ok := entries[m.Running]
	if !ok {
		return false, fmt.Errorf("running slot %s has no boot entry in %s", m.Running, filepath.Join(m.ESP, EntriesDir))
	}
	if e.Good() {
		return false, nil
	}
	from := filepath.Join(m.ESP, EntriesDir, e.File)
	e.Counting = false
	to := filepath.Join(m.ESP, EntriesDir, e.FileName())
	if err := os.Rename(from, to); err != nil {
		return false, fmt.Errorf("bless slot %s: %w", m.Running, err)
	}
	if err := syncDir(m.ESP); err != nil {
		return false, fmt.Errorf("bless slot %s: %w", m.Running, err)
	}
	if err := writeGrubConfig(m.ESP); err != nil {
		return true, fmt.Errorf("bless slot %s: %w", m.Running, err)
	}
	m.log().Info("system slot marked good", "slot", m.Running, "entry", e.FileName(), "was", filepath.Base(from))
	return true, nil
}

// ErrNoRollback is wrapped by Rollback when the other slot cannot boot.
var ErrNoRollback = fmt.Errorf("no good system slot to roll back to")

// Rollback makes the other slot the default when it is good, and returns
// its name; the caller reboots.
func (m *Manager) Rollback() (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	entries, err := ReadEntries(m.ESP)
	if err != nil {
		return "", err
	}
	target := Other(m.Running)
	e, ok := entries[target]
	switch {
	case !ok:
		return "", fmt.Errorf("%w: slot %s is empty", ErrNoRollback, target)
	case !e.Good():
		return "", fmt.Errorf("%w: slot %s is %s (entry %s), never booted healthy", ErrNoRollback, target, e.State(), e.File)
	}
	e.Version = maxVersion(entries) + 1
	if err := writeEntry(m.ESP, e); err != nil {
		return "", fmt.Errorf("roll back to slot %s: %w", target, err)
	}
	if err := writeGrubConfig(m.ESP); err != nil {
		return "", fmt.Errorf("roll back to slot %s: %w", target, err)
	}
	m.log().Info("system slot rollback: next boot uses the other slot", "slot", target, "version", e.Version)
	return target, nil
}

func maxVersion(entries map[string]Entry) uint64 {
	var v uint64
	for _, e := range entries {
		v = max(v, e.Version)
	}
	return v
}

// writeEntry writes e under its file name through a temporary file.
func writeEntry(esp string, e Entry) error {
	dir := filepath.Join(esp, EntriesDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return replaceFile(esp, filepath.Join(dir, "ballast-"+e.Slot+".tmp"), filepath.Join(dir, e.FileName()), e.Marshal())
}

// replaceFile writes data to tmp, renames it to dst and syncs the ESP, so
// dst is always whole: the old file or the new one.
func replaceFile(esp, tmp, dst string, data []byte) error {
	if err := writeFileSync(tmp, data); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return syncDir(esp)
}

// removeEntries deletes every entry of slot (whatever its counter).
func removeEntries(esp, slot string) error {
	dir := filepath.Join(esp, EntriesDir)
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var names []string
	for _, de := range des {
		if m := entryNameRE.FindStringSubmatch(de.Name()); m != nil && m[1] == slot {
			names = append(names, de.Name())
		}
	}
	sort.Strings(names)
	for _, n := range names {
		if err := os.Remove(filepath.Join(dir, n)); err != nil {
			return err
		}
	}
	return syncDir(esp)
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir flushes the filesystem holding dir: FAT has no directory fsync
// worth the name, so the whole (small) ESP is synced.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
