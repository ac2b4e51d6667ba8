// Package ignite applies the first-boot part of an Ignition v3 config:
// storage files, directories and links, and passwd users and groups. Every
// target is checked and every content fetched and verified before anything
// is written, so a bad config changes nothing. Paths on the read-only system
// image are refused.
//
//	err := ignite.Apply(ctx, ign, ignite.Options{Root: "/"})
package ignite

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
)

// Writable are the directories first-boot files may go to; everything else
// belongs to the read-only system image.
var writable = []string{"/etc", "/var", "/root", "/home", "/opt", "/srv"}

// Options for Apply. Zero values are documented per field.
type Options struct {
	Root string // filesystem root; empty means "/"
	// HTTPClient fetches http(s) sources; nil means http.DefaultClient.
	HTTPClient *http.Client
	// MaxSize bounds one fetched content; zero means 64 MiB.
	MaxSize int64
}

type op struct {
	kind    string // file, dir, link
	path    string // absolute, inside the image
	field   string // config path for errors
	data    []byte
	mode    os.FileMode
	uid     int
	gid     int
	target  string
	hard    bool
	over    bool
	appends [][]byte
}

// Apply applies ign's storage and passwd sections under o.Root.
func Apply(ctx context.Context, ign *igntypes.Config, o Options) error {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.MaxSize == 0 {
		o.MaxSize = 64 << 20
	}
	if err := unsupported(ign); err != nil {
		return err
	}
	var ops []op
	var errs []error
	for i, d := range ign.Storage.Directories {
		field := fmt.Sprintf("ignition.storage.directories[%d]", i)
		p, err := target(field, d.Path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		uid, gid := owner(d.Node)
		ops = append(ops, op{kind: "dir", path: p, field: field, mode: mode(d.Mode, 0o755), uid: uid, gid: gid, over: isTrue(d.Overwrite)})
	}
	for i, f := range ign.Storage.Files {
		field := fmt.Sprintf("ignition.storage.files[%d]", i)
		p, err := target(field, f.Path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o1 := op{kind: "file", path: p, field: field, mode: mode(f.Mode, 0o644), over: isTrue(f.Overwrite)}
		o1.uid, o1.gid = owner(f.Node)
		if f.Contents.Source != nil {
			if o1.data, err = fetch(ctx, o, field+".contents", f.Contents); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		for j, a := range f.Append {
			data, err := fetch(ctx, o, fmt.Sprintf("%s.append[%d]", field, j), a)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			o1.appends = append(o1.appends, data)
		}
		ops = append(ops, o1)
	}
	for i, l := range ign.Storage.Links {
		field := fmt.Sprintf("ignition.storage.links[%d]", i)
		p, err := target(field, l.Path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if l.Target == nil || *l.Target == "" {
			errs = append(errs, fmt.Errorf("%s.target: missing: say what the link points to", field))
			continue
		}
		o1 := op{kind: "link", path: p, field: field, target: *l.Target, hard: isTrue(l.Hard), over: isTrue(l.Overwrite)}
		if o1.hard {
			if _, err := target(field+".target", *l.Target); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		ops = append(ops, o1)
	}
	// Refuse files that exist without overwrite before writing anything.
	for _, o1 := range ops {
		if o1.kind == "dir" || o1.over || len(o1.appends) > 0 && o1.data == nil {
			continue
		}
		if _, err := os.Lstat(filepath.Join(o.Root, o1.path)); err == nil {
			errs = append(errs, fmt.Errorf("%s: %s already exists: set overwrite: true to replace it", o1.field, o1.path))
		}
	}
	passwd, err := planPasswd(o.Root, ign.Passwd)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, o1 := range ops {
		if err := write(o.Root, o1); err != nil {
			return fmt.Errorf("%s: %w", o1.field, err)
		}
	}
	return passwd.write()
}

func unsupported(ign *igntypes.Config) error {
	var errs []error
	s := ign.Storage
	if len(s.Disks) > 0 || len(s.Filesystems) > 0 || len(s.Raid) > 0 || len(s.Luks) > 0 {
		errs = append(errs, errors.New("ignition.storage: disks, filesystems, raid and luks are not applied by ballast: the disk layout is imgbuild's (see DESIGN §4); remove them"))
	}
	if len(ign.Systemd.Units) > 0 {
		errs = append(errs, errors.New("ignition.systemd.units: ballast runs no systemd; the agent's services are configured in the services section"))
	}
	k := ign.KernelArguments
	if len(k.ShouldExist) > 0 || len(k.ShouldNotExist) > 0 {
		errs = append(errs, errors.New("ignition.kernelArguments: set kernel arguments in the recipe (imgbuild) instead"))
	}
	return errors.Join(errs...)
}

// target cleans an absolute path and checks it is on a writable part of the node.
func target(field, p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%s.path: %q must be absolute", field, p)
	}
	clean := path.Clean(p)
	for _, w := range writable {
		if clean == w || strings.HasPrefix(clean, w+"/") {
			return clean, nil
		}
	}
	return "", fmt.Errorf("%s.path: %s is on the read-only system image: write under %s", field, clean, strings.Join(writable, ", "))
}

func owner(n igntypes.Node) (uid, gid int) {
	uid, gid = 0, 0
	if n.User.ID != nil {
		uid = *n.User.ID
	}
	if n.Group.ID != nil {
		gid = *n.Group.ID
	}
	return uid, gid
}

func mode(m *int, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	return os.FileMode(*m) & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
}

func isTrue(b *bool) bool { return b != nil && *b }

// fetch reads a resource (data:, http:, https:), decompresses it and checks
// its verification hash.
func fetch(ctx context.Context, o Options, field string, r igntypes.Resource) ([]byte, error) {
	src := *r.Source
	u, err := url.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("%s.source: %w", field, err)
	}
	var data []byte
	switch u.Scheme {
	case "data":
		if data, err = dataURL(src); err != nil {
			return nil, fmt.Errorf("%s.source: %w", field, err)
		}
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return nil, fmt.Errorf("%s.source: %w", field, err)
		}
		for _, h := range r.HTTPHeaders {
			if h.Value != nil {
				req.Header.Set(h.Name, *h.Value)
			}
		}
		resp, err := o.HTTPClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%s.source: %w", field, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s.source: GET %s: %s", field, src, resp.Status)
		}
		if data, err = io.ReadAll(io.LimitReader(resp.Body, o.MaxSize+1)); err != nil {
			return nil, fmt.Errorf("%s.source: %w", field, err)
		}
	default:
		return nil, fmt.Errorf("%s.source: scheme %q is not supported: use data:, http: or https:", field, u.Scheme)
	}
	if int64(len(data)) > o.MaxSize {
		return nil, fmt.Errorf("%s.source: larger than %d bytes", field, o.MaxSize)
	}
	if r.Verification.Hash != nil {
		if err := verify(*r.Verification.Hash, data); err != nil {
			return nil, fmt.Errorf("%s.verification.hash: %w", field, err)
		}
	}
	if r.Compression != nil && *r.Compression == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%s.compression: %w", field, err)
		}
		if data, err = io.ReadAll(io.LimitReader(zr, o.MaxSize+1)); err != nil {
			return nil, fmt.Errorf("%s.compression: %w", field, err)
		}
	}
	return data, nil
}

