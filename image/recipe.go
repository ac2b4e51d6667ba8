package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/ballast-os/ballast/kernel"
	"github.com/ballast-os/ballast/recipes"
)

// RecipeAPIVersion is the recipe format version this builder reads.
const RecipeAPIVersion = "ballast.dev/v1alpha1"

// Recipe describes one image: which kernel and modules, which role, which
// kernel command line.
type Recipe struct {
	APIVersion  string       `yaml:"apiVersion"`
	Kind        string       `yaml:"kind"`
	Name        string       `yaml:"name"`
	Description string       `yaml:"description"`
	Role        string       `yaml:"role"`     // "control-plane" or "worker"
	Hostname    string       `yaml:"hostname"` // default hostname; ballast.hostname= on the cmdline overrides it
	Kernel      RecipeKernel `yaml:"kernel"`
	Cmdline     []string     `yaml:"cmdline"` // kernel arguments, in order
	Disk        RecipeDisk   `yaml:"disk"`    // raw image and installed disk sizes

	// File is where the recipe came from ("embedded:control-plane.yaml" or a path), for errors.
	File string `yaml:"-"`
	// SHA256 is the hash of the recipe's bytes, recorded in the manifest.
	SHA256 string `yaml:"-"`
}

// RecipeKernel picks the kernel: a pinned Debian flavour or a local tree.
type RecipeKernel struct {
	Flavour string       `yaml:"flavour"` // pinned flavour from kernel/kernel.go
	Local   *LocalKernel `yaml:"local"`   // instead of flavour: a kernel image and module tree on disk
	Modules []string     `yaml:"modules"` // loaded at boot, dependencies added from modules.dep
	// DriverClasses name sets of hardware drivers (kernel/drivers.go:
	// virtio, storage, nic, usb, hid) that the node loads when a device
	// needs them (coldplug); Drivers adds single modules the same way.
	DriverClasses []string `yaml:"driverClasses"`
	Drivers       []string `yaml:"drivers"`
	// Microcode names the CPU vendors (intel, amd) whose microcode goes
	// into the early cpio, for the kernel to update the CPUs before
	// anything else runs.
	Microcode []string `yaml:"microcode"`
}

// RecipeDisk sizes the raw image (and so the installed layout; STATE
// grows to fill the real disk on first boot). Zero fields take the defaults.
type RecipeDisk struct {
	SizeMiB   int64 `yaml:"sizeMiB"`   // whole raw image; default 2048
	ESPMiB    int64 `yaml:"espMiB"`    // EFI system partition, FAT32, two slots' kernels; default 256
	SystemMiB int64 `yaml:"systemMiB"` // each of SYSTEM-A and SYSTEM-B; default 768
}

// Disk size defaults.
const (
	DefaultDiskMiB   = 2048
	DefaultESPMiB    = 256
	DefaultSystemMiB = 768
)

// WithDefaults fills zero fields.
func (d RecipeDisk) WithDefaults() RecipeDisk {
	if d.SizeMiB == 0 {
		d.SizeMiB = DefaultDiskMiB
	}
	if d.ESPMiB == 0 {
		d.ESPMiB = DefaultESPMiB
	}
	if d.SystemMiB == 0 {
		d.SystemMiB = DefaultSystemMiB
	}
	return d
}

// LocalKernel points at a kernel built or unpacked elsewhere.
type LocalKernel struct {
	Vmlinuz string `yaml:"vmlinuz"`
	Modules string `yaml:"modules"` // lib/modules/<release> directory with a modules.dep
}

// RecipeError is a problem at one place in a recipe file.
type RecipeError struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *RecipeError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Msg)
}

// ErrUnknownRecipe is returned (wrapped) when a name is neither embedded nor a file.
var ErrUnknownRecipe = errors.New("unknown recipe")

