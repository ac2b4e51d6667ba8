package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"
)

// leaseFile is where the lease of one interface and family is persisted:
// <dir>/<interface>.dhcp4.json or <dir>/<interface>.dhcp6.json.
func leaseFile(dir, iface string, family int) string {
	return filepath.Join(dir, fmt.Sprintf("%s.dhcp%d.json", iface, family))
}

// store persists one lease as JSON. The zero dir disables persistence.
type store struct {
	dir    string
	iface  string
	family int
	log    *slog.Logger
}

func (s store) enabled() bool { return s.dir != "" }

func (s store) path() string { return leaseFile(s.dir, s.iface, s.family) }

// save writes the lease atomically (write to a temporary file, fsync,
// rename), so a power cut leaves either the old or the new lease.
func (s store) save(l Lease) error {
	if !s.enabled() {
		return nil
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lease: %w", err)
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create lease directory: %w", err)
	}
	if err := renameio.WriteFile(s.path(), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("persist lease: %w", err)
	}
	return nil
}

// remove forgets the persisted lease; a missing file is not an error.
func (s store) remove() error {
	if !s.enabled() {
		return nil
	}
	if err := os.Remove(s.path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove persisted lease: %w", err)
	}
	return nil
}

// load returns the persisted lease if there is one that is usable at now.
// A corrupt, foreign or expired file is logged and ignored, never fatal: the
// client then simply starts from scratch.
func (s store) load(now time.Time) (Lease, bool) {
	if !s.enabled() {
		return Lease{}, false
	}
	b, err := os.ReadFile(s.path())
	if errors.Is(err, fs.ErrNotExist) {
		return Lease{}, false
	}
	if err != nil {
		s.log.Warn("ignoring unreadable persisted lease", "path", s.path(), "err", err)
		return Lease{}, false
	}
	l, err := decodeLease(b, s.iface, s.family, now)
	if err != nil {
		s.log.Warn("ignoring persisted lease", "path", s.path(), "err", err)
		return Lease{}, false
	}
	return l, true
}

// errLeaseExpired is returned by decodeLease for a lease whose end has passed.
var errLeaseExpired = errors.New("lease expired")

func decodeLease(b []byte, iface string, family int, now time.Time) (Lease, error) {
	// Unknown fields are allowed: a file written by a newer agent must not
	// stop an older one (after an A/B rollback) from reusing the lease.
	var l Lease
	if err := json.Unmarshal(b, &l); err != nil {
		return Lease{}, fmt.Errorf("corrupt lease file: %w", err)
	}
	switch {
	case l.Interface != iface:
		return Lease{}, fmt.Errorf("lease is for interface %q, not %q", l.Interface, iface)
	case l.Family != family:
		return Lease{}, fmt.Errorf("lease is for family %d, not %d", l.Family, family)
	case !l.Address.IsValid():
		return Lease{}, errors.New("lease has no address")
	case family == 4 && !l.Address.Addr().Is4(), family == 6 && !l.Address.Addr().Is6():
		return Lease{}, fmt.Errorf("lease address %s is not IPv%d", l.Address, family)
	case !now.Before(l.ExpiresAt):
		return Lease{}, fmt.Errorf("%w at %s", errLeaseExpired, l.ExpiresAt.Format(time.RFC3339))
	}
	return l, nil
}
