package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/ballast-os/ballast/initagent/sysslot"
)

// ISOSpec is what goes on the hybrid live/installer ISO.
type ISOSpec struct {
	Volume    string // volume identifier, the recipe name
	Title     string
	Kernel    string // host paths
	Initramfs string
	System    string
	Raw       string // raw disk image the installer writes (stored zstd-compressed)
	Cmdline   []string
	BootEFI   string // systemd-boot; empty means SystemdBootEFI
	Isolinux  string // empty means IsolinuxBin
	Ldlinux   string // empty means LdlinuxC32
	MBR       string // isohybrid MBR code; empty means IsohybridMBR
}

const isoBlock = 2048

// ISO paths (ISO 9660 names; Linux's isofs shows them in lower case).
const (
	isoKernel  = "/BALLAST/VMLINUZ"
	isoInitrd  = "/BALLAST/INITRD.IMG"
	isoSystem  = "/BALLAST/SYSTEM.SQF"
	isoDisk    = "/BALLAST/DISK.ZST"
	isoInstall = "/BALLAST/INSTALL.JSON"
	isoEFIBoot = "/EFIBOOT.IMG"
	isoBootCat = "/BOOT.CAT"
	isoIsolinx = "/ISOLINUX/ISOLINUX.BIN"
	isoLdlinux = "/ISOLINUX/LDLINUX.C32"
	isoCfg     = "/ISOLINUX/ISOLINUX.CFG"
)

// LiveParam on the kernel command line marks a live boot from the ISO.
const LiveParam = "ballast.live"

// IsolinuxCfg boots the live system on the serial console and VGA.
func IsolinuxCfg(title string, cmdline []string) []byte {
	live := strings.Join(append(append([]string{}, cmdline...), LiveParam), " ")
	return []byte(fmt.Sprintf("SERIAL 0 115200\nDEFAULT ballast\nPROMPT 1\nTIMEOUT 30\n"+
		"SAY %s: Enter (or wait 3 s) boots live; type install to install to the only empty disk\n"+
		"LABEL ballast\n  KERNEL /ballast/vmlinuz\n  INITRD /ballast/initrd.img\n  APPEND %s\n"+
		"LABEL install\n  KERNEL /ballast/vmlinuz\n  INITRD /ballast/initrd.img\n  APPEND %s %s\n",
		title, live, live, InstallAutoParam))
}

// InstallAutoParam installs to the only empty disk (sysslot.AutoTarget).
const InstallAutoParam = "ballast.install=" + sysslot.AutoTarget

// ISOLoaderConf is the live medium's loader.conf: a short menu whose
// entry can be edited (press e), to add ballast.install=/dev/… as at the
// BIOS boot prompt. Installed disks keep LoaderConf (no editor).
const ISOLoaderConf = "timeout 3\neditor yes\nauto-entries no\nauto-firmware no\n"

// WriteISO writes the hybrid ISO: El Torito with a BIOS entry (isolinux)
// and a UEFI entry (efiboot.img: a FAT image with systemd-boot, kernel and
// initramfs), and in the 32 KiB system area an isohybrid MBR whose boot
// code starts isolinux and whose partition table points UEFI firmware at
// efiboot.img, so the same file boots from a USB stick. It returns what
// the installer reads from install.json (the raw image's size and sha256).
func WriteISO(ctx context.Context, out *os.File, s ISOSpec) (*sysslot.MediaInfo, error) {
	info, err := writeISO(ctx, out, s)
	if err != nil {
		return nil, err
	}
	return info, nil
}

