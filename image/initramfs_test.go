package image

import (
	"bytes"
	"io"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func TestArchiveSortedWithParentsAndRejectsConflicts(t *testing.T) {
	a := NewArchive()
	for _, step := range []error{
		a.AddFile("/lib/modules/x/kernel/a.ko", []byte("a"), 0o644),
		a.AddFile("/init", []byte("#!"), 0o755),
		a.AddCharDev("/dev/console", 0o600, 5, 1),
		a.AddDir("/lib", 0o755),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	if err := a.AddFile("init", []byte("other"), 0o755); err == nil {
		t.Error("adding /init twice succeeded, want a conflict error")
	}
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(buf.Bytes(), []byte{0x02, 0x21, 0x4c, 0x18}) {
		t.Fatalf("initramfs starts with % x, want LZ4's legacy frame magic (the format the kernel reads)", buf.Bytes()[:4])
	}
	raw, err := io.ReadAll(NewInitramfsReader(&buf))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: mtime=%d uid=%d gid=%d, want all 0", r.Name, r.MTime, r.UID, r.GID)
		}
	}
	want := []string{"dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/x", "lib/modules/x/kernel", "lib/modules/x/kernel/a.ko"}
	if len(names) != len(want) {
		t.Fatalf("records = %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("records = %v, want %v", names, want)
		}
	}
}
