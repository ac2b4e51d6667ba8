package sysslot

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/ballast-os/ballast/initagent/txn/slot"
)

// TestGrowGPT writes an image's GPT, enlarges the file as dd to a larger
// disk would, and checks that the backup GPT moves to the new end, STATE
// grows to a MiB boundary, both copies verify, the config slot store still
// opens the disk, and a second call changes nothing.
func TestGrowGPT(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	const mib = 1 << 20 / 512
	tbl := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: "8C3F2D9E-6A1B-4C5D-9E8F-0A1B2C3D4E5F",
		Partitions: []*gpt.Partition{
			{Index: 1, Start: mib, End: 2*mib - 1, Type: gpt.Type(slot.PartitionType), Name: PartConfigA, GUID: "11111111-1111-4111-8111-111111111111"},
			{Index: 2, Start: 2 * mib, End: 3*mib - 1, Type: gpt.Type(slot.PartitionType), Name: PartConfigB, GUID: "22222222-2222-4222-8222-222222222222"},
			{Index: 3, Start: 3 * mib, End: 15*mib - 1, Type: gpt.Type(TypeState), Name: PartState, GUID: "33333333-3333-4333-8333-333333333333"},
		}}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(16 << 20); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Write(f, 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, _, changed, err := GrowGPT(path, PartState); err != nil || changed {
		t.Fatalf("GrowGPT on an image of its own size: changed=%v err=%v", changed, err)
	}
	if err := f.Truncate(40 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	start, length, changed, err := GrowGPT(path, PartState)
	if err != nil || !changed {
		t.Fatalf("GrowGPT = changed %v, %v", changed, err)
	}
	if start != 3<<20 || length != 36<<20 {
		t.Errorf("STATE at %d, %d bytes; want 3 MiB, 36 MiB", start, length)
	}
	if _, _, changed, err := GrowGPT(path, PartState); err != nil || changed {
		t.Errorf("second GrowGPT: changed=%v err=%v", changed, err)
	}
	f, err = os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := gpt.Read(f, 512, 512)
	if err != nil {
		t.Fatalf("go-diskfs reads the grown GPT: %v", err)
	}
	for _, p := range got.Partitions {
		if p.Name == PartState && p.End != 39*mib-1 {
			t.Errorf("STATE ends at LBA %d, want %d", p.End, 39*mib-1)
		}
	}
	backup := make([]byte, 512)
	f.ReadAt(backup, 40<<20-512)
	if string(backup[:8]) != "EFI PART" || binary.LittleEndian.Uint64(backup[24:]) != 40*mib-1 {
		t.Errorf("no backup GPT header at the new last LBA")
	}
	store, err := slot.NewGPT(path)
	if err != nil {
		t.Fatalf("config slots on the grown disk: %v", err)
	}
	store.Close()
}
