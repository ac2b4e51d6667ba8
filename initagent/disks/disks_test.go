package disks

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeDisk lays out /sys/block/NAME → devices/... with the given files.
func fakeDisk(t *testing.T, sys, name, devPath string, files map[string]string) {
	t.Helper()
	dev := filepath.Join(sys, devPath)
	blk := filepath.Join(dev, "block", name)
	for rel, content := range files {
		p := filepath.Join(blk, rel)
		if strings.HasPrefix(rel, "device/") {
			p = filepath.Join(dev, strings.TrimPrefix(rel, "device/"))
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(blk, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dev, filepath.Join(blk, "device")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(sys, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(blk, filepath.Join(sys, "block", name)); err != nil {
		t.Fatal(err)
	}
}

// identify renders ATA IDENTIFY data with model in words 27–46 as libata's
// id attribute shows it: 256 words, 8 per line, each %04x.
func identify(model string) string {
	words := make([]uint16, 256)
	m := fmt.Sprintf("%-40s", model)
	for w := 0; w < 20; w++ {
		words[27+w] = uint16(m[2*w])<<8 | uint16(m[2*w+1])
	}
	var b strings.Builder
	for i, w := range words {
		fmt.Fprintf(&b, "%04x", w)
		if i%8 == 7 {
			b.WriteByte('\n')
		} else {
			b.WriteByte(' ')
		}
	}
	return b.String()
}

func vpd80(serial string) string { return string([]byte{0, 0x80, 0, byte(len(serial))}) + serial }

// TestPersistentNames: the names udev's persistent-storage rules give
// QEMU's emulated disks (ata-MODEL_SERIAL with IDENTIFY's model,
// nvme-WWID and nvme-MODEL_SERIAL, virtio-SERIAL,
// usb-VENDOR_MODEL_SERIAL-T:L, wwn-0xNAA), and Resolve maps them back to
// the kernel's names.
func TestPersistentNames(t *testing.T) {
	sys := t.TempDir()
	fakeDisk(t, sys, "sda", "devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0", map[string]string{
		"size": "2097152\n", "removable": "0\n",
		"device/vendor": "ATA     \n", "device/model": "QEMU HARDDISK   \n", "device/vpd_pg80": vpd80("QM00001"),
		"device/wwid": "t10.ATA     QEMU HARDDISK                           QM00001\n",
	})
	// libata's IDENTIFY data lives beside the SCSI host under the port.
	idPath := filepath.Join(sys, "devices/pci0000:00/0000:00:1f.2/ata1/link1/dev1.0/ata_device/dev1.0/id")
	if err := os.MkdirAll(filepath.Dir(idPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(idPath, []byte(identify("QEMU HARDDISK WITH A LONG MODEL NAME")), 0o444); err != nil {
		t.Fatal(err)
	}
	fakeDisk(t, sys, "nvme0n1", "devices/pci0000:00/0000:00:04.0/nvme/nvme0", map[string]string{
		"size": "4194304\n", "wwid": "nvme.1b36-62616c6c6173742d6e766d652d31-51454d55204e564d65204374726c-00000001\n",
		"device/model": "QEMU NVMe Ctrl                          \n", "device/serial": "ballast-nvme-1      \n",
	})
	fakeDisk(t, sys, "vda", "devices/pci0000:00/0000:00:05.0/virtio2", map[string]string{"size": "1024\n", "serial": "cfg disk\n"})
	fakeDisk(t, sys, "sdb", "devices/pci0000:00/0000:00:06.0/usb2/2-1/2-1:1.0/host1/target1:0:0/1:0:0:0", map[string]string{
		"size": "65536\n", "removable": "1\n", "device/vendor": "QEMU    \n", "device/model": "QEMU HARDDISK   \n", "device/vpd_pg80": vpd80("ignored"),
		"device/wwid": "naa.5000C500A1B2C3D4\n",
	})
	usbDev := filepath.Join(sys, "devices/pci0000:00/0000:00:06.0/usb2/2-1")
	for f, v := range map[string]string{"idVendor": "46f4\n", "serial": "1-0000:00:06.0-1\n"} {
		if err := os.WriteFile(filepath.Join(usbDev, f), []byte(v), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	fakeDisk(t, sys, "loop0", "devices/virtual/block/loop0", map[string]string{"size": "8\n"})

	got := map[string]Disk{}
	for _, d := range List(sys) {
		got[d.Name] = d
	}
	if len(got) != 4 {
		t.Fatalf("disks %v: want sda, sdb, nvme0n1, vda (no loop)", got)
	}
	for name, want := range map[string][]string{
		"sda":     {"ata-QEMU_HARDDISK_WITH_A_LONG_MODEL_NAME_QM00001"},
		"nvme0n1": {"nvme-nvme.1b36-62616c6c6173742d6e766d652d31-51454d55204e564d65204374726c-00000001", "nvme-QEMU_NVMe_Ctrl_ballast-nvme-1"},
		"vda":     {"virtio-cfg_disk"},
		"sdb":     {"usb-QEMU_QEMU_HARDDISK_1-0000:00:06.0-1-0:0", "wwn-0x5000c500a1b2c3d4"},
	} {
		if !slices.Equal(got[name].IDs, want) {
			t.Errorf("%s ids %q, want %q", name, got[name].IDs, want)
		}
	}
	if d := got["sda"]; d.Transport != "ata" || d.SizeBytes != 1<<30 || d.Serial != "QM00001" {
		t.Errorf("sda %+v", d)
	}
	if d := got["sdb"]; d.Transport != "usb" || !d.Removable {
		t.Errorf("sdb %+v", d)
	}

	for in, want := range map[string]string{
		"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_ballast-nvme-1":               "/dev/nvme0n1",
		"/dev/disk/by-id/ata-QEMU_HARDDISK_WITH_A_LONG_MODEL_NAME_QM00001": "/dev/sda",
		"/dev/sda": "/dev/sda",
	} {
		if r, err := Resolve(sys, in); err != nil || r != want {
			t.Errorf("Resolve(%s) = %q, %v; want %s", in, r, err, want)
		}
	}
	if _, err := Resolve(sys, "/dev/disk/by-id/ata-NOPE"); err == nil || !strings.Contains(err.Error(), "ata-QEMU_HARDDISK_WITH_A_LONG_MODEL_NAME_QM00001") {
		t.Errorf("unknown id: %v; want an error listing the names there are", err)
	}
}
