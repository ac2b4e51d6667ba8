package boot

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

const cpuinfoTwoXeons = `processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 85
model name	: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
stepping	: 7
microcode	: 0x5003901
flags		: fpu vme

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
model		: 85
model name	: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
stepping	: 7
microcode	: 0x5003901
`

func TestReadCPU(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cpuinfo")
	if err := os.WriteFile(p, []byte(cpuinfoTwoXeons), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ReadCPU(p)
	if err != nil {
		t.Fatal(err)
	}
	want := CPU{Vendor: "GenuineIntel", Model: "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz", Signature: "06-55-07", Microcode: "0x5003901", Count: 2}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("ReadCPU = %+v, want %+v", c, want)
	}
	if err := os.WriteFile(p, []byte("flags: fpu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCPU(p); err == nil {
		t.Error("cpuinfo without a processor was accepted")
	}
}

func TestDropEarlyMicrocode(t *testing.T) {
	root := t.TempDir()
	if names, err := DropEarlyMicrocode(root); err != nil || names != nil {
		t.Errorf("without microcode: %v, %v; want nothing", names, err)
	}
	dir := filepath.Join(root, EarlyMicrocodeDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"AuthenticAMD.bin", "GenuineIntel.bin"} {
		if err := os.WriteFile(filepath.Join(dir, n), make([]byte, 100), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	names, err := DropEarlyMicrocode(root)
	if err != nil || !reflect.DeepEqual(names, []string{"AuthenticAMD.bin", "GenuineIntel.bin"}) {
		t.Errorf("DropEarlyMicrocode = %v, %v", names, err)
	}
	if _, err := os.Stat(filepath.Join(root, "kernel")); !os.IsNotExist(err) {
		t.Errorf("the early cpio's tree is still there: %v", err)
	}
}