func writeISO(ctx context.Context, out *os.File, s ISOSpec) (*sysslot.MediaInfo, error) {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&s.BootEFI, SystemdBootEFI)
	def(&s.Isolinux, IsolinuxBin)
	def(&s.Ldlinux, LdlinuxC32)
	def(&s.MBR, IsohybridMBR)
	tmp, err := os.MkdirTemp(path.Dir(out.Name()), ".iso-parts-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	// The installer's image, compressed; the sha256 is of the raw bytes.
	zpath := path.Join(tmp, "disk.zst")
	info, err := compressRaw(ctx, s.Raw, zpath)
	if err != nil {
		return nil, err
	}
	infoJSON, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return nil, err
	}

	// efiboot.img: systemd-boot with one entry for the live system.
	live := sysslot.Entry{Title: s.Title + " (live)", Version: 1, Linux: "/ballast/vmlinuz", Initrd: "/ballast/initramfs.img",
		Options: strings.Join(append(append([]string{}, s.Cmdline...), LiveParam), " ")}
	// Sorted after the live entry (lower version), so live stays the default.
	install := sysslot.Entry{Title: s.Title + " (install to the only empty disk)", Version: 0, Linux: live.Linux, Initrd: live.Initrd,
		Options: live.Options + " " + InstallAutoParam}
	efiFiles := []File{
		{Name: "/EFI/BOOT/BOOTX64.EFI", Src: s.BootEFI},
		{Name: "/loader/loader.conf", Data: []byte(ISOLoaderConf)},
		{Name: "/loader/entries/ballast-live.conf", Data: live.Marshal()},
		{Name: "/loader/entries/ballast-install.conf", Data: install.Marshal()},
		{Name: "/ballast/vmlinuz", Src: s.Kernel},
		{Name: "/ballast/initramfs.img", Src: s.Initramfs},
	}
	var content int64
	for _, f := range efiFiles {
		n, err := fileSize(f)
		if err != nil {
			return nil, err
		}
		content += n
	}
	efiSize := (content*11/10 + 2*mib + mib - 1) / mib * mib
	efiPath := path.Join(tmp, "efiboot.img")
	ef, err := os.Create(efiPath)
	if err != nil {
		return nil, err
	}
	if err := ef.Truncate(efiSize); err == nil {
		err = writeFAT(ef, 0, efiSize, "EFIBOOT", efiFiles)
	}
	if cerr := ef.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("efiboot.img: %w", err)
	}

	iso := &isoBuilder{}
	iso.add(isoBootCat, File{Data: make([]byte, isoBlock)}) // filled in below
	iso.add(isoIsolinx, File{Src: s.Isolinux})
	iso.add(isoLdlinux, File{Src: s.Ldlinux})
	iso.add(isoCfg, File{Data: IsolinuxCfg(s.Title, s.Cmdline)})
	iso.add(isoEFIBoot, File{Src: efiPath})
	iso.add(isoKernel, File{Src: s.Kernel})
	iso.add(isoInitrd, File{Src: s.Initramfs})
	iso.add(isoSystem, File{Src: s.System})
	iso.add(isoInstall, File{Data: append(infoJSON, '\n')})
	iso.add(isoDisk, File{Src: zpath})
	if err := iso.layout(); err != nil {
		return nil, err
	}
	// El Torito: boot catalog, isolinux's boot info table.
	isolinux, efiboot := iso.files[isoIsolinx], iso.files[isoEFIBoot]
	iso.files[isoBootCat].data = bootCatalog(isolinux.lba, efiboot.lba, elToritoSectors(efiSize))
	iso.patch = func(name string, b []byte, fileOff int64) {
		if name == isoIsolinx && fileOff == 0 && len(b) >= 64 {
			bootInfoTable(b, isolinux)
		}
	}
	if err := iso.write(out, s.Volume); err != nil {
		return nil, err
	}
	mbr, err := os.ReadFile(s.MBR)
	if err != nil {
		return nil, fmt.Errorf("isohybrid MBR: %w (install Debian's isolinux)", err)
	}
	sys, err := isohybrid(mbr, isolinux.lba, efiboot.lba, efiSize, iso.size, GUID(s.Volume, "iso"))
	if err != nil {
		return nil, err
	}
	if _, err := out.WriteAt(sys, 0); err != nil {
		return nil, err
	}
	return info, out.Sync()
}

