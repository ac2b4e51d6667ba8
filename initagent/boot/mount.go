package boot

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	essential              bool // boot cannot go on without it
}

// mounts lists the early filesystems, in mount order. /dev is devtmpfs
// because nothing else creates device nodes here (no udev).
func mounts() []mount {
	const nosuid, nodev, noexec = unix.MS_NOSUID, unix.MS_NODEV, unix.MS_NOEXEC
	return []mount{
		{"proc", "/proc", "proc", nosuid | nodev | noexec, "", true},
		{"sysfs", "/sys", "sysfs", nosuid | nodev | noexec, "", true},
		{"devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755", true},
		{"devpts", "/dev/pts", "devpts", nosuid | noexec, "gid=5,mode=0620,ptmxmode=0666", false},
		{"tmpfs", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777", false},
		{"tmpfs", "/run", "tmpfs", nosuid | nodev, "mode=0755", false},
		{"tmpfs", "/tmp", "tmpfs", nosuid | nodev, "mode=1777", false},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid | nodev | noexec, "nsdelegate", false},
	}
}

// MountEssential mounts the early filesystems under root ("/" on a node).
// Targets already mounted are left alone. It returns an error only when an
// essential mount fails; optional ones are logged.
func MountEssential(root string, log *slog.Logger) error {
	mounted, err := mountedTargets()
	if err != nil && root == "/" {
		log.Debug("no mount table yet", "err", err)
	}
	for _, m := range mounts() {
		target := filepath.Join(root, m.target)
		if mounted[target] {
			continue
		}
		err := os.MkdirAll(target, 0o755)
		if err == nil {
			err = unix.Mount(m.source, target, m.fstype, m.flags, m.data)
		}
		if err != nil {
			err = fmt.Errorf("mount %s on %s: %w", m.fstype, target, err)
			if m.essential {
				return err
			}
			log.Warn("optional mount failed, continuing", "err", err)
			continue
		}
		if target == filepath.Join(root, "/proc") {
			// Now there is a mount table to consult for the remaining targets.
			if mt, err := mountedTargets(); err == nil {
				mounted = mt
			}
		}
	}
	return nil
}

// Unmount unmounts what MountEssential mounted under root, deepest first.
func Unmount(root string) error {
	ms := mounts()
	var errs []error
	for i := len(ms) - 1; i >= 0; i-- {
		target := filepath.Join(root, ms[i].target)
		if err := unix.Unmount(target, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", target, err))
		}
	}
	return errors.Join(errs...)
}

func mountedTargets() (map[string]bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Field 5 is the mount point (proc(5)), with octal escapes for spaces.
		if fields := strings.Fields(sc.Text()); len(fields) > 4 {
			m[fields[4]] = true
		}
	}
	return m, sc.Err()
}
