package source

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestProbeLabel(t *testing.T) {
	userData := map[string][]byte{"user-data": []byte("x")}
	zeros := filepath.Join(t.TempDir(), "zeros.img")
	if err := os.WriteFile(zeros, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name              string
		img               func(t *testing.T) string
		wantFS, wantLabel string
	}{
		{"fat12", func(t *testing.T) string { return makeFAT(t, "CIDATA", 12, 2, userData) }, "vfat", "CIDATA"},
		{"fat16", func(t *testing.T) string { return makeFAT(t, "CIDATA", 16, 16, userData) }, "vfat", "CIDATA"},
		{"fat32", func(t *testing.T) string { return makeFAT(t, "CONFIG-2", 32, 64, userData) }, "vfat", "CONFIG-2"},
		{"fat unlabelled", func(t *testing.T) string { return makeFAT(t, "NO NAME", 12, 2, nil) }, "vfat", ""},
		{"iso9660", func(t *testing.T) string { return makeISO(t, "config-2", userData, "-J", "-r") }, "iso9660", "config-2"},
		{"ext4", func(t *testing.T) string { return makeExt4(t, "cidata", userData) }, "ext4", "cidata"},
		{"zeros", func(t *testing.T) string { return zeros }, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := tc.img(t)
			fstype, label, err := probeDevice(img)
			if err != nil {
				t.Fatal(err)
			}
			if fstype != tc.wantFS || label != tc.wantLabel {
				t.Errorf("probeDevice(%s) = %q, %q, want %q, %q", tc.name, fstype, label, tc.wantFS, tc.wantLabel)
			}
		})
	}
}

// The root directory's label entry is the one tools keep current, so it
// wins over the boot sector's copy.
func TestFATRootDirLabelWins(t *testing.T) {
	img := makeFAT(t, "CIDATA", 12, 2, nil)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// BS_VolLab of FAT12/16 at byte 43 (fatgen103).
	if _, err := f.WriteAt([]byte("NO NAME    "), 43); err != nil {
		t.Fatal(err)
	}
	fat, err := openFAT(f)
	if err != nil {
		t.Fatal(err)
	}
	if fat.bootLabel != "" {
		t.Errorf("boot sector label = %q after overwriting it, want none", fat.bootLabel)
	}
	if got, err := fat.Label(); err != nil || got != "CIDATA" {
		t.Errorf("Label() = %q, %v, want CIDATA from the root directory entry", got, err)
	}
}

// driveFiles: a small file, one spanning many clusters/sectors in a
// subdirectory, and a long name.
func driveTestFiles() map[string][]byte {
	return map[string][]byte{
		"user-data":                     []byte("#cloud-config\n"),
		"ballast/machine-config.yaml":   randomBytes(100 << 10),
		"openstack/latest/user_data":    []byte("apiVersion: ballast.dev/v1alpha1\n"),
		"a-rather-long-file-name.jsonl": []byte("{}"),
	}
}

func TestFATReadFile(t *testing.T) {
	files := driveTestFiles()
	for _, tc := range []struct {
		bits, sizeMiB int
	}{{12, 2}, {16, 16}, {32, 64}} {
		t.Run(fmt.Sprintf("fat%d", tc.bits), func(t *testing.T) {
			img := makeFAT(t, "CIDATA", tc.bits, tc.sizeMiB, files)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fat, err := openFAT(f)
			if err != nil {
				t.Fatal(err)
			}
			if fat.bits != tc.bits {
				t.Fatalf("openFAT: %d-bit FAT, want %d", fat.bits, tc.bits)
			}
			checkReadFile(t, fat, files)
		})
	}
}

func TestISOReadFile(t *testing.T) {
	files := driveTestFiles()
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"joliet+rockridge", []string{"-J", "-r"}},
		{"rockridge", []string{"-r"}},
		{"joliet", []string{"-J"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := makeISO(t, "config-2", files, tc.flags...)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			iso, err := openISO(f)
			if err != nil {
				t.Fatal(err)
			}
			if iso.Label() != "config-2" {
				t.Errorf("Label() = %q, want config-2", iso.Label())
			}
			checkReadFile(t, iso, files)
		})
	}
}

func checkReadFile(t *testing.T, fsys driveFS, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := fsys.ReadFile(name, MaxSize)
		if err != nil {
			t.Errorf("ReadFile(%q): %v", name, err)
		} else if !bytes.Equal(got, want) {
			t.Errorf("ReadFile(%q) = %d bytes (sha256 %s), want %d bytes (sha256 %s)", name, len(got), sha(got), len(want), sha(want))
		}
	}
	if _, err := fsys.ReadFile("USER-DATA", MaxSize); err != nil {
		t.Errorf("ReadFile(USER-DATA), names match without regard to case: %v", err)
	}
	for _, missing := range []string{"nope", "ballast", "ballast/nope", "user-data/x"} {
		if _, err := fsys.ReadFile(missing, MaxSize); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ReadFile(%q) = %v, want fs.ErrNotExist", missing, err)
		}
	}
	if _, err := fsys.ReadFile("ballast/machine-config.yaml", 1000); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadFile over the cap = %v, want ErrTooLarge", err)
	}
}

