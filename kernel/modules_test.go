package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testDep = `kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
`

func testKernel(t *testing.T) *Kernel {
	t.Helper()
	g, err := parseDeps(strings.NewReader(testDep), strings.NewReader("kernel/fs/ext4/ext4.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	return &Kernel{Release: "6.1.0-test", Source: "test", ModulesDir: "/nonexistent", dep: g}
}

func TestResolveOrdersDependenciesFirst(t *testing.T) {
	k := testKernel(t)
	mods, err := k.Resolve([]string{"virtio-net", "virtio_blk", "virtio_pci", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range mods {
		if _, dup := pos[m.Name]; dup {
			t.Fatalf("module %s listed twice in %v", m.Name, mods)
		}
		pos[m.Name] = i
	}
	for user, needs := range k.dep.deps {
		if _, loaded := pos[user]; !loaded {
			continue
		}
		for _, d := range needs {
			if pos[d] > pos[user] {
				t.Errorf("%s loads at %d before its dependency %s at %d", user, pos[user], d, pos[d])
			}
		}
	}
	if len(mods) != 8 {
		t.Errorf("Resolve = %d modules, want 8 (ext4 is builtin): %v", len(mods), mods)
	}
}

func TestResolveMissingNamesModuleAndKernel(t *testing.T) {
	_, err := testKernel(t).Resolve([]string{"virtio_net", "no_such_mod"})
	if err == nil {
		t.Fatal("Resolve(no_such_mod) succeeded")
	}
	for _, want := range []string{`"no_such_mod"`, "6.1.0-test"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestPinForUnknownListsFlavours(t *testing.T) {
	_, err := PinFor("nope")
	if err == nil || !strings.Contains(err.Error(), "cloud-amd64") {
		t.Fatalf("PinFor(nope) = %v, want error listing cloud-amd64", err)
	}
}

func TestLocalKernelTree(t *testing.T) {
	root := t.TempDir()
	mods := filepath.Join(root, "lib", "modules", "6.9.0-local")
	if err := os.MkdirAll(filepath.Join(mods, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	vmlinuz := filepath.Join(root, "vmlinuz")
	for name, data := range map[string]string{
		vmlinuz:                                "kernel",
		filepath.Join(mods, "modules.dep"):     "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n",
		filepath.Join(mods, "modules.builtin"): "kernel/c.ko\n",
	} {
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k, err := Local(vmlinuz, mods)
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != "6.9.0-local" || !strings.HasPrefix(k.Source, "local:") {
		t.Errorf("Local = release %q source %q", k.Release, k.Source)
	}
	got, err := k.Resolve([]string{"a", "c"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "b" || got[1].Name != "a" || got[1].Deps[0] != "b" {
		t.Errorf("Resolve(a, c) = %+v, want b then a (c is builtin)", got)
	}

	if err := os.Remove(filepath.Join(mods, "modules.dep")); err != nil {
		t.Fatal(err)
	}
	if _, err := Local(vmlinuz, mods); err == nil || !strings.Contains(err.Error(), "depmod -b") {
		t.Errorf("Local without modules.dep = %v, want an error telling to run depmod", err)
	}
}

// TestSoftDepsLoadFirst: a module's "pre:" soft dependencies, named as a
// module or as an alias several modules provide, come before it; a soft
// dependency that would close a cycle is left out.
func TestSoftDepsLoadFirst(t *testing.T) {
	g, err := parseDeps(strings.NewReader(`kernel/lib/libcrc32c.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/crc32c_generic.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/net/netfilter/nf_conntrack.ko: kernel/lib/libcrc32c.ko
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = g.addSoftDeps(strings.NewReader(`# Soft dependencies extracted from modules themselves.
softdep libcrc32c pre: crc32c
softdep jbd2 pre: crypto-crc32c post: nothing
softdep crc32c_generic pre: libcrc32c
`), strings.NewReader(`alias crc32c crc32c_intel
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_generic
alias crypto-crc32c crc32c_generic
alias crc32c* not_a_literal_alias
`))
	if err != nil {
		t.Fatal(err)
	}
	k := &Kernel{Release: "test", dep: g}
	mods, err := k.Resolve([]string{"nf_conntrack", "jbd2"})
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, m := range mods {
		order = append(order, m.Name)
	}
	want := []string{"crc32c_intel", "crc32c_generic", "libcrc32c", "nf_conntrack", "jbd2"}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("load order %v, want %v", order, want)
	}
	for _, m := range mods {
		if m.Name == "libcrc32c" && (len(m.Deps) != 0 || strings.Join(m.SoftDeps, " ") != "crc32c_intel crc32c_generic") {
			t.Errorf("libcrc32c deps %v soft %v: want its providers as soft dependencies only", m.Deps, m.SoftDeps)
		}
	}
}
