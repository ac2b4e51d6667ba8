package image

import (
	"errors"
	"strings"
	"testing"

	"github.com/ballast-os/ballast/recipes"
)

func TestEmbeddedRecipesParse(t *testing.T) {
	for _, name := range recipes.Names() {
		r, err := LoadRecipe(name)
		if err != nil {
			t.Errorf("LoadRecipe(%q): %v", name, err)
			continue
		}
		if r.Name != name {
			t.Errorf("recipe %s.yaml names itself %q", name, r.Name)
		}
	}
}

func TestUnknownRecipeListsEmbedded(t *testing.T) {
	_, err := LoadRecipe("nosuch")
	if !errors.Is(err, ErrUnknownRecipe) {
		t.Fatalf("LoadRecipe(nosuch) = %v, want ErrUnknownRecipe", err)
	}
	for _, n := range recipes.Names() {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("error %q does not list %q", err, n)
		}
	}
}

const goodRecipe = `apiVersion: ballast.dev/v1alpha1
kind: Recipe
name: t
role: worker
kernel:
  flavour: cloud-amd64
  modules:
    - virtio_net
cmdline: [console=ttyS0]
`

func TestRecipeErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"ok", goodRecipe, ""},
		{"unknown top-level key", goodRecipe + "colour: blue\n", `r.yaml:10: unknown field "colour"`},
		{"unknown nested key", strings.Replace(goodRecipe, "  flavour:", "  flavor: x\n  flavour:", 1), `r.yaml:6: unknown field "flavor"`},
		{"wrong type", strings.Replace(goodRecipe, "cmdline: [console=ttyS0]", "cmdline: {a: b}", 1), `r.yaml:9:`},
		{"bad version", strings.Replace(goodRecipe, "v1alpha1", "v9", 1), `r.yaml:1: apiVersion: "ballast.dev/v9" is not supported`},
		{"missing role", strings.Replace(goodRecipe, "role: worker\n", "", 1), `r.yaml:1: role: must be "control-plane" or "worker"`},
		{"bad role", strings.Replace(goodRecipe, "role: worker", "role: boss", 1), `r.yaml:4: role: must be`},
		{"unknown flavour", strings.Replace(goodRecipe, "cloud-amd64", "arm", 1), `r.yaml:6: kernel.flavour: unknown kernel flavour "arm"`},
		{"duplicate module", strings.Replace(goodRecipe, "    - virtio_net\n", "    - virtio_net\n    - virtio-net\n", 1), `r.yaml:9: kernel.modules[1]: "virtio-net" is listed twice`},
		{"driver classes", strings.Replace(goodRecipe, "  modules:", "  driverClasses: [storage, nic]\n  drivers: [qla2xxx]\n  modules:", 1), ""},
		{"unknown driver class", strings.Replace(goodRecipe, "  modules:", "  driverClasses: [storage, gpu]\n  modules:", 1), `r.yaml:7: kernel.driverClasses[1]: unknown driver class "gpu": the classes are hid, nic, storage, usb, virtio`},
		{"driver also at boot", strings.Replace(goodRecipe, "  modules:", "  drivers: [virtio-net]\n  modules:", 1), `r.yaml:7: kernel.drivers[0]: "virtio-net" is already in kernel.modules[0]`},
		{"microcode", strings.Replace(goodRecipe, "  modules:", "  microcode: [intel, amd]\n  modules:", 1), ""},
		{"unknown microcode vendor", strings.Replace(goodRecipe, "  modules:", "  microcode: [intel, via]\n  modules:", 1), `r.yaml:7: kernel.microcode[1]: unknown CPU vendor "via": one of amd, intel`},
		{"microcode twice", strings.Replace(goodRecipe, "  modules:", "  microcode: [amd, amd]\n  modules:", 1), `r.yaml:7: kernel.microcode[1]: "amd" is listed twice (also kernel.microcode[0])`},
		{"spaces in cmdline", strings.Replace(goodRecipe, "[console=ttyS0]", `["a b"]`, 1), `r.yaml:9: cmdline[0]: "a b" must be one argument`},
		{"not yaml", "name: [\n", `r.yaml:`},
		{"disk sizes", goodRecipe + "disk: {sizeMiB: 4096, espMiB: 128, systemMiB: 1024}\n", ""},
		{"small ESP", goodRecipe + "disk:\n  espMiB: 32\n", `r.yaml:11: disk.espMiB: 32 MiB is too small`},
		{"small disk", goodRecipe + "disk:\n  sizeMiB: 1000\n", `r.yaml:11: disk.sizeMiB: 1000 MiB cannot hold`},
		{"negative size", goodRecipe + "disk:\n  systemMiB: -1\n", `r.yaml:11: disk.systemMiB: -1 is negative`},
		{"slot on cmdline", strings.Replace(goodRecipe, "[console=ttyS0]", "[console=ttyS0, ballast.slot=a]", 1), `r.yaml:9: cmdline[1]: "ballast.slot=a" is set per boot entry`},
		{"empty", "", `r.yaml:1: empty recipe`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecipe("r.yaml", []byte(tc.yaml))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("ParseRecipe = %v, want success", err)
			case tc.want != "" && err == nil:
				t.Fatalf("ParseRecipe succeeded, want error %q", tc.want)
			case tc.want != "" && !strings.HasPrefix(err.Error(), tc.want):
				t.Fatalf("ParseRecipe error\n got %q\nwant prefix %q", err, tc.want)
			}
		})
	}
}
