package sysslot

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
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

// TestRelabelGPT: new disk and partition GUIDs in both GPT copies, each
// verifying on its own (the config slot store finds nothing to repair),
// extents and names unchanged, and version-4 GUIDs.
func TestRelabelGPT(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	const mib = 1 << 20 / 512
	tbl := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: "8C3F2D9E-6A1B-4C5D-9E8F-0A1B2C3D4E5F",
		Partitions: []*gpt.Partition{
			{Index: 1, Start: mib, End: 2*mib - 1, Type: gpt.Type(slot.PartitionType), Name: PartConfigA, GUID: "11111111-1111-4111-8111-111111111111"},
			{Index: 2, Start: 2 * mib, End: 3*mib - 1, Type: gpt.Type(slot.PartitionType), Name: PartConfigB, GUID: "22222222-2222-4222-8222-222222222222"},
		}}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 20); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Write(f, 8<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := RelabelGPT(path, rand.Reader); err != nil {
		t.Fatal(err)
	}
	img, _ := os.ReadFile(path)
	last := int64(len(img))/512 - 1
	var guids [2]string
	for i, lba := range []int64{1, last} {
		h := img[lba*512 : lba*512+512]
		hs := binary.LittleEndian.Uint32(h[12:])
		if string(h[:8]) != "EFI PART" || gptHeaderCRC(h[:hs]) != binary.LittleEndian.Uint32(h[16:]) {
			t.Fatalf("GPT header at LBA %d does not verify", lba)
		}
		el := int64(binary.LittleEndian.Uint64(h[72:]))
		entries := img[el*512 : el*512+128*128]
		if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(h[88:]) {
			t.Fatalf("GPT entries of the header at LBA %d do not verify", lba)
		}
		guids[i] = string(h[56:72]) + string(entries[16:32]) + string(entries[128+16:128+32])
		if h[56+7]>>4 != 4 || entries[16+7]>>4 != 4 {
			t.Errorf("GUIDs are not version 4: % x", h[56:72])
		}
	}
	if guids[0] != guids[1] {
		t.Error("primary and backup GPT carry different GUIDs")
	}
	f, _ = os.Open(path)
	got, err := gpt.Read(f, 512, 512)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if strings.EqualFold(got.GUID, tbl.GUID) {
		t.Error("disk GUID unchanged")
	}
	for i, p := range got.Partitions[:2] {
		if strings.EqualFold(p.GUID, tbl.Partitions[i].GUID) || p.Start != tbl.Partitions[i].Start || p.Name != tbl.Partitions[i].Name {
			t.Errorf("partition %d after relabel: %+v", i+1, p)
		}
	}
	store, err := slot.NewGPT(path)
	if err != nil {
		t.Fatal(err)
	}
	store.Close()
	if after, _ := os.ReadFile(path); !bytes.Equal(after, img) {
		t.Error("the config slot store repaired the relabelled GPT: the copies disagreed")
	}
}
