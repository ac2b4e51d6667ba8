package slot

import (
	"crypto/sha256"
	"fmt"
	"os"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// PartitionType is the GPT partition type GUID of a ballast config slot
// partition. The store finds slots by partition name, not by type; the type
// only tells other tools the partition holds no filesystem they know.
const PartitionType = "18F11044-4ED0-4718-8A3B-4C978A2D4D33"

// ImagePartitionSize is the size of each CONFIG partition CreateImage makes.
const ImagePartitionSize = 1 << 20

// MinImageSize is the smallest disk CreateImage accepts: 1 MiB of alignment
// before the first partition, both partitions, and the backup GPT.
const MinImageSize = 4 << 20

// CreateImage makes path a disk image of size bytes (a multiple of 512, at
// least MinImageSize) with a protective MBR and a GPT holding CONFIG-A and
// CONFIG-B, 1 MiB each from 1 MiB on, both empty. An existing file is
// replaced. GUIDs are fixed, so images are reproducible; it is meant for
// tests and for building images.
func CreateImage(path string, size int64) (err error) {
	if size < MinImageSize || size%512 != 0 {
		return fmt.Errorf("config slot image size %d: must be a multiple of 512 and at least %d", size, MinImageSize)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create config slot image: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close config slot image: %w", cerr)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("size config slot image: %w", err)
	}
	const sector = 512
	const first = 1 << 20 / sector // 1 MiB alignment, as partitioning tools do
	const n = ImagePartitionSize / sector
	t := &gpt.Table{
		LogicalSectorSize:  sector,
		PhysicalSectorSize: sector,
		ProtectiveMBR:      true,
		GUID:               fixedGUID("ballast config slot image disk"),
		Partitions: []*gpt.Partition{
			{Index: 1, Start: first, End: first + n - 1, Type: PartitionType, Name: PartitionNamePrefix + A, GUID: fixedGUID("ballast config slot A")},
			{Index: 2, Start: first + n, End: first + 2*n - 1, Type: PartitionType, Name: PartitionNamePrefix + B, GUID: fixedGUID("ballast config slot B")},
		},
	}
	if err := t.Write(f, size); err != nil {
		return fmt.Errorf("write GPT to config slot image: %w", err)
	}
	return nil
}

// fixedGUID derives a version-4-shaped GUID from s (RFC 9562 §5.4 bits), so
// the same input always gives the same disk.
func fixedGUID(s string) string {
	h := sha256.Sum256([]byte(s))
	h[6] = h[6]&0x0f | 0x40
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
