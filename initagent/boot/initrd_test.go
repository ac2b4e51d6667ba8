package boot

import (
	"bytes"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func newc(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := cpio.Newc.Writer(&b)
	for _, name := range []string{"kernel", "kernel/x86/microcode/GenuineIntel.bin"} {
		if data, ok := files[name]; ok {
			if err := w.WriteRecord(cpio.StaticFile(name, data, 0o444)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func TestEarlyArchivesEnd(t *testing.T) {
	early := newc(t, map[string]string{"kernel/x86/microcode/GenuineIntel.bin": strings.Repeat("u", 1001)})
	zstdMagic := []byte{0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3}
	for _, tc := range []struct {
		name   string
		initrd []byte
		want   int
	}{
		{"compressed only", zstdMagic, 0},
		{"early cpio first", append(append([]byte{}, early...), zstdMagic...), len(early)},
		{"two archives and padding", append(append(append(append([]byte{}, early...), make([]byte, 8)...), early...), zstdMagic...), 2*len(early) + 8},
		{"early cpio only", early, len(early)},
	} {
		got, err := EarlyArchivesEnd(tc.initrd)
		if err != nil || got != tc.want {
			t.Errorf("%s: EarlyArchivesEnd = %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
	if _, err := EarlyArchivesEnd(early[:len(early)-200]); err == nil {
		t.Error("a truncated early cpio was accepted")
	}
}