// compressRaw writes src zstd-compressed to dst (single-threaded, so the
// bytes are reproducible) and describes it for the installer.
func compressRaw(ctx context.Context, src, dst string) (*sysslot.MediaInfo, error) {
	in, err := os.Open(src)
	if err != nil {
		return nil, fmt.Errorf("raw image for the ISO: %w", err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	enc, err := zstd.NewWriter(out, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(enc, h), ctxReader{ctx, in})
	if err != nil {
		enc.Close()
		return nil, fmt.Errorf("compress raw image: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	chunks, err := dataChunks(in, n)
	if err != nil {
		return nil, fmt.Errorf("raw image data map: %w", err)
	}
	return &sysslot.MediaInfo{Disk: "ballast/disk.zst", Size: n, SHA256: hex.EncodeToString(h.Sum(nil)), Chunks: chunks}, nil
}

// dataChunks maps the file's data (SEEK_DATA/SEEK_HOLE) to ranges of
// sysslot.InstallChunk-sized chunks.
func dataChunks(f *os.File, size int64) ([][2]int64, error) {
	const c = sysslot.InstallChunk
	var out [][2]int64
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return nil, err
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		first, last := data/c, (hole-1)/c
		if n := len(out); n > 0 && out[n-1][1] >= first-1 {
			out[n-1][1] = max(out[n-1][1], last)
		} else {
			out = append(out, [2]int64{first, last})
		}
		off = hole
	}
	return out, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// elToritoSectors is the sector count of the EFI entry: its size in
// 512-byte sectors, or, for an image larger than the 16-bit field holds
// (32 MiB), 1, which UEFI firmware reads as "the image runs to the end of
// the volume" (EDK2's ElTorito.c: a count below 2); the FAT inside knows
// its own size. USB boot uses the MBR partition, which has the size.
func elToritoSectors(size int64) uint16 {
	if n := size / 512; n <= 0xFFFF {
		return uint16(n)
	}
	return 1
}

// bootCatalog is the El Torito catalog: validation entry, the BIOS
// default entry (no emulation, load 4 sectors of isolinux.bin), and a final
// section header for the EFI platform with the efiboot.img entry.
func bootCatalog(isolinuxLBA, efiLBA uint32, efiSectors uint16) []byte {
	b := make([]byte, isoBlock)
	v := b[0:32]
	v[0] = 1 // header ID
	v[1] = 0 // x86
	copy(v[4:28], "ballast")
	v[30], v[31] = 0x55, 0xAA
	var sum uint16
	for i := 0; i < 32; i += 2 {
		sum += binary.LittleEndian.Uint16(v[i:])
	}
	binary.LittleEndian.PutUint16(v[28:], -sum)
	d := b[32:64]
	d[0] = 0x88 // bootable
	binary.LittleEndian.PutUint16(d[6:], 4)
	binary.LittleEndian.PutUint32(d[8:], isolinuxLBA)
	h := b[64:96]
	h[0] = 0x91 // final section header
	h[1] = 0xEF // EFI
	binary.LittleEndian.PutUint16(h[2:], 1)
	e := b[96:128]
	e[0] = 0x88
	binary.LittleEndian.PutUint16(e[6:], efiSectors)
	binary.LittleEndian.PutUint32(e[8:], efiLBA)
	return b
}

// bootInfoTable fills isolinux.bin's boot info table (mkisofs
// -boot-info-table): PVD LBA, file LBA, length, and a checksum of the file
// from byte 64 on.
func bootInfoTable(b []byte, f *isoFile) {
	binary.LittleEndian.PutUint32(b[8:], 16)
	binary.LittleEndian.PutUint32(b[12:], f.lba)
	binary.LittleEndian.PutUint32(b[16:], uint32(f.size))
	binary.LittleEndian.PutUint32(b[20:], f.checksum)
}

// isohybrid builds the first 512 bytes of the system area: isolinux's MBR
// boot code with the LBA of isolinux.bin (in 512-byte sectors) at 0x1B0, a
// disk signature, and two partitions: 1 (active) over the whole ISO for
// BIOS boot, 2 (type 0xEF) over efiboot.img for UEFI firmware.
func isohybrid(code []byte, isolinuxLBA, efiLBA uint32, efiSize, isoSize int64, guid string) ([]byte, error) {
	if len(code) < 432 {
		return nil, fmt.Errorf("isohybrid MBR code has %d bytes, want 432 or more", len(code))
	}
	mbr := make([]byte, 512)
	copy(mbr, code[:432])
	binary.LittleEndian.PutUint64(mbr[0x1B0:], uint64(isolinuxLBA)*4)
	id, _ := hex.DecodeString(strings.ReplaceAll(guid, "-", "")[:8])
	copy(mbr[0x1B8:], id)
	entry := func(i int, active bool, typ byte, start, sectors uint32) {
		e := mbr[0x1BE+16*i : 0x1BE+16*(i+1)]
		if active {
			e[0] = 0x80
		}
		chs(e[1:4], start)
		e[4] = typ
		chs(e[5:8], start+sectors-1)
		binary.LittleEndian.PutUint32(e[8:], start)
		binary.LittleEndian.PutUint32(e[12:], sectors)
	}
	entry(0, true, 0x17, 0, uint32(isoSize/512))
	entry(1, false, 0xEF, efiLBA*4, uint32(efiSize/512))
	mbr[510], mbr[511] = 0x55, 0xAA
	return mbr, nil
}

// chs encodes an LBA in the 64-head, 32-sector geometry isohybrid uses,
// saturating at the largest value.
func chs(b []byte, lba uint32) {
	const heads, secs = 64, 32
	c := lba / (heads * secs)
	if c > 1023 {
		b[0], b[1], b[2] = 0xFE, 0xFF, 0xFF
		return
	}
	h := (lba / secs) % heads
	s := lba%secs + 1
	b[0] = byte(h)
	b[1] = byte(s) | byte(c>>2)&0xC0
	b[2] = byte(c)
}

// isoBuilder lays out a small ISO 9660 tree: uppercase names, files at
// fixed, sorted positions, one directory level below the root.
type isoBuilder struct {
	files map[string]*isoFile
	dirs  []*isoDir // root first, then sorted
	size  int64
	patch func(name string, b []byte, fileOff int64)
}

type isoFile struct {
	name     string
	f        File
	lba      uint32
	size     int64
	checksum uint32 // boot info table checksum (isolinux.bin only)
	data     []byte // replaces f when set
}

type isoDir struct {
	name     string // "" for the root
	lba      uint32
	children []string // full paths, sorted
}

func (b *isoBuilder) add(name string, f File) {
	if b.files == nil {
		b.files = map[string]*isoFile{}
	}
	b.files[name] = &isoFile{name: name, f: f}
}

func (b *isoBuilder) layout() error {
	dirs := map[string]*isoDir{"": {name: ""}}
	var names []string
	for n := range b.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		dir := strings.TrimPrefix(path.Dir(n), "/")
		if strings.Contains(dir, "/") {
			return fmt.Errorf("ISO path %s is nested too deep", n)
		}
		if dirs[dir] == nil {
			dirs[dir] = &isoDir{name: dir}
			dirs[""].children = append(dirs[""].children, "/"+dir)
		}
		dirs[dir].children = append(dirs[dir].children, n)
	}
	b.dirs = []*isoDir{dirs[""]}
	var dnames []string
	for n := range dirs {
		if n != "" {
			dnames = append(dnames, n)
		}
	}
	sort.Strings(dnames)
	for _, n := range dnames {
		b.dirs = append(b.dirs, dirs[n])
	}
	for _, d := range b.dirs {
		sort.Slice(d.children, func(i, j int) bool { return b.childName(d.children[i]) < b.childName(d.children[j]) })
	}
	// 16 system area, PVD, boot record, terminator, L and M path tables.
	lba := uint32(16 + 3 + 2)
	for _, d := range b.dirs {
		d.lba = lba
		lba++ // every directory here fits one block
	}
	// The boot catalog first, then files in name order.
	order := append([]string{isoBootCat}, names...)
	seen := map[string]bool{}
	for _, n := range order {
		if seen[n] {
			continue
		}
		seen[n] = true
		f := b.files[n]
		if f.data != nil {
			f.size = int64(len(f.data))
		} else if f.f.Data != nil {
			f.size = int64(len(f.f.Data))
		} else {
			fi, err := os.Stat(f.f.Src)
			if err != nil {
				return fmt.Errorf("ISO file %s: %w", n, err)
			}
			f.size = fi.Size()
		}
		if f.size >= 1<<32 {
			return fmt.Errorf("ISO file %s has %d bytes, more than ISO 9660 allows in one extent", n, f.size)
		}
		f.lba = lba
		lba += uint32((f.size + isoBlock - 1) / isoBlock)
		if n == isoIsolinx {
			sum, err := infoTableChecksum(f.f.Src)
			if err != nil {
				return err
			}
			f.checksum = sum
		}
	}
	// Pad to a whole MiB: isohybrid images end on a 64×32 cylinder.
	b.size = (int64(lba)*isoBlock + mib - 1) / mib * mib
	return nil
}

func infoTableChecksum(src string) (uint32, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return 0, fmt.Errorf("isolinux.bin: %w (install Debian's isolinux)", err)
	}
	var sum uint32
	for i := 64; i+4 <= len(data); i += 4 {
		sum += binary.LittleEndian.Uint32(data[i:])
	}
	return sum, nil
}

// isoName is the on-disc identifier of a file: "NAME.EXT;1".
func isoName(p string) string {
	base := path.Base(p)
	if !strings.Contains(base, ".") {
		base += "."
	}
	return base + ";1"
}

// childName is how a directory's child is named on disc.
func (b *isoBuilder) childName(p string) string {
	if _, isFile := b.files[p]; isFile {
		return isoName(p)
	}
	return path.Base(p)
}

func (b *isoBuilder) write(out *os.File, volume string) error {
	if err := out.Truncate(b.size); err != nil {
		return err
	}
	w := func(lba uint32, data []byte) error {
		_, err := out.WriteAt(data, int64(lba)*isoBlock)
		return err
	}
	// Directories.
	dirByPath := map[string]*isoDir{}
	for _, d := range b.dirs {
		dirByPath["/"+d.name] = d
	}
	root := b.dirs[0]
	for _, d := range b.dirs {
		parent := root
		var blk bytes.Buffer
		blk.Write(dirRecord([]byte{0}, d.lba, isoBlock, true))
		blk.Write(dirRecord([]byte{1}, parent.lba, isoBlock, true))
		for _, c := range d.children {
			if sub, ok := dirByPath[c]; ok && d == root {
				blk.Write(dirRecord([]byte(sub.name), sub.lba, isoBlock, true))
				continue
			}
			f := b.files[c]
			blk.Write(dirRecord([]byte(isoName(c)), f.lba, uint32(f.size), false))
		}
		if blk.Len() > isoBlock {
			return fmt.Errorf("ISO directory /%s needs more than one block", d.name)
		}
		if err := w(d.lba, blk.Bytes()); err != nil {
			return err
		}
	}
	// Path tables (L little-endian at 19, M big-endian at 20).
	var lt, mt bytes.Buffer
	for i, d := range b.dirs {
		id := []byte(d.name)
		if i == 0 {
			id = []byte{0}
		}
		for _, t := range []struct {
			buf *bytes.Buffer
			bo  binary.ByteOrder
		}{{&lt, binary.LittleEndian}, {&mt, binary.BigEndian}} {
			e := make([]byte, 8+len(id)+len(id)%2)
			e[0] = byte(len(id))
			t.bo.PutUint32(e[2:], d.lba)
			t.bo.PutUint16(e[6:], 1)
			copy(e[8:], id)
			t.buf.Write(e)
		}
	}
	if err := w(19, lt.Bytes()); err != nil {
		return err
	}
	if err := w(20, mt.Bytes()); err != nil {
		return err
	}
	// Volume descriptors.
	pvd := make([]byte, isoBlock)
	pvd[0] = 1
	copy(pvd[1:], "CD001")
	pvd[6] = 1
	padA(pvd[8:40], "LINUX")
	padA(pvd[40:72], strings.ToUpper(strings.ReplaceAll(volume, "-", "_")))
	both32(pvd[80:], uint32(b.size/isoBlock))
	both16(pvd[120:], 1)
	both16(pvd[124:], 1)
	both16(pvd[128:], isoBlock)
	both32(pvd[132:], uint32(lt.Len()))
	binary.LittleEndian.PutUint32(pvd[140:], 19)
	binary.BigEndian.PutUint32(pvd[148:], 20)
	copy(pvd[156:190], dirRecord([]byte{0}, root.lba, isoBlock, true))
	padA(pvd[190:318], "")
	padA(pvd[318:446], "BALLAST")
	padA(pvd[446:574], "BALLAST IMGBUILD")
	padA(pvd[574:702], "")
	padA(pvd[702:813], "")
	for _, off := range []int{813, 830, 847, 864} {
		copy(pvd[off:], "0000000000000000") // not specified: no build time in the image
	}
	pvd[881] = 1
	if err := w(16, pvd); err != nil {
		return err
	}
	br := make([]byte, isoBlock)
	copy(br[1:], "CD001")
	br[6] = 1
	copy(br[7:], "EL TORITO SPECIFICATION")
	binary.LittleEndian.PutUint32(br[71:], b.files[isoBootCat].lba)
	if err := w(17, br); err != nil {
		return err
	}
	term := make([]byte, isoBlock)
	term[0] = 255
	copy(term[1:], "CD001")
	term[6] = 1
	if err := w(18, term); err != nil {
		return err
	}
	// Files.
	for _, f := range b.files {
		if err := b.writeFile(out, f); err != nil {
			return err
		}
	}
	return nil
}

func (b *isoBuilder) writeFile(out *os.File, f *isoFile) error {
	var r io.Reader
	switch {
	case f.data != nil:
		r = bytes.NewReader(f.data)
	default:
		rc, err := f.f.open()
		if err != nil {
			return err
		}
		defer rc.Close()
		r = rc
	}
	buf := make([]byte, mib)
	off := int64(0)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if b.patch != nil {
				b.patch(f.name, buf[:n], off)
			}
			if _, werr := out.WriteAt(buf[:n], int64(f.lba)*isoBlock+off); werr != nil {
				return werr
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// dirRecord is an ISO 9660 directory record with a fixed date (1980-01-01).
func dirRecord(id []byte, lba, size uint32, dir bool) []byte {
	n := 33 + len(id)
	n += n % 2
	r := make([]byte, n)
	r[0] = byte(n)
	both32(r[2:], lba)
	both32(r[10:], size)
	copy(r[18:25], []byte{80, 1, 1, 0, 0, 0, 0})
	if dir {
		r[25] = 2
	}
	both16(r[28:], 1)
	r[32] = byte(len(id))
	copy(r[33:], id)
	return r
}

func both16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

func both32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func padA(b []byte, s string) {
	for i := range b {
		b[i] = ' '
	}
	copy(b, s)
}