// LoadRecipe takes an embedded recipe name ("control-plane") or a path to a
// YAML file.
func LoadRecipe(nameOrPath string) (*Recipe, error) {
	if !strings.ContainsAny(nameOrPath, "/.") {
		data, err := fs.ReadFile(recipes.FS(), nameOrPath+".yaml")
		if err != nil {
			return nil, fmt.Errorf("%w %q: embedded recipes are %s; or give a path to a recipe file",
				ErrUnknownRecipe, nameOrPath, strings.Join(recipes.Names(), ", "))
		}
		return ParseRecipe("embedded:"+nameOrPath+".yaml", data)
	}
	data, err := os.ReadFile(nameOrPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w %q: no such file; embedded recipes are %s",
				ErrUnknownRecipe, nameOrPath, strings.Join(recipes.Names(), ", "))
		}
		return nil, err
	}
	return ParseRecipe(nameOrPath, data)
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)
var yamlUnknownRE = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

// ParseRecipe parses and validates a recipe strictly: unknown keys,
// missing fields and bad values are errors of the form file:line: field: problem.
func ParseRecipe(file string, data []byte) (*Recipe, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(file, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var r Recipe
	if err := dec.Decode(&r); err != nil {
		return nil, yamlError(file, err)
	}
	sum := sha256.Sum256(data)
	r.File, r.SHA256 = file, hex.EncodeToString(sum[:])
	if err := r.validate(&root); err != nil {
		return nil, err
	}
	return &r, nil
}

func yamlError(file string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		// Report the first problem; fixing it reveals the next.
		if m := yamlLineRE.FindStringSubmatch(te.Errors[0]); m != nil {
			msg := m[2]
			if u := yamlUnknownRE.FindStringSubmatch(msg); u != nil {
				msg = fmt.Sprintf("unknown field %q: remove it or check its spelling", u[1])
			}
			return fmt.Errorf("%s:%s: %s", file, m[1], msg)
		}
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s: %s", file, m[1], m[2])
	}
	if errors.Is(err, errEOF) || msg == "EOF" {
		return fmt.Errorf("%s:1: empty recipe", file)
	}
	return fmt.Errorf("%s: %s", file, msg)
}

