package image

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// cpioData is an odd size, so the data's padding is exercised.
func cpioData() []byte {
	data := make([]byte, 1<<20+3)
	for i := range data {
		data[i] = byte(i * 7)
	}
	return data
}

// TestWriteFileCPIOParses reads the archive back with u-root's newc reader:
// one regular file with the data, mode 0444, root-owned, mtime 0, then the
// trailer and nothing but padding after it.
func TestWriteFileCPIOParses(t *testing.T) {
	data := cpioData()
	var buf bytes.Buffer
	n, err := WriteFileCPIO(&buf, SystemFile, bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteFileCPIO returned %d, wrote %d bytes", n, buf.Len())
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 4: a following initrd would be misaligned", buf.Len())
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(buf.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("archive holds %d records before the trailer, want 1: %v", len(recs), recs)
	}
	r := recs[0]
	want := cpio.Info{Name: SystemFile, Mode: cpio.S_IFREG | 0o444, NLink: 1, FileSize: uint64(len(data))}
	if r.Info != want {
		t.Errorf("record %v, want %v", r.Info, want)
	}
	got, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Error("the record's data differs from what was written")
	}
	// The trailer ends the archive.
	end := strings.LastIndex(buf.String(), cpio.Trailer)
	if end < 0 || strings.Trim(buf.String()[end+len(cpio.Trailer):], "\x00") != "" {
		t.Error("the archive does not end with the trailer")
	}

	var again bytes.Buffer
	if _, err := WriteFileCPIO(&again, SystemFile, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two archives of the same data differ")
	}
}

