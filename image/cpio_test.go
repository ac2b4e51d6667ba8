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