var errEOF = errors.New("EOF")

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (r *Recipe) validate(root *yaml.Node) error {
	fail := func(field, format string, args ...any) error {
		return &RecipeError{File: r.File, Line: lineOf(root, field), Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case r.APIVersion == "":
		return fail("apiVersion", "missing: set it to %q", RecipeAPIVersion)
	case r.APIVersion != RecipeAPIVersion:
		return fail("apiVersion", "%q is not supported by this imgbuild: use %q", r.APIVersion, RecipeAPIVersion)
	case r.Kind != "Recipe":
		return fail("kind", "must be \"Recipe\", got %q", r.Kind)
	case r.Name == "":
		return fail("name", "missing: name the image, e.g. \"control-plane\"")
	case !hostnameRE.MatchString(r.Name):
		return fail("name", "%q must be lowercase letters, digits and '-' (it names the output directory)", r.Name)
	case r.Role != "control-plane" && r.Role != "worker":
		return fail("role", "must be \"control-plane\" or \"worker\", got %q", r.Role)
	case r.Hostname != "" && !hostnameRE.MatchString(r.Hostname):
		return fail("hostname", "%q is not a valid hostname label (lowercase letters, digits, '-', at most 63)", r.Hostname)
	case r.Kernel.Flavour == "" && r.Kernel.Local == nil:
		return fail("kernel", "set kernel.flavour (one of %v) or kernel.local", kernel.Flavours())
	case r.Kernel.Flavour != "" && r.Kernel.Local != nil:
		return fail("kernel.local", "set either kernel.flavour or kernel.local, not both")
	}
	if r.Kernel.Flavour != "" {
		if _, err := kernel.PinFor(r.Kernel.Flavour); err != nil {
			return fail("kernel.flavour", "%v", err)
		}
	}
	if l := r.Kernel.Local; l != nil {
		if l.Vmlinuz == "" {
			return fail("kernel.local.vmlinuz", "missing: path to the kernel image")
		}
		if l.Modules == "" {
			return fail("kernel.local.modules", "missing: path to lib/modules/<release>")
		}
	}
	seen := map[string]int{}
	for i, m := range r.Kernel.Modules {
		field := fmt.Sprintf("kernel.modules[%d]", i)
		if m == "" || strings.ContainsAny(m, "/ ") {
			return fail(field, "%q is not a module name", m)
		}
		if j, dup := seen[kernel.ModuleName(m)]; dup {
			return fail(field, "%q is listed twice (also kernel.modules[%d])", m, j)
		}
		seen[kernel.ModuleName(m)] = i
	}
	for i, c := range r.Kernel.DriverClasses {
		if _, err := kernel.DriverClass(c); err != nil {
			return fail(fmt.Sprintf("kernel.driverClasses[%d]", i), "%v", err)
		}
	}
	vendors := map[string]int{}
	for i, v := range r.Kernel.Microcode {
		field := fmt.Sprintf("kernel.microcode[%d]", i)
		if err := kernel.CheckMicrocodeVendor(v); err != nil {
			return fail(field, "%v", err)
		}
		if j, dup := vendors[v]; dup {
			return fail(field, "%q is listed twice (also kernel.microcode[%d])", v, j)
		}
		vendors[v] = i
	}
	for i, m := range r.Kernel.Drivers {
		field := fmt.Sprintf("kernel.drivers[%d]", i)
		if m == "" || strings.ContainsAny(m, "/ ") {
			return fail(field, "%q is not a module name", m)
		}
		if j, dup := seen[kernel.ModuleName(m)]; dup {
			return fail(field, "%q is already in kernel.modules[%d], which loads it at boot", m, j)
		}
	}
	for i, a := range r.Cmdline {
		if a == "" || strings.ContainsAny(a, " \t\n") {
			return fail(fmt.Sprintf("cmdline[%d]", i), "%q must be one argument without spaces", a)
		}
		if strings.HasPrefix(a, "ballast.slot=") || strings.HasPrefix(a, "ballast.install") {
			return fail(fmt.Sprintf("cmdline[%d]", i), "%q is set per boot entry by imgbuild and the node: remove it", a)
		}
	}
	d := r.Disk.WithDefaults()
	for _, f := range []struct {
		field string
		v     int64
	}{{"disk.sizeMiB", r.Disk.SizeMiB}, {"disk.espMiB", r.Disk.ESPMiB}, {"disk.systemMiB", r.Disk.SystemMiB}} {
		if f.v < 0 {
			return fail(f.field, "%d is negative: give a size in MiB or leave it out for the default", f.v)
		}
	}
	if d.ESPMiB < 64 {
		return fail("disk.espMiB", "%d MiB is too small: FAT32 needs at least 64 MiB, and the ESP holds two kernels and initramfs images", d.ESPMiB)
	}
	if need := d.ESPMiB + 2*d.SystemMiB + 2 + 1 + 64; d.SizeMiB < need {
		return fail("disk.sizeMiB", "%d MiB cannot hold the ESP (%d), two system slots (2×%d), config slots and a 64 MiB STATE: use at least %d",
			d.SizeMiB, d.ESPMiB, d.SystemMiB, need)
	}
	return nil
}

// lineOf finds the line of a dotted field path ("kernel.modules[2]") in a
// parsed YAML document, falling back to the deepest part found.
func lineOf(root *yaml.Node, field string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, part := range strings.Split(field, ".") {
		key, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 {
			key = part[:i]
			fmt.Sscanf(part[i:], "[%d]", &idx)
		}
		next := mappingValue(n, key)
		if next == nil {
			return line
		}
		n, line = next, next.Line
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n, line = n.Content[idx], n.Content[idx].Line
		}
	}
	return line
}

func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}