// Config drives given as image files: the reader paths need no root.
func TestFetchConfigDriveImages(t *testing.T) {
	mc := []byte("kind: MachineConfig\n")
	for _, tc := range []struct {
		name       string
		img        func(t *testing.T) string
		want       []byte // nil: ErrNoConfig
		wantSource string
	}{
		{"cidata fat user-data", func(t *testing.T) string {
			return makeFAT(t, "CIDATA", 0, 2, map[string][]byte{"user-data": mc, "meta-data": []byte("instance-id: x\n")})
		}, mc, ":user-data"},
		{"config-2 iso", func(t *testing.T) string {
			return makeISO(t, "config-2", map[string][]byte{"openstack/latest/user_data": mc}, "-J", "-r")
		}, mc, ":openstack/latest/user_data"},
		{"ballast file wins over user-data", func(t *testing.T) string {
			return makeFAT(t, "cidata", 0, 2, map[string][]byte{"user-data": []byte("#cloud-config\n"), "ballast/machine-config.yaml": mc})
		}, mc, ":ballast/machine-config.yaml"},
		{"config-2 without user_data", func(t *testing.T) string {
			return makeISO(t, "config-2", map[string][]byte{"openstack/latest/meta_data.json": []byte("{}")}, "-J", "-r")
		}, nil, ""},
		{"empty user-data counts as none", func(t *testing.T) string {
			return makeFAT(t, "CIDATA", 0, 2, map[string][]byte{"user-data": {}})
		}, nil, ""},
		{"cidata's file name on config-2 is not used", func(t *testing.T) string {
			return makeISO(t, "config-2", map[string][]byte{"user-data": mc}, "-J", "-r")
		}, nil, ""},
		{"other label", func(t *testing.T) string {
			return makeFAT(t, "EFI", 0, 2, map[string][]byte{"user-data": mc})
		}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := tc.img(t)
			res, err := Fetch(t.Context(), Options{Root: t.TempDir(), Devices: []string{img}, Log: testLog(t)})
			if tc.want == nil {
				if !errors.Is(err, ErrNoConfig) {
					t.Fatalf("Fetch = %v, %v, want ErrNoConfig", res, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(res.Data, tc.want) || !strings.HasPrefix(res.Source, "config-drive:"+img) ||
				!strings.HasSuffix(res.Source, tc.wantSource) || res.SHA256 != sha(tc.want) {
				t.Errorf("Fetch = %q from %q (sha256 %s), want %q from …%s", res.Data, res.Source, res.SHA256, tc.want, tc.wantSource)
			}
		})
	}
}

// Real loop devices: the sysfs scan finds them, and Fetch reads them.
func TestFetchConfigDriveLoop(t *testing.T) {
	mc := []byte("kind: MachineConfig\n")
	for _, tc := range []struct {
		name string
		img  func(t *testing.T) string
	}{
		{"fat CIDATA", func(t *testing.T) string {
			return makeFAT(t, "CIDATA", 0, 2, map[string][]byte{"user-data": mc})
		}},
		{"iso config-2", func(t *testing.T) string {
			return makeISO(t, "config-2", map[string][]byte{"openstack/latest/user_data": mc}, "-J", "-r")
		}},
		// ext4 is the one filesystem that is mounted rather than read in-process.
		{"ext4 cidata", func(t *testing.T) string {
			return makeExt4(t, "cidata", map[string][]byte{"user-data": mc})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			needRoot(t)
			dev := attachLoop(t, tc.img(t))
			devs, err := listBlockDevices("/")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(devs, dev) {
				t.Errorf("listBlockDevices(/) = %q, want it to contain %s", devs, dev)
			}
			runDir := t.TempDir()
			res, err := Fetch(t.Context(), Options{Root: t.TempDir(), RunDir: runDir, Devices: []string{dev}, Log: testLog(t)})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(res.Data, mc) || !strings.HasPrefix(res.Source, "config-drive:"+dev) {
				t.Errorf("Fetch = %q from %q, want %q from %s", res.Data, res.Source, mc, dev)
			}
			// Nothing stays mounted or behind in the run dir.
			if left, _ := os.ReadDir(runDir); len(left) != 0 {
				t.Errorf("run dir still holds %v", left)
			}
			if mi, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(mi, []byte(runDir)) {
				t.Errorf("a mount under %s is left behind", runDir)
			}
		})
	}
}
