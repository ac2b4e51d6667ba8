package boot

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// CPU is what /proc/cpuinfo says about the processors, for the boot log
// and `nodectl status`: after an early microcode update the revision is
// the updated one.
type CPU struct {
	Vendor string `json:"vendor"` // "GenuineIntel", "AuthenticAMD"
	Model  string `json:"model"`  // model name
	// Signature is family-model-stepping in hex, as Intel names its
	// microcode files ("06-55-07").
	Signature string `json:"signature"`
	Microcode string `json:"microcode,omitempty"` // revision, "0x5003901"; empty on CPUs that do not report one
	Count     int    `json:"count"`               // logical CPUs
	// EarlyMicrocode lists the vendor files the image carried for the
	// kernel's early loader (an image without them cannot update the CPU).
	EarlyMicrocode []string `json:"earlyMicrocode,omitempty"`
}

// ReadCPU parses cpuinfo (/proc/cpuinfo); the first processor describes
// them all (Linux does not run on mixed vendors).
func ReadCPU(cpuinfo string) (CPU, error) {
	data, err := os.ReadFile(cpuinfo)
	if err != nil {
		return CPU{}, err
	}
	var c CPU
	var family, model, stepping string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "processor" {
			c.Count++
		}
		if c.Count > 1 {
			continue
		}
		switch k {
		case "vendor_id":
			c.Vendor = v
		case "model name":
			c.Model = v
		case "cpu family":
			family = v
		case "model":
			model = v
		case "stepping":
			stepping = v
		case "microcode":
			c.Microcode = v
		}
	}
	if c.Count == 0 {
		return CPU{}, fmt.Errorf("%s lists no processor", cpuinfo)
	}
	var f, m, s int
	if _, err := fmt.Sscan(family, &f); err == nil {
		fmt.Sscan(model, &m)
		fmt.Sscan(stepping, &s)
		c.Signature = fmt.Sprintf("%02x-%02x-%02x", f, m, s)
	}
	return c, nil
}

// EarlyMicrocodeDir is where the kernel's unpacking of the initramfs puts
// the early cpio's microcode files in rootfs.
const EarlyMicrocodeDir = "kernel/x86/microcode"

// DropEarlyMicrocode removes the microcode files the kernel unpacked into
// rootfs (root is the initramfs, so they would hold RAM for the life of
// the node; the kernel read them before it unpacked anything) and returns
// their names.
func DropEarlyMicrocode(root string) ([]string, error) {
	dir := filepath.Join(root, EarlyMicrocodeDir)
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	if err := os.RemoveAll(dir); err != nil {
		return names, err
	}
	// The parents the early cpio made go too, when nothing else is in them.
	for d := filepath.Dir(dir); d != filepath.Clean(root); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			break
		}
	}
	return names, nil
}