// TestWriteFileCPIOExtractsWithGNUCpio extracts the archive with Debian's
// cpio, an independent reader.
func TestWriteFileCPIOExtractsWithGNUCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Fatal("cpio not found: tools/deps.sh installs it (apt-get install -y cpio)")
	}
	data := cpioData()
	dir := t.TempDir()
	archive := filepath.Join(dir, "system.cpio")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteFileCPIO(f, SystemFile, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	must(t, f.Close())

	list := exec.Command("cpio", "-it", "--quiet", "-F", archive)
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	if strings.TrimSpace(string(out)) != SystemFile {
		t.Errorf("cpio -t lists %q, want only %s", out, SystemFile)
	}
	extract := filepath.Join(dir, "x")
	must(t, os.Mkdir(extract, 0o755))
	ex := exec.Command("cpio", "-id", "--quiet", "--preserve-modification-time", "-F", archive)
	ex.Dir = extract
	if out, err := ex.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(extract, SystemFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Error("GNU cpio extracted different data")
	}
	fi, err := os.Stat(filepath.Join(extract, SystemFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o444 || fi.ModTime().Unix() != 0 {
		t.Errorf("extracted file has mode %v mtime %v, want 0444 and the epoch", fi.Mode(), fi.ModTime())
	}
}

// TestWriteFileCPIOShortInput: a file that shrank while being archived is an
// error, not a corrupt archive.
func TestWriteFileCPIOShortInput(t *testing.T) {
	_, err := WriteFileCPIO(io.Discard, SystemFile, bytes.NewReader(make([]byte, 10)), 20)
	if err == nil || !strings.Contains(err.Error(), "ended after 10 of 20 bytes") {
		t.Errorf("short input: err %v, want one naming the sizes", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// findEarly reads an initrd the way the kernel's early microcode loader
// does (lib/earlycpio.c find_cpio_data): newc headers one after another
// from the start, NUL padding skipped, across archive boundaries, until
// something that is not a header; it returns the data of the first file
// called name, and where the uncompressed archives end.
func findEarly(t *testing.T, initrd []byte, name string) (data []byte, end int) {
	t.Helper()
	p := 0
	for p+110 <= len(initrd) {
		if initrd[p] == 0 {
			p += 4
			continue
		}
		h := initrd[p : p+110]
		if string(h[:6]) != "070701" {
			return data, p
		}
		field := func(i int) int {
			var v int
			for _, c := range h[6+8*i : 14+8*i] {
				v <<= 4
				switch {
				case c >= '0' && c <= '9':
					v |= int(c - '0')
				case c >= 'a' && c <= 'f':
					v |= int(c-'a') + 10
				case c >= 'A' && c <= 'F':
					v |= int(c-'A') + 10
				default:
					t.Fatalf("header at %d: bad hex %q", p, h[6+8*i:14+8*i])
				}
			}
			return v
		}
		size, nameSize := field(6), field(11)
		n := string(initrd[p+110 : p+110+nameSize-1])
		dataAt := (p + 110 + nameSize + 3) &^ 3
		if n == name && data == nil {
			data = initrd[dataAt : dataAt+size]
		}
		p = (dataAt + size + 3) &^ 3
	}
	return data, p
}

// TestEarlyCPIOIsFoundLikeTheKernel: microcode written first in
// initramfs.img is found by the kernel's early scan, also behind PXE's
// system.cpio (iPXE and the EFI stub concatenate the initrds), and the
// compressed archive after it still unpacks.
func TestEarlyCPIOIsFoundLikeTheKernel(t *testing.T) {
	intel, amd := cpioData()[:1001], cpioData()[:70001]
	var initrd bytes.Buffer
	n, err := WriteEarlyCPIO(&initrd, []EarlyFile{
		{Name: "kernel/x86/microcode/GenuineIntel.bin", Data: intel},
		{Name: "kernel/x86/microcode/AuthenticAMD.bin", Data: amd},
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(initrd.Len()) || n%4 != 0 {
		t.Fatalf("WriteEarlyCPIO returned %d, wrote %d bytes (want equal, a multiple of 4)", n, initrd.Len())
	}
	a := NewArchive()
	must(t, a.AddFile("/init", []byte("#!/bin/agent\n"), 0o755))
	if _, err := a.WriteTo(&initrd); err != nil {
		t.Fatal(err)
	}
	sys := cpioData()
	var pxe bytes.Buffer
	if _, err := WriteFileCPIO(&pxe, SystemFile, bytes.NewReader(sys), int64(len(sys))); err != nil {
		t.Fatal(err)
	}
	pxe.Write(initrd.Bytes())

	for _, tc := range []struct {
		name   string
		initrd []byte
	}{{"initramfs.img", initrd.Bytes()}, {"system.cpio + initramfs.img", pxe.Bytes()}} {
		got, end := findEarly(t, tc.initrd, "kernel/x86/microcode/GenuineIntel.bin")
		if !bytes.Equal(got, intel) {
			t.Errorf("%s: the early scan finds GenuineIntel.bin with %d bytes, want the %d written", tc.name, len(got), len(intel))
		}
		if got, _ := findEarly(t, tc.initrd, "kernel/x86/microcode/AuthenticAMD.bin"); !bytes.Equal(got, amd) {
			t.Errorf("%s: the early scan finds AuthenticAMD.bin with %d bytes, want %d", tc.name, len(got), len(amd))
		}
		// What follows the uncompressed archives is the compressed initramfs.
		recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(mustReadAll(t, NewInitramfsReader(bytes.NewReader(tc.initrd[end:]))))))
		if err != nil || len(recs) != 1 || recs[0].Name != "init" {
			t.Errorf("%s: the archive after the early cpio holds %v (%v), want /init", tc.name, recs, err)
		}
	}

	// The kernel later unpacks the early archive into rootfs too: the
	// directories come before the files in it.
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(initrd.Bytes()[:n])))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
	}
	want := "kernel kernel/x86 kernel/x86/microcode kernel/x86/microcode/GenuineIntel.bin kernel/x86/microcode/AuthenticAMD.bin"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("early cpio holds %q, want %q", got, want)
	}
}

func mustReadAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
