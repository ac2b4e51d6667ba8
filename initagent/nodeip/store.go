package nodeip

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// Store keeps the last decision in a small JSON file, so that the node
// keeps its address across reboots.
type Store struct {
	// Path of the file, e.g. on STATE or in the config slot.
	Path string
}

type record struct {
	Version int `json:"version"`
	Previous
}

// Load returns the stored decision, or nil when there is none yet.
func (s Store) Load() (*Previous, error) {
	b, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read node IP decision: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("node IP decision %s: %w (delete it to decide afresh)", s.Path, err)
	}
	if r.Version != 1 {
		return nil, fmt.Errorf("node IP decision %s: version %d, this agent reads 1 (delete it to decide afresh)", s.Path, r.Version)
	}
	return &r.Previous, nil
}

// Save writes d's addresses atomically (renameio: a temporary file, fsync,
// rename).
func (s Store) Save(d Decision) error {
	b, err := json.MarshalIndent(record{Version: 1, Previous: d.Previous()}, "", "  ")
	if err != nil {
		return fmt.Errorf("BUG: encode node IP decision: %w", err)
	}
	// A fresh /var (tmpfs, or a new STATE) has no /var/lib/ballast yet.
	if err := os.MkdirAll(filepath.Dir(s.Path), 0o755); err != nil {
		return err
	}
	if err := renameio.WriteFile(s.Path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write node IP decision: %w", err)
	}
	return nil
}
