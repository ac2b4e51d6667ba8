package server

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"sync"
	"time"
)

// hashCache computes each file's sha256 once and keeps it while the file's
// size and mtime stay the same; concurrent first requests for one file wait
// for a single hash instead of each reading the file.
type hashCache struct {
	mu      sync.Mutex
	entries map[string]*hashEntry
}

type hashEntry struct {
	mu    sync.Mutex
	size  int64
	mtime time.Time
	sum   string
}

func newHashCache() *hashCache { return &hashCache{entries: map[string]*hashEntry{}} }

// sum returns f's sha256 (hex); fi is f's Stat and name its cache key.
func (c *hashCache) sum(name string, f *os.File, fi os.FileInfo) (string, error) {
	c.mu.Lock()
	e, ok := c.entries[name]
	if !ok {
		e = &hashEntry{}
		c.entries[name] = e
	}
	c.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sum != "" && e.size == fi.Size() && e.mtime.Equal(fi.ModTime()) {
		return e.sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, fi.Size())); err != nil {
		return "", err
	}
	e.sum, e.size, e.mtime = hex.EncodeToString(h.Sum(nil)), fi.Size(), fi.ModTime()
	return e.sum, nil
}
