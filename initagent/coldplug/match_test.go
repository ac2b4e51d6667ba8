package coldplug

import (
	"bufio"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestFnmatch(t *testing.T) {
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", true},
		{"pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc06i01", false},
		{"usb:v13FDp3940d0[0-2]*dc*", "usb:v13FDp3940d0150dc00", true},
		{"usb:v13FDp3940d0[0-2]*dc*", "usb:v13FDp3940d0350dc00", false},
		{"usb:v13FDp3940d0[!0-2]*dc*", "usb:v13FDp3940d0350dc00", true},
		{"usb:v13FDp3940d0[^0-2]*dc*", "usb:v13FDp3940d0150dc00", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"*", "", true},
		{"a*", "a/b/c", true}, // no FNM_PATHNAME: '*' crosses '/'
		{"a\\*b", "a*b", true},
		{"a\\*b", "axb", false},
		{"[]x]", "]", true},
		{"a[", "a[", true}, // unterminated: literal
		{"abc", "abcd", false},
		{"*bc*sc*i*", "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", true},
	} {
		if got := fnmatch(c.pattern, c.s); got != c.want {
			t.Errorf("fnmatch(%q, %q) = %v, want %v", c.pattern, c.s, got, c.want)
		}
	}
}

// readAliases parses modules.alias lines ("alias PATTERN MODULE").
func readAliases(t *testing.T, path string) []Alias {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var as []Alias
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "alias" {
			as = append(as, Alias{Pattern: f[1], Module: f[2]})
		}
	}
	return as
}

// TestMatchQEMUDevices: the modaliases QEMU's emulated server hardware
// reports, against the Debian kernel's own alias lines.
func TestMatchQEMUDevices(t *testing.T) {
	aliases := readAliases(t, "testdata/modules.alias")
	for _, c := range []struct {
		device, modalias string
		want             []string
	}{
		{"e1000e (82574L)", "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", []string{"e1000e"}},
		{"igb (82576)", "pci:v00008086d000010C9sv00008086sd00000000bc02sc00i00", []string{"igb"}},
		{"nvme", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", []string{"nvme"}},
		{"ich9-ahci", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", []string{"ahci"}},
		{"qemu-xhci", "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30", []string{"xhci_pci"}},
		{"usb-storage", "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00", []string{"uas", "usb_storage"}},
		{"a SCSI disk", "scsi:t-0x00", []string{"sd_mod"}},
		{"virtio NIC", "virtio:d00000001v00001AF4", []string{"virtio_net"}},
		{"a VGA card", "pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00", nil},
	} {
		got := Match(aliases, c.modalias)
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s (%s): %v, want %v", c.device, c.modalias, got, c.want)
		}
	}
}
