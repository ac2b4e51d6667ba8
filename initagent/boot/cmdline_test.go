package boot

import (
	"os"
	"reflect"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"console=ttyS0,115200 quiet\n", []string{"console=ttyS0,115200", "quiet"}},
		{`  a  ballast.hostname="node 1" b="" `, []string{"a", "ballast.hostname=node 1", "b="}},
		{`x="unterminated value`, []string{"x=unterminated value"}},
	} {
		got := ParseCmdline(tc.in).Args
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseCmdline(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCmdlineGet(t *testing.T) {
	c := ParseCmdline("ballast.shutdown=reboot quiet ballast.hostname=a ballast.hostname=b")
	if v, ok := c.Get("ballast.hostname"); !ok || v != "b" {
		t.Errorf("Get(ballast.hostname) = %q, %v; want b, true", v, ok)
	}
	if v, ok := c.Get("quiet"); !ok || v != "" {
		t.Errorf("Get(quiet) = %q, %v; want \"\", true", v, ok)
	}
	if _, ok := c.Get("ballast.config"); ok {
		t.Error("Get(ballast.config) found a key that is not there")
	}
	want := map[string]string{"ballast.shutdown": "reboot", "ballast.hostname": "b"}
	if got := c.Ballast(); !reflect.DeepEqual(got, want) {
		t.Errorf("Ballast() = %v, want %v", got, want)
	}
}

func TestReadCmdlineFile(t *testing.T) {
	dir := t.TempDir()
	c, err := ReadCmdlineFile(dir + "/missing")
	if err != nil || len(c.Args) != 0 {
		t.Fatalf("missing file: %v %v, want an empty cmdline", c.Args, err)
	}
	path := dir + "/cmdline"
	if err := os.WriteFile(path, []byte("ballast.hostname=cp-1 ballast.debug\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = ReadCmdlineFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Get("ballast.hostname"); v != "cp-1" {
		t.Errorf("ballast.hostname = %q", v)
	}
	if _, ok := c.Get("ballast.debug"); !ok {
		t.Errorf("flag ballast.debug lost: %v", c.Args)
	}
}
