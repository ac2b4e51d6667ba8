// Package disks lists the node's disks as sysfs describes them and gives
// them the persistent names udev would (/dev/disk/by-id/…), so an operator
// can name an install target that does not move when controllers probe in
// another order. ballast runs no udev: the names are computed, not linked.
package disks

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ByIDDir is where udev keeps the persistent names.
const ByIDDir = "/dev/disk/by-id/"

// Disk is one whole disk.
type Disk struct {
	Name      string   `json:"name"` // kernel name: sda, nvme0n1, vda
	SizeBytes int64    `json:"sizeBytes"`
	Model     string   `json:"model,omitempty"`
	Serial    string   `json:"serial,omitempty"`
	Removable bool     `json:"removable,omitempty"`
	Transport string   `json:"transport,omitempty"` // ata, nvme, usb, virtio, scsi
	IDs       []string `json:"ids,omitempty"`       // names under /dev/disk/by-id/
}

// List returns the whole disks under sys (normally /sys), sorted by name;
// loop, RAM, device-mapper, md and CD-ROM devices are left out.
func List(sys string) []Disk {
	dirs, _ := filepath.Glob(filepath.Join(sys, "block", "*"))
	var out []Disk
	for _, dir := range dirs {
		name := filepath.Base(dir)
		if hasPrefix(name, "loop", "ram", "zram", "dm-", "md", "sr", "nbd", "fd") {
			continue
		}
		out = append(out, describe(dir, name))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Resolve turns a /dev/disk/by-id/ name into the kernel's /dev/NAME. Other
// paths come back unchanged.
func Resolve(sys, path string) (string, error) {
	id, ok := strings.CutPrefix(path, ByIDDir)
	if !ok {
		return path, nil
	}
	var known []string
	for _, d := range List(sys) {
		for _, i := range d.IDs {
			if i == id {
				return "/dev/" + d.Name, nil
			}
			known = append(known, ByIDDir+i)
		}
	}
	if len(known) == 0 {
		return "", fmt.Errorf("%s: no disk has a persistent name here (no serial numbers or WWNs): name the disk by /dev/NAME", path)
	}
	return "", fmt.Errorf("%s: no such disk; the disks here are %s", path, strings.Join(known, ", "))
}

func describe(dir, name string) Disk {
	attr := func(rel string) string {
		b, _ := os.ReadFile(filepath.Join(dir, rel))
		return strings.TrimSpace(string(b))
	}
	sectors, _ := strconv.ParseInt(attr("size"), 10, 64)
	d := Disk{Name: name, SizeBytes: sectors * 512, Removable: attr("removable") == "1"}
	devPath, _ := filepath.EvalSymlinks(filepath.Join(dir, "device"))
	switch {
	case strings.HasPrefix(name, "nvme"):
		d.Transport = "nvme"
		d.Model, d.Serial = attr("device/model"), attr("device/serial")
		if w := attr("wwid"); w != "" {
			d.IDs = append(d.IDs, "nvme-"+w)
		}
		if d.Model != "" && d.Serial != "" {
			d.IDs = append(d.IDs, "nvme-"+idPart(d.Model)+"_"+idPart(d.Serial))
		}
	case strings.HasPrefix(name, "vd"):
		d.Transport = "virtio"
		if d.Serial = attr("serial"); d.Serial != "" {
			d.IDs = append(d.IDs, "virtio-"+idPart(d.Serial))
		}
	default: // SCSI disks: SATA through libata, SAS, USB mass storage
		d.Model = attr("device/model")
		d.Serial = unitSerial(filepath.Join(dir, "device/vpd_pg80"))
		vendor := attr("device/vendor")
		switch {
		case strings.Contains(devPath, "/usb"):
			d.Transport = "usb"
			// udev: the SCSI vendor and model, the USB device's own serial,
			// then target:lun.
			if usb := usbSerial(devPath); usb != "" {
				d.Serial = usb
			}
			if d.Serial != "" {
				d.IDs = append(d.IDs, "usb-"+idPart(vendor)+"_"+idPart(d.Model)+"_"+idPart(d.Serial)+"-"+targetLUN(devPath))
			}
		case vendor == "ATA":
			d.Transport = "ata"
			// udev names ATA disks from IDENTIFY's 40-character model;
			// the SCSI inquiry model is cut to 16.
			if m := ataModel(devPath); m != "" {
				d.Model = m
			}
			if d.Serial != "" {
				d.IDs = append(d.IDs, "ata-"+idPart(d.Model)+"_"+idPart(d.Serial))
			}
		default:
			d.Transport = "scsi"
			if d.Serial != "" {
				d.IDs = append(d.IDs, "scsi-S"+idPart(vendor)+"_"+idPart(d.Model)+"_"+idPart(d.Serial))
			}
		}
		if w, ok := strings.CutPrefix(attr("device/wwid"), "naa."); ok {
			d.IDs = append(d.IDs, "wwn-0x"+strings.ToLower(w))
		}
	}
	return d
}

// idPart is a sysfs string as udev puts it in a name: trimmed, runs of
// spaces as one '_', and only characters safe in a file name.
func idPart(s string) string {
	var b strings.Builder
	space := false
	for _, r := range strings.TrimSpace(s) {
		switch {
		case r == ' ':
			if !space {
				b.WriteByte('_')
			}
			space = true
			continue
		case r < 0x20 || r > 0x7e || r == '/':
			b.WriteByte('_')
		default:
			b.WriteRune(r)
		}
		space = false
	}
	return b.String()
}

// unitSerial reads a SCSI VPD page 0x80 (unit serial number): a 4-byte
// header whose last byte is the length, then the serial.
func unitSerial(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 4 || b[1] != 0x80 {
		return ""
	}
	n := min(int(b[3]), len(b)-4)
	return strings.TrimSpace(strings.Trim(string(b[4:4+n]), "\x00"))
}

// ataModel reads the model from the ATA IDENTIFY data libata exposes
// (…/ataN/link*/dev*/ata_device/dev*/id, 256 words in hex): words 27–46,
// two characters per word, high byte first.
func ataModel(devPath string) string {
	i := strings.Index(devPath, "/ata")
	if i < 0 {
		return ""
	}
	port := devPath[:i+1] + strings.SplitN(devPath[i+1:], "/", 2)[0]
	ids, _ := filepath.Glob(filepath.Join(port, "link*", "dev*", "ata_device", "dev*", "id"))
	if len(ids) != 1 {
		return ""
	}
	text, err := os.ReadFile(ids[0])
	if err != nil {
		return ""
	}
	raw, err := hex.DecodeString(strings.Join(strings.Fields(string(text)), ""))
	if err != nil || len(raw) < 94 {
		return ""
	}
	model := make([]byte, 0, 40)
	for w := 27; w <= 46; w++ {
		model = append(model, raw[2*w], raw[2*w+1])
	}
	return strings.TrimSpace(string(model))
}

// usbSerial is the iSerial of the USB device a disk sits on: the nearest
// ancestor directory with idVendor.
func usbSerial(devPath string) string {
	for dir := devPath; dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "idVendor")); err == nil {
			b, _ := os.ReadFile(filepath.Join(dir, "serial"))
			return strings.TrimSpace(string(b))
		}
	}
	return ""
}

// targetLUN is "T:L" from a SCSI device path ending in H:C:T:L.
func targetLUN(devPath string) string {
	f := strings.Split(filepath.Base(devPath), ":")
	if len(f) != 4 {
		return "0:0"
	}
	return f[2] + ":" + f[3]
}

func hasPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
