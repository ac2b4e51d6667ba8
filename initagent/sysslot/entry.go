package sysslot

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Entry is one system slot's boot loader entry on the ESP
// (loader/entries/ballast-<slot>[+LEFT[-DONE]].conf, Boot Loader
// Specification type #1, with systemd's boot counting in the file name).
type Entry struct {
	Slot string // "a" or "b"
	// Counting is true while the entry still carries a boot counter: a new
	// slot on trial (TriesLeft > 0) or one that used up its tries (bad).
	Counting  bool
	TriesLeft int
	TriesDone int
	// Version orders the entries: systemd-boot picks the highest version
	// among entries with tries left (all share one sort-key).
	Version uint64
	Title   string
	Linux   string // path on the ESP, "/ballast/a/vmlinuz"
	Initrd  string
	Options string
	File    string // file name in loader/entries
}

// DefaultTries is how many boots a new slot gets to prove itself.
const DefaultTries = 3

// EntriesDir is where the entries live, relative to the ESP root.
const EntriesDir = "loader/entries"

// SortKey is shared by every ballast entry, so the version decides the order.
const SortKey = "ballast"

var entryNameRE = regexp.MustCompile(`^ballast-([ab])(?:\+(\d+)(?:-(\d+))?)?\.conf$`)

// Good means the slot has been blessed: it boots without spending tries.
func (e Entry) Good() bool { return !e.Counting }

// Bad means the slot used up its tries; systemd-boot sorts it last.
func (e Entry) Bad() bool { return e.Counting && e.TriesLeft == 0 }

// State is "good", "trying" or "bad".
func (e Entry) State() string {
	switch {
	case e.Good():
		return "good"
	case e.Bad():
		return "bad"
	}
	return "trying"
}

// FileName is the entry's file name for its slot and counter.
func (e Entry) FileName() string {
	switch {
	case !e.Counting:
		return "ballast-" + e.Slot + ".conf"
	case e.TriesDone == 0:
		return fmt.Sprintf("ballast-%s+%d.conf", e.Slot, e.TriesLeft)
	}
	return fmt.Sprintf("ballast-%s+%d-%d.conf", e.Slot, e.TriesLeft, e.TriesDone)
}

// Marshal renders the entry file.
func (e Entry) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "title %s\n", e.Title)
	fmt.Fprintf(&b, "sort-key %s\n", SortKey)
	fmt.Fprintf(&b, "version %d\n", e.Version)
	fmt.Fprintf(&b, "linux %s\n", e.Linux)
	fmt.Fprintf(&b, "initrd %s\n", e.Initrd)
	fmt.Fprintf(&b, "options %s\n", e.Options)
	return b.Bytes()
}

// NewEntry describes slot's kernel and initramfs at their standard ESP paths.
func NewEntry(slot, title string, version uint64, cmdline []string) Entry {
	opts := append(append([]string{}, cmdline...), SlotParam+"="+slot)
	return Entry{
		Slot: slot, Version: version, Title: title,
		Linux: "/" + KernelPath(slot), Initrd: "/" + InitrdPath(slot), Options: strings.Join(opts, " "),
	}
}

// KernelPath and InitrdPath are a slot's files, relative to the ESP root.
func KernelPath(slot string) string { return "ballast/" + slot + "/vmlinuz" }

// InitrdPath is where a slot's initramfs lives on the ESP.
func InitrdPath(slot string) string { return "ballast/" + slot + "/initramfs.img" }

// ParseEntry reads an entry from its file name and content.
func ParseEntry(name string, data []byte) (Entry, error) {
	m := entryNameRE.FindStringSubmatch(name)
	if m == nil {
		return Entry{}, fmt.Errorf("boot entry %q: not a ballast-<a|b>[+LEFT[-DONE]].conf name", name)
	}
	e := Entry{Slot: m[1], File: name}
	if m[2] != "" {
		e.Counting = true
		e.TriesLeft, _ = strconv.Atoi(m[2])
		if m[3] != "" {
			e.TriesDone, _ = strconv.Atoi(m[3])
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		v = strings.TrimSpace(v)
		switch k {
		case "title":
			e.Title = v
		case "version":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return Entry{}, fmt.Errorf("boot entry %s: version %q is not a number", name, v)
			}
			e.Version = n
		case "linux":
			e.Linux = v
		case "initrd":
			e.Initrd = v
		case "options":
			e.Options = v
		}
	}
	return e, sc.Err()
}

// ReadEntries reads every ballast entry on the ESP mounted at esp, at most
// one per slot (a second one for a slot is an error: it needs a human).
func ReadEntries(esp string) (map[string]Entry, error) {
	dir := filepath.Join(esp, EntriesDir)
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("boot entries: %w", err)
	}
	out := map[string]Entry{}
	for _, de := range des {
		if !entryNameRE.MatchString(de.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			return nil, fmt.Errorf("boot entry: %w", err)
		}
		e, err := ParseEntry(de.Name(), data)
		if err != nil {
			return nil, err
		}
		if prev, dup := out[e.Slot]; dup {
			return nil, fmt.Errorf("slot %s has two boot entries, %s and %s: remove the stale one", e.Slot, prev.File, e.File)
		}
		out[e.Slot] = e
	}
	return out, nil
}

// BootOrder is the order systemd-boot tries the entries in: entries with
// tries left (or good) first, by version, highest first; bad entries last.
func BootOrder(entries map[string]Entry) []Entry {
	var es []Entry
	for _, e := range entries {
		es = append(es, e)
	}
	sort.Slice(es, func(i, j int) bool {
		if es[i].Bad() != es[j].Bad() {
			return !es[i].Bad()
		}
		if es[i].Version != es[j].Version {
			return es[i].Version > es[j].Version
		}
		return es[i].Slot > es[j].Slot // systemd-boot then orders by id, descending
	})
	return es
}
