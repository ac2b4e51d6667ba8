// Package source finds and fetches the node's machine config document. It
// returns raw bytes; parsing and validation belong to package config.
//
// Sources, in order (see Fetch for the exact rules):
//
//  1. kernel cmdline ballast.config=URL (http, https, tftp), optionally
//     pinned by ballast.config.sha256=HEX;
//  2. a config drive: a block device labelled config-2 (OpenStack) or
//     cidata (NoCloud); vfat and iso9660 are read in-process (no kernel
//     modules, no mount), ext4 is mounted read-only under RunDir;
//  3. the file imgbuild --config embedded in the initramfs (EmbeddedPath).
//
// Usage:
//
//	res, err := source.Fetch(ctx, source.Options{Cmdline: cmdline.Ballast(), Log: log})
//	switch {
//	case errors.Is(err, source.ErrNoConfig):
//		// keep the DHCP-on-all-links default
//	case err != nil:
//		return err // a source exists but is broken: do not guess
//	}
//	cfg, warnings, err := config.Parse(res.Data)
package source

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

const (
	// EmbeddedPath is where imgbuild --config puts the config in the initramfs.
	EmbeddedPath = "/etc/ballast/machine-config.yaml"
	// DefaultCAFile is Debian's CA bundle, which imgbuild copies into the initramfs.
	DefaultCAFile = "/etc/ssl/certs/ca-certificates.crt"
	// DefaultTimeout bounds the cmdline source: links come up with DHCP while it retries.
	DefaultTimeout = 2 * time.Minute
	// MaxSize caps a config document from any source. Real ones are a few KiB;
	// the cap keeps a wrong URL (an ISO, a disk image) from filling memory.
	MaxSize = 4 << 20

	// Kernel cmdline keys.
	KeyURL     = "ballast.config"
	KeySHA256  = "ballast.config.sha256"
	KeyTimeout = "ballast.config.timeout"
)

var (
	// ErrNoConfig means no source has a config; the caller keeps its defaults.
	ErrNoConfig = errors.New("no machine config found (no ballast.config= on the kernel cmdline, no config drive labelled config-2 or cidata, nothing at " + EmbeddedPath + ")")
	// ErrChecksum means the fetched bytes do not match ballast.config.sha256.
	ErrChecksum = errors.New("sha256 mismatch")
	// ErrTooLarge means a config document is larger than MaxSize.
	ErrTooLarge = fmt.Errorf("larger than the %d MiB limit for a machine config", MaxSize>>20)
)

// Options says where to look. The zero value, with Cmdline filled in, is what
// a node uses.
type Options struct {
	// Cmdline holds the kernel cmdline's ballast.* keys (boot.Cmdline.Ballast).
	Cmdline map[string]string
	// Root prefixes every file path (sysfs, /dev, EmbeddedPath, the CA
	// bundle, RunDir); empty means "/".
	Root string
	// RunDir is where a config drive that must be mounted (ext4) is mounted,
	// in a fresh temporary directory; empty means Root/run/ballast.
	RunDir string
	// Timeout bounds the cmdline source, all retries included; zero means
	// DefaultTimeout. ballast.config.timeout= on the cmdline overrides it.
	Timeout time.Duration
	// CAFile is the PEM bundle that https URLs are verified against; empty
	// means Root/DefaultCAFile. Ignored if RootCAs or HTTPClient is set.
	CAFile string
	// RootCAs, if set, is used instead of CAFile.
	RootCAs *x509.CertPool
	// HTTPClient, if set, is used as is for http and https URLs.
	HTTPClient *http.Client
	// Devices, if non-nil, are the only block devices probed for a config
	// drive (paths such as /dev/vdb) instead of every device in
	// Root/sys/class/block. Tests use it to keep away from the host's disks.
	Devices []string
	// NetworkChanged, if set, receives when the node's addresses or routes
	// change (the agent feeds it from netlink). A cmdline fetch that failed
	// then retries at once instead of sleeping out its backoff, so the config
	// comes when DHCP binds rather than up to a backoff later.
	NetworkChanged <-chan struct{}
	// NeedFilesystem, if set, is called before a config drive is mounted
	// (ext4; FAT and ISO 9660 are read without the kernel): the agent
	// waits there for the filesystem's kernel module, still loading.
	NeedFilesystem func(ctx context.Context, fstype string) error
	// Log gets one line per source tried and per failed attempt; nil discards.
	Log *slog.Logger

	// firstBackoff and maxBackoff override the retry delays in tests.
	firstBackoff, maxBackoff time.Duration
}

