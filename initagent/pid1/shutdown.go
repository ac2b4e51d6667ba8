package pid1

import (
	"log/slog"
	"time"

	"golang.org/x/sys/unix"
)

// KillAll asks every process but init to exit (SIGTERM), waits up to grace
// for them to go, then kills the rest. As PID 1 every orphan is our child,
// so "no children left" means "no processes left".
func KillAll(log *slog.Logger, grace time.Duration) {
	if err := unix.Kill(-1, unix.SIGTERM); err != nil && err != unix.ESRCH {
		log.Warn("SIGTERM all processes", "err", err)
	}
	if waitNoChildren(log, grace) {
		return
	}
	log.Warn("processes still running after grace period, killing", "grace", grace)
	_ = unix.Kill(-1, unix.SIGKILL)
	waitNoChildren(log, 2*time.Second)
}

func waitNoChildren(log *slog.Logger, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !reapAll(log, nil) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PowerDown syncs filesystems and asks the kernel to carry out action. It
// returns only if the kernel refuses (e.g. not running as PID 1).
func PowerDown(action Action) error {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	switch action {
	case Reboot:
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	case Halt:
		cmd = unix.LINUX_REBOOT_CMD_HALT
	}
	return unix.Reboot(cmd)
}
