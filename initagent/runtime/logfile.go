package runtime

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// RotatingFile is an append-only log file that is rotated when it reaches
// MaxBytes: path → path.1 → … → path.Keep, the oldest dropped.
type RotatingFile struct {
	Path     string
	MaxBytes int64 // 0 means 10 MiB
	Keep     int   // rotated files kept; 0 means 3

	mu   sync.Mutex
	f    *os.File
	size int64
}

func (r *RotatingFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	max, keep := r.MaxBytes, r.Keep
	if max == 0 {
		max = 10 << 20
	}
	if keep == 0 {
		keep = 3
	}
	if r.f != nil && r.size+int64(len(p)) > max {
		r.f.Close()
		r.f = nil
		for i := keep - 1; i >= 1; i-- {
			_ = os.Rename(fmt.Sprintf("%s.%d", r.Path, i), fmt.Sprintf("%s.%d", r.Path, i+1))
		}
		_ = os.Rename(r.Path, r.Path+".1")
	}
	if r.f == nil {
		if err := os.MkdirAll(filepath.Dir(r.Path), 0o755); err != nil {
			return 0, err
		}
		f, err := os.OpenFile(r.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return 0, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return 0, err
		}
		r.f, r.size = f, fi.Size()
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	return n, err
}

// Close closes the current file; a later Write reopens it.
func (r *RotatingFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}
