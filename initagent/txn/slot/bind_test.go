package slot

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// relabel rewrites the image's GPT (both copies) with new disk and
// partition GUIDs, keeping every extent: what a new installation's GPT
// looks like over the same partitions of an old disk.
func relabel(t *testing.T, path, disk, slot, partGUID string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tbl, err := gpt.Read(f, 512, 512)
	if err != nil {
		t.Fatal(err)
	}
	if disk != "" {
		tbl.GUID = disk
	}
	for _, p := range tbl.Partitions {
		if p.Name == PartitionNamePrefix+slot && partGUID != "" {
			p.GUID = partGUID
		}
	}
	if err := tbl.Write(f, testImageSize); err != nil {
		t.Fatal(err)
	}
}

// TestRecordsBoundToDisk: a committed config left in CONFIG-A/B by an
// earlier installation (another disk GUID, or another partition GUID) reads
// as empty, so neither boot nor rollback can apply it; a new config can be
// written over it; records from before the binding still read.
func TestRecordsBoundToDisk(t *testing.T) {
	path := newImage(t)
	s := openGPT(t, path)
	mustCommit(t, s, mustBegin(t, s, "old machine, generation 1"))
	mustCommit(t, s, mustBegin(t, s, "old machine, generation 2"))
	s.Close()

	relabel(t, path, "6B1E0E2A-3C4D-4E5F-8A9B-0C1D2E3F4A5B", "", "")
	s = openGPT(t, path)
	for _, name := range []string{A, B} {
		_, _, err := s.Read(name)
		if !errors.Is(err, ErrEmpty) || !strings.Contains(err.Error(), "earlier installation") ||
			!strings.Contains(err.Error(), "6B1E0E2A-3C4D-4E5F-8A9B-0C1D2E3F4A5B") {
			t.Fatalf("Read(%s) on a relabelled disk = %v, want ErrEmpty naming both disks", name, err)
		}
	}
	if _, _, err := Active(s); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("Active on a relabelled disk = %v, want ErrNoSlot", err)
	}
	if err := s.SetResult(A, "x"); !errors.Is(err, ErrEmpty) {
		t.Errorf("SetResult on a foreign record = %v, want ErrEmpty", err)
	}
	slots, err := s.Slots()
	if err != nil {
		t.Fatal(err)
	}
	if slots[0].Header.Generation != 0 || slots[1].Header.Generation != 0 {
		t.Errorf("Slots reports foreign headers: %+v", slots)
	}
	name := mustBegin(t, s, "new machine")
	mustCommit(t, s, name)
	act, data, err := Active(s)
	if err != nil || string(data) != "new machine" || act.Header.Generation != 1 {
		t.Fatalf("Active after a new commit = %+v %q %v", act, data, err)
	}
	if _, _, err := s.Read(map[string]string{A: B, B: A}[name]); !errors.Is(err, ErrEmpty) {
		t.Errorf("the other slot still holds the old machine's config: %v", err)
	}
	s.Close()

	// Only the partition GUID differs: still foreign.
	relabel(t, path, "", name, "0F0E0D0C-0B0A-4908-8706-050403020100")
	s = openGPT(t, path)
	if _, _, err := s.Read(name); !errors.Is(err, ErrEmpty) {
		t.Errorf("record under a new partition GUID: %v", err)
	}
	s.Close()

	// A record without a binding (written before it existed) still reads.
	path = newImage(t)
	b, err := encodeSlot(Header{Generation: 7, Time: time.Unix(0, 0).UTC(), Result: ResultCommitted}, Binding{}, []byte("legacy"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s = openGPT(t, path)
	if h, data, err := s.Read(A); err != nil || string(data) != "legacy" || h.Generation != 7 {
		t.Errorf("legacy record: %+v %q %v", h, data, err)
	}
}
