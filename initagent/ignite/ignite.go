// Package ignite applies the file part of an Ignition v3 config: storage
// files, directories and links, and passwd users and groups, after
// evaluating ignition.config.merge/replace (with ignition.proxy,
// ignition.security.tls.certificateAuthorities and ignition.timeouts).
//
// All or nothing: every target is checked and every content fetched and
// verified first; then every file and link is staged under a temporary name
// in its own directory and fsynced; only then are they all renamed into
// place. A failure before the renames removes what was staged (and the
// directories made for it) and changes nothing.
//
// On an installed node only /var (STATE) survives a reboot; the rest of the
// root is the initramfs, rebuilt every boot. Boot therefore applies the
// entries under /var once (a marker on STATE records it) and the entries
// elsewhere, users included, on every boot, from a copy kept on STATE (with
// fetched contents resolved) so later boots need no network. Entries under
// /etc/kubernetes are written to STATE, where the runtime links that
// directory. Paths ballast itself manages are refused (see Check).
//
//	res, err := ignite.Boot(ctx, ign, ignite.Options{Root: "/"})
package ignite

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	igntypes "github.com/coreos/ignition/v2/config/v3_5/types"
)

// Where Boot keeps its records (under Options.Root).
const (
	// StateMarker records that the entries on STATE were applied.
	StateMarker = "var/lib/ballast/ignition.applied"
	// rootCopy is the resolved copy of the entries outside STATE.
	rootCopy = "var/lib/ballast/ignition/root.json"
	// bootMarker records that this boot applied them (/run is per boot).
	bootMarker = "run/ballast/ignition.applied"
)

// Options for Apply and Boot. Zero values are documented per field.
type Options struct {
	Root string // filesystem root; empty means "/"
	// HTTPClient fetches http(s) sources. nil means a client built from the
	// config's ignition.proxy, ignition.security.tls.certificateAuthorities
	// (added to the system roots) and ignition.timeouts, as Ignition does;
	// a client given here is used as is.
	HTTPClient *http.Client
	// MaxSize bounds one fetched content; zero means 64 MiB.
	MaxSize int64
}

func (o *Options) defaults() {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.MaxSize == 0 {
		o.MaxSize = 64 << 20
	}
}

// Result says what Boot did.
type Result struct {
	// Mode is "first boot" (everything applied), "from STATE" (the entries
	// outside /var re-applied from the copy on STATE), "config changed"
	// (those entries applied from a config that differs from the one first
	// applied; its entries under /var are not applied again) or "already
	// applied" (this boot already did).
	Mode                             string
	Files, Directories, Links, Users int
}

type op struct {
	Kind     string      `json:"kind"` // file, dir, link
	Path     string      `json:"path"` // where it is written, absolute, under Root
	Field    string      `json:"field"`
	Contents bool        `json:"contents,omitempty"` // Data replaces what is there
	Data     []byte      `json:"data,omitempty"`
	Appends  [][]byte    `json:"appends,omitempty"`
	Mode     os.FileMode `json:"mode"`
	UID      int         `json:"uid"`
	GID      int         `json:"gid"`
	Target   string      `json:"target,omitempty"` // link target as written; for hard links the path under Root
	Hard     bool        `json:"hard,omitempty"`
	Over     bool        `json:"overwrite,omitempty"`
	State    bool        `json:"-"` // on STATE
}

// plan is what one application writes.
type plan struct {
	ops    []op // storage entries, in order: directories, files, links
	passwd igntypes.Passwd
	pw     *passwdPlan
	res    Result
}

func (p *plan) all() []op { return append(append([]op{}, p.ops...), p.pw.ops...) }

// Apply applies all of ign (after merge/replace) under o.Root, all or
// nothing, with no record of it: Boot is what a node runs.
func Apply(ctx context.Context, ign *igntypes.Config, o Options) error {
	o.defaults()
	p, err := newPlan(ctx, ign, o, true)
	if err != nil {
		return err
	}
	return commit(o.Root, p.all())
}

// Boot applies ign for this boot of a node: on the first boot of STATE
// everything; on later boots the entries outside /var (which live on the
// root rebuilt every boot), from the copy kept on STATE when the config is
// the one first applied, else from ign without its entries under /var.
func Boot(ctx context.Context, ign *igntypes.Config, o Options) (Result, error) {
	o.defaults()
	if _, err := os.Stat(filepath.Join(o.Root, bootMarker)); err == nil {
		return Result{Mode: "already applied"}, nil
	}
	sum := configSum(ign)
	_, err := os.Stat(filepath.Join(o.Root, StateMarker))
	first := errors.Is(err, fs.ErrNotExist)
	var p *plan
	switch {
	case first:
		if p, err = newPlan(ctx, ign, o, true); err != nil {
			return Result{}, err
		}
		p.res.Mode = "first boot"
	default:
		var c rootState
		if data, err := os.ReadFile(filepath.Join(o.Root, rootCopy)); err == nil && json.Unmarshal(data, &c) == nil && c.Config == sum {
			if p, err = c.plan(o.Root); err != nil {
				return Result{}, err
			}
			p.res.Mode = "from STATE"
			break
		}
		if p, err = newPlan(ctx, ign, o, false); err != nil {
			return Result{}, err
		}
		p.res.Mode = "config changed"
	}
	ops := p.all()
	if p.res.Mode != "from STATE" {
		c := rootState{Config: sum, Passwd: p.passwd}
		for _, o1 := range p.ops {
			if !o1.State {
				c.Ops = append(c.Ops, o1)
			}
		}
		data, err := json.Marshal(c)
		if err != nil {
			return Result{}, err
		}
		ops = append(ops, op{Kind: "file", Path: "/" + rootCopy, Field: "(ignition record)", Contents: true, Data: data, Mode: 0o600, Over: true})
	}
	if first {
		ops = append(ops, op{Kind: "file", Path: "/" + StateMarker, Field: "(ignition record)", Contents: true,
			Data: []byte(time.Now().UTC().Format(time.RFC3339) + "\n"), Mode: 0o644, Over: true})
	}
	if err := commit(o.Root, ops); err != nil {
		return Result{}, err
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Join(o.Root, bootMarker)), 0o755); err == nil {
		_ = os.WriteFile(filepath.Join(o.Root, bootMarker), nil, 0o644)
	}
	return p.res, nil
}

