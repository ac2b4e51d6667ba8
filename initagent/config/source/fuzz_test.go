package source

import (
	"bytes"
	"os"
	"testing"
)

// FuzzDriveReaders feeds corrupt filesystems to the probe and the FAT and
// ISO 9660 readers. Any block device is read at boot, so they must fail
// cleanly, never panic or allocate without bound. The fuzzer mutates a
// patch applied to one of a few real images: whole images are too large
// for it to mutate efficiently.
func FuzzDriveReaders(f *testing.F) {
	files := map[string][]byte{"user-data": []byte("kind: MachineConfig\n"), "ballast/machine-config.yaml": randomBytes(3000)}
	var bases [][]byte
	for _, img := range []string{
		makeFAT(f, "CIDATA", 12, 1, files),
		makeFAT(f, "CIDATA", 32, 34, files),
		makeISO(f, "config-2", files, "-J", "-r"),
		makeISO(f, "config-2", files, "-r"),
	} {
		b, err := os.ReadFile(img)
		if err != nil {
			f.Fatal(err)
		}
		// Cut the images short (the fuzzer copies one per run); the
		// metadata and both files still fit, as checked here.
		b = b[:min(len(b), 1<<20)]
		r := bytes.NewReader(b)
		var fsys driveFS
		if fsys, err = openFAT(r); err != nil {
			fsys, err = openISO(r)
		}
		if err != nil {
			f.Fatalf("%s: %v", img, err)
		}
		if got, err := fsys.ReadFile("ballast/machine-config.yaml", MaxSize); err != nil || !bytes.Equal(got, files["ballast/machine-config.yaml"]) {
			f.Fatalf("%s cut to %d bytes: ReadFile = %d bytes, %v", img, len(b), len(got), err)
		}
		bases = append(bases, b)
	}
	for i := range bases {
		f.Add(uint8(i), uint32(0), []byte{})
		f.Add(uint8(i), uint32(11), []byte{0, 2, 1})              // FAT: bytes per sector, sectors per cluster
		f.Add(uint8(i), uint32(16*2048+156), []byte{34, 0, 0xff}) // ISO: root directory record
	}
	f.Fuzz(func(t *testing.T, which uint8, off uint32, patch []byte) {
		b := bytes.Clone(bases[int(which)%len(bases)])
		copy(b[int(off%uint32(len(b))):], patch)
		r := bytes.NewReader(b)
		probeLabel(r)
		if fat, err := openFAT(r); err == nil {
			fat.Label()
			fat.ReadFile("user-data", 1<<20)
			fat.ReadFile("ballast/machine-config.yaml", 1<<20)
		}
		if iso, err := openISO(r); err == nil {
			iso.ReadFile("user-data", 1<<20)
			iso.ReadFile("ballast/machine-config.yaml", 1<<20)
		}
	})
}