// Result is a machine config document and where it came from.
type Result struct {
	Data []byte
	// Source names the origin for logs and status: "cmdline:URL",
	// "config-drive:/dev/vdb (cidata, vfat):user-data",
	// "embedded:/etc/ballast/machine-config.yaml".
	Source string
	// SHA256 is the hex sha256 of Data.
	SHA256 string
}

// Fetch returns the machine config from the first source that has one.
//
// The rules, chosen so that a node never boots with a config nobody meant:
//   - A source that is absent (no ballast.config key, no drive with a
//     matching label, a drive or initramfs without the file, or an empty
//     file) passes to the next source. If all are absent the error is
//     ErrNoConfig.
//   - A source that is present but fails stops the search with an error that
//     names it; later sources are NOT tried. For the cmdline this includes a
//     URL still unreachable when the timeout expires, a sha256 mismatch
//     (ErrChecksum) and a document over MaxSize (ErrTooLarge). For a config
//     drive it includes a corrupt filesystem or an unreadable file. (A device
//     that cannot even be opened or probed during the scan, such as an empty
//     CD drive, is skipped.)
//   - The cmdline URL is retried with exponential backoff and jitter until
//     the timeout while the network comes up. Errors that retrying cannot
//     fix end it early: a malformed URL or hash, HTTP 4xx other than 408 and
//     429, TFTP "file not found" or "access violation", an untrusted TLS
//     certificate, a checksum mismatch, a document that is too large. An
//     empty document from the URL is retried, as the server may be writing it.
func Fetch(ctx context.Context, o Options) (*Result, error) {
	o.setDefaults()
	res, err := fetchCmdline(ctx, o)
	if err == nil {
		return o.found(res), nil
	}
	if !errors.Is(err, errAbsent) {
		return nil, err
	}
	res, err = fetchConfigDrive(ctx, o)
	if err == nil {
		return o.found(res), nil
	}
	if !errors.Is(err, errAbsent) {
		return nil, err
	}
	res, err = fetchEmbedded(o)
	if err == nil {
		return o.found(res), nil
	}
	if !errors.Is(err, errAbsent) {
		return nil, err
	}
	o.Log.Info("no machine config found, keeping defaults")
	return nil, ErrNoConfig
}

// errAbsent means a source has nothing to offer; Fetch moves to the next.
var errAbsent = errors.New("source absent")

func (o *Options) setDefaults() {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.RunDir == "" {
		o.RunDir = filepath.Join(o.Root, "run/ballast")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.CAFile == "" {
		o.CAFile = filepath.Join(o.Root, DefaultCAFile)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

func (o *Options) found(r *Result) *Result {
	sum := sha256.Sum256(r.Data)
	r.SHA256 = hex.EncodeToString(sum[:])
	o.Log.Info("machine config found", "source", r.Source, "sha256", r.SHA256, "bytes", len(r.Data))
	return r
}

func fetchEmbedded(o Options) (*Result, error) {
	path := filepath.Join(o.Root, EmbeddedPath)
	data, err := readFileMax(path)
	if errors.Is(err, fs.ErrNotExist) {
		o.Log.Debug("no embedded machine config", "path", path)
		return nil, errAbsent
	}
	if err != nil {
		return nil, fmt.Errorf("embedded machine config: %w; rebuild the image (imgbuild --config)", err)
	}
	if len(data) == 0 {
		o.Log.Warn("embedded machine config is empty, ignoring it", "path", path)
		return nil, errAbsent
	}
	return &Result{Data: data, Source: "embedded:" + EmbeddedPath}, nil
}

// readFileMax reads a whole file of at most MaxSize bytes.
func readFileMax(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := readAllMax(f, MaxSize)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// readAllMax reads r to the end, failing with ErrTooLarge past max bytes.
func readAllMax(r io.Reader, max int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, ErrTooLarge
	}
	return data, nil
}
