package sysslot

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// BIOS machines boot the disk through GRUB (i386-pc, core.img in the
// BIOS-BOOT partition) instead of systemd-boot. GRUB reads no Boot Loader
// Specification entries, so its grub.cfg is written from them whenever
// they change, and does the boot counting itself: the entry on trial
// keeps its tries, in unary, in GRUB's environment block (grubenv, the
// only file GRUB writes), one "x" spent per boot; with none left GRUB
// boots the next entry, as systemd-boot does. The agent folds the spent
// tries back into the entry's file name at boot (ReconcileGrub).
const (
	GrubDir  = "grub"
	GrubCfg  = GrubDir + "/grub.cfg"
	GrubEnv  = GrubDir + "/grubenv"
	grubEnvN = 1024 // GRUB rewrites the block in place: its size is fixed
)

// GrubConfig renders grub.cfg for the entries, in systemd-boot's order.
func GrubConfig(entries map[string]Entry) []byte {
	order := BootOrder(entries)
	var b bytes.Buffer
	b.WriteString("# Written by ballast from loader/entries whenever they change; edits are lost.\n")
	b.WriteString("set timeout=0\nserial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n")
	if len(order) == 0 {
		b.WriteString("echo 'ballast: no boot entry on this disk'\n")
		return b.Bytes()
	}
	fmt.Fprintf(&b, "set default=%s\n", grubID(order[0]))
	if e := order[0]; e.Counting && e.TriesLeft > 0 {
		// Spend a try of the entry on trial; with none left boot the next one.
		trial := fmt.Sprintf("%s-%d", e.Slot, e.Version)
		fmt.Fprintf(&b, "load_env --file $prefix/grubenv ballast_trial ballast_left\n")
		fmt.Fprintf(&b, "if [ \"$ballast_trial\" != %s ]; then\n  set ballast_trial=%s\n  set ballast_left=%s\nfi\n", trial, trial, strings.Repeat("x", e.TriesLeft))
		b.WriteString("if regexp --set=1:ballast_left '^x(x*)$' \"$ballast_left\"; then\n  save_env --file $prefix/grubenv ballast_trial ballast_left\n")
		if len(order) > 1 {
			fmt.Fprintf(&b, "else\n  set default=%s\n", grubID(order[1]))
		}
		b.WriteString("fi\n")
	}
	for _, e := range order {
		fmt.Fprintf(&b, "menuentry %s --id %s {\n  linux %s %s\n  initrd %s\n}\n", grubQuote(e.Title), grubID(e), e.Linux, e.Options, e.Initrd)
	}
	return b.Bytes()
}

func grubID(e Entry) string { return "ballast-" + e.Slot }

// grubQuote single-quotes s for GRUB's shell-like parser.
func grubQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// GrubEnvBlock renders a GRUB environment block holding vars.
func GrubEnvBlock(vars map[string]string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# GRUB Environment Block\n")
	for _, k := range sortedKeys(vars) {
		fmt.Fprintf(&b, "%s=%s\n", k, vars[k])
	}
	if b.Len() > grubEnvN {
		return nil, fmt.Errorf("GRUB environment block: %d bytes of variables, the block holds %d", b.Len(), grubEnvN)
	}
	b.Write(bytes.Repeat([]byte{'#'}, grubEnvN-b.Len()))
	return b.Bytes(), nil
}

// ParseGrubEnv reads the variables of a GRUB environment block.
func ParseGrubEnv(data []byte) map[string]string {
	vars := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(k, "#") {
			vars[k] = v
		}
	}
	return vars
}

// HasGrub says whether the ESP carries ballast's BIOS boot path.
func HasGrub(esp string) bool {
	_, err := os.Stat(filepath.Join(esp, GrubDir))
	return err == nil
}

// writeGrubConfig rewrites grub.cfg from the entries on an ESP that has
// the BIOS boot path (older disks without it are left alone).
func writeGrubConfig(esp string) error {
	if !HasGrub(esp) {
		return nil
	}
	entries, err := ReadEntries(esp)
	if err != nil {
		return err
	}
	p, cfg := filepath.Join(esp, GrubCfg), GrubConfig(entries)
	if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, cfg) {
		return nil
	}
	if err := replaceFile(esp, p+".tmp", p, cfg); err != nil {
		return fmt.Errorf("write %s: %w", GrubCfg, err)
	}
	return nil
}

// startGrubTrial writes grub.cfg for a slot just put on trial and clears
// GRUB's counter, so nothing left from an earlier trial is counted.
func startGrubTrial(esp string) error {
	if !HasGrub(esp) {
		return nil
	}
	env, err := GrubEnvBlock(nil)
	if err != nil {
		return err
	}
	// In place: GRUB finds the block by the file's sectors at every boot,
	// and a rename would leave a moment without the file.
	f, err := os.OpenFile(filepath.Join(esp, GrubEnv), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("reset %s: %w", GrubEnv, err)
	}
	_, err = f.WriteAt(env, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("reset %s: %w", GrubEnv, err)
	}
	return writeGrubConfig(esp)
}

// ReconcileGrub folds the tries GRUB spent on the entry on trial (a BIOS
// boot) into the entry's file name, as systemd-boot renames it on a UEFI
// boot, so Status, Bless and Rollback see one truth; then grub.cfg is
// rewritten. It returns whether an entry changed.
func (m *Manager) ReconcileGrub() (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !HasGrub(m.ESP) {
		return false, nil
	}
	data, err := os.ReadFile(filepath.Join(m.ESP, GrubEnv))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	vars := ParseGrubEnv(data)
	entries, err := ReadEntries(m.ESP)
	if err != nil {
		return false, err
	}
	changed := false
	for _, e := range entries {
		if !e.Counting || vars["ballast_trial"] != fmt.Sprintf("%s-%d", e.Slot, e.Version) {
			continue
		}
		left := strings.Count(vars["ballast_left"], "x")
		if left >= e.TriesLeft {
			continue
		}
		from := e.File
		e.TriesDone += e.TriesLeft - left
		e.TriesLeft = left
		if err := os.Rename(filepath.Join(m.ESP, EntriesDir, from), filepath.Join(m.ESP, EntriesDir, e.FileName())); err != nil {
			return false, fmt.Errorf("boot counting: %w", err)
		}
		m.log().Info("boot counting: tries GRUB spent folded into the entry", "slot", e.Slot, "entry", e.FileName(), "was", from)
		changed = true
	}
	if changed {
		if err := syncDir(m.ESP); err != nil {
			return changed, err
		}
	}
	return changed, writeGrubConfig(m.ESP)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
