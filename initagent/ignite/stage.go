package ignite

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// stager writes every file and link under a temporary name in its final
// directory (fsynced), and only then renames them all into place.
type stager struct {
	root   string
	staged []staged          // in op order
	made   []string          // directories created while staging, parents first
	dirs   []op              // declared directories, chmod/chown after the renames
	byPath map[string]string // final path → staged temporary name, for hard links
}

type staged struct {
	tmp, final, field string
}

// commit writes ops under root, all or nothing: a failure while staging
// removes what was staged and the directories made for it. Renames do not
// fail on a sane filesystem once staging succeeded; if one does, the error
// says how many entries were already in place.
func commit(root string, ops []op) error {
	s := &stager{root: root, byPath: map[string]string{}}
	for _, o := range ops {
		if err := s.stage(o); err != nil {
			s.abort()
			return fmt.Errorf("%s: %w (nothing was applied)", o.Field, err)
		}
	}
	return s.finish()
}

func (s *stager) abs(p string) string { return filepath.Join(s.root, p) }

// mkdirs makes dir and its missing parents, remembering them for abort.
func (s *stager) mkdirs(dir string) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", d)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil {
			return err
		}
		s.made = append(s.made, missing[i])
	}
	return nil
}

func tmpName(final string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return filepath.Join(filepath.Dir(final), ".ignite-"+hex.EncodeToString(b)+"-"+filepath.Base(final))
}

func (s *stager) stage(o op) error {
	p := s.abs(o.Path)
	if o.Kind == "dir" {
		if err := s.mkdirs(p); err != nil {
			return err
		}
		s.dirs = append(s.dirs, o)
		return nil
	}
	if err := s.mkdirs(filepath.Dir(p)); err != nil {
		return err
	}
	tmp := tmpName(p)
	switch o.Kind {
	case "file":
		data := o.Data
		if !o.Contents {
			old, err := os.ReadFile(p)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			data = old
		}
		for _, a := range o.Appends {
			data = append(append([]byte{}, data...), a...)
		}
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		s.staged = append(s.staged, staged{tmp, p, o.Field})
		_, err = f.Write(data)
		if err == nil {
			err = f.Chown(o.UID, o.GID) // before chmod: chown clears setuid
		}
		if err == nil {
			err = f.Chmod(o.Mode)
		}
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case "link":
		if o.Hard {
			src := s.abs(o.Target)
			if t, ok := s.byPath[src]; ok {
				src = t // a file of this config, still under its staged name
			}
			if err := os.Link(src, tmp); err != nil {
				return err
			}
		} else if err := os.Symlink(o.Target, tmp); err != nil {
			return err
		}
		s.staged = append(s.staged, staged{tmp, p, o.Field})
		if !o.Hard { // a hard link is its target's inode: its owner stays
			if err := os.Lchown(tmp, o.UID, o.GID); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("BUG: unknown entry kind %q", o.Kind)
	}
	s.byPath[p] = tmp
	return nil
}

func (s *stager) abort() {
	for _, st := range s.staged {
		_ = os.Remove(st.tmp)
	}
	for i := len(s.made) - 1; i >= 0; i-- {
		_ = os.Remove(s.made[i])
	}
}

func (s *stager) finish() error {
	syncDirs := map[string]bool{}
	for i, st := range s.staged {
		if err := os.Rename(st.tmp, st.final); err != nil {
			for _, rest := range s.staged[i:] {
				_ = os.Remove(rest.tmp)
			}
			return fmt.Errorf("%s: %w (%d of %d files and links were already in place)", st.field, err, i, len(s.staged))
		}
		syncDirs[filepath.Dir(st.final)] = true
	}
	var errs []error
	for _, o := range s.dirs {
		p := s.abs(o.Path)
		if err := os.Lchown(p, o.UID, o.GID); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.Field, err))
		}
		if err := os.Chmod(p, o.Mode); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.Field, err))
		}
	}
	for _, d := range s.made {
		syncDirs[filepath.Dir(d)] = true
	}
	for d := range syncDirs {
		if f, err := os.Open(d); err == nil {
			if err := f.Sync(); err != nil {
				errs = append(errs, fmt.Errorf("sync %s: %w", d, err))
			}
			f.Close()
		}
	}
	return errors.Join(errs...)
}