// verify checks "sha512-<hex>" or "sha256-<hex>" (Ignition's format), which
// covers the content as fetched, before decompression.
func verify(spec string, data []byte) error {
	algo, want, ok := strings.Cut(spec, "-")
	var h hash.Hash
	switch {
	case !ok:
		return fmt.Errorf("%q: write sha512-<hex> or sha256-<hex>", spec)
	case algo == "sha512":
		h = sha512.New()
	case algo == "sha256":
		h = sha256.New()
	default:
		return fmt.Errorf("%q: hash %s is not supported: use sha512 or sha256", spec, algo)
	}
	h.Write(data)
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(want) {
		return fmt.Errorf("content has %s %s, the config expects %s", algo, got, want)
	}
	return nil
}

// dataURL decodes an RFC 2397 data URL.
func dataURL(s string) ([]byte, error) {
	meta, payload, ok := strings.Cut(strings.TrimPrefix(s, "data:"), ",")
	if !ok {
		return nil, errors.New("data URL without ','")
	}
	if strings.HasSuffix(meta, ";base64") {
		payload, err := url.PathUnescape(payload)
		if err != nil {
			return nil, err
		}
		return base64.StdEncoding.DecodeString(payload)
	}
	v, err := url.PathUnescape(payload)
	return []byte(v), err
}

func write(root string, o op) error {
	p := filepath.Join(root, o.path)
	switch o.kind {
	case "dir":
		if err := os.MkdirAll(p, o.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, o.mode); err != nil {
			return err
		}
		return os.Lchown(p, o.uid, o.gid)
	case "file":
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		data := o.data
		if o.data == nil && len(o.appends) > 0 {
			old, err := os.ReadFile(p)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			data = old
		}
		for _, a := range o.appends {
			data = append(append([]byte{}, data...), a...)
		}
		tmp := p + ".ignite-tmp"
		if err := os.WriteFile(tmp, data, o.mode); err != nil {
			return err
		}
		if err := os.Chmod(tmp, o.mode); err != nil {
			return err
		}
		if err := os.Lchown(tmp, o.uid, o.gid); err != nil {
			return err
		}
		return os.Rename(tmp, p)
	case "link":
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if o.over {
			_ = os.Remove(p)
		}
		if o.hard {
			return os.Link(filepath.Join(root, o.target), p)
		}
		return os.Symlink(o.target, p)
	}
	return fmt.Errorf("BUG: unknown op %q", o.kind)
}