// rootState is the copy on STATE of what lives outside it.
type rootState struct {
	Config string          `json:"configSHA256"` // of the config as given, before merge/replace
	Ops    []op            `json:"ops"`
	Passwd igntypes.Passwd `json:"passwd"`
}

func (c rootState) plan(root string) (*plan, error) {
	pw, err := planPasswd(root, c.Passwd)
	if err != nil {
		return nil, err
	}
	p := &plan{ops: c.Ops, passwd: c.Passwd, pw: pw}
	if err := checkExisting(root, p.all()); err != nil {
		return nil, err
	}
	p.count()
	return p, nil
}

func (p *plan) count() {
	for _, o := range p.ops {
		switch o.Kind {
		case "file":
			p.res.Files++
		case "dir":
			p.res.Directories++
		case "link":
			p.res.Links++
		}
	}
	p.res.Users = len(p.passwd.Users)
}

func configSum(ign *igntypes.Config) string {
	data, _ := json.Marshal(ign)
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// newPlan checks ign, renders merge/replace, fetches every content and
// checks every target; withState false leaves out the entries on STATE.
func newPlan(ctx context.Context, ign *igntypes.Config, o Options, withState bool) (*plan, error) {
	if ps := Check("ignition", ign); len(ps) > 0 {
		return nil, problems(ps)
	}
	f := newFetcher(o)
	if err := f.configure(ctx, ign); err != nil {
		return nil, err
	}
	cfg, err := f.render(ctx, *ign, "ignition", 0)
	if err != nil {
		return nil, err
	}
	if len(ign.Ignition.Config.Merge) > 0 || ign.Ignition.Config.Replace.Source != nil {
		if ps := Check("ignition(after merge/replace)", &cfg); len(ps) > 0 {
			return nil, problems(ps)
		}
	}
	pw, err := planPasswd(o.Root, cfg.Passwd)
	if err != nil {
		return nil, err
	}
	p := &plan{passwd: cfg.Passwd, pw: pw}
	var errs []error
	add := func(o1 op, n igntypes.Node, path string) bool {
		dest, onState, _ := place(path) // Check refused what place refuses
		if onState && !withState {
			return false
		}
		var err error
		if o1.UID, o1.GID, err = pw.owner(o1.Field, n); err != nil {
			errs = append(errs, err)
			return false
		}
		o1.Path, o1.State, o1.Over = dest, onState, isTrue(n.Overwrite)
		p.ops = append(p.ops, o1)
		return true
	}
	s := cfg.Storage
	for i, d := range s.Directories {
		add(op{Kind: "dir", Field: fmt.Sprintf("ignition.storage.directories[%d]", i), Mode: mode(d.Mode, 0o755)}, d.Node, d.Path)
	}
	for i, fl := range s.Files {
		field := fmt.Sprintf("ignition.storage.files[%d]", i)
		if !add(op{Kind: "file", Field: field, Mode: mode(fl.Mode, 0o644)}, fl.Node, fl.Path) {
			continue
		}
		o1 := &p.ops[len(p.ops)-1]
		if fl.Contents.Source != nil {
			o1.Contents = true
			if o1.Data, err = f.fetch(ctx, field+".contents", fl.Contents); err != nil {
				errs = append(errs, err)
			}
		}
		for j, a := range fl.Append {
			data, err := f.fetch(ctx, fmt.Sprintf("%s.append[%d]", field, j), a)
			if err != nil {
				errs = append(errs, err)
			}
			o1.Appends = append(o1.Appends, data)
		}
	}
	for i, l := range s.Links {
		o1 := op{Kind: "link", Field: fmt.Sprintf("ignition.storage.links[%d]", i), Target: *l.Target, Hard: isTrue(l.Hard)}
		if o1.Hard {
			o1.Target, _, _ = place(*l.Target)
		}
		add(o1, l.Node, l.Path)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := checkExisting(o.Root, p.all()); err != nil {
		return nil, err
	}
	p.count()
	return p, nil
}

// checkExisting refuses, before anything is written, entries whose path
// exists without overwrite, and files or links where a directory is.
func checkExisting(root string, ops []op) error {
	var errs []error
	for _, o1 := range ops {
		if o1.Kind == "dir" {
			continue
		}
		fi, err := os.Lstat(filepath.Join(root, o1.Path))
		if err != nil {
			continue
		}
		switch {
		case fi.IsDir():
			errs = append(errs, fmt.Errorf("%s: %s is a directory on the node: choose another path", o1.Field, o1.Path))
		case !o1.Over && (o1.Kind == "link" || o1.Contents):
			errs = append(errs, fmt.Errorf("%s: %s already exists: set overwrite: true to replace it", o1.Field, o1.Path))
		}
	}
	return errors.Join(errs...)
}

func mode(m *int, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	u := *m
	fm := fs.FileMode(u) & fs.ModePerm
	for bit, flag := range map[int]fs.FileMode{0o4000: fs.ModeSetuid, 0o2000: fs.ModeSetgid, 0o1000: fs.ModeSticky} {
		if u&bit != 0 {
			fm |= flag
		}
	}
	return fm
}

func isTrue(b *bool) bool { return b != nil && *b }
