package txn

import (
	"os"
	"os/exec"
)

// crashCmd starts the crash child in a network namespace of its own.
func crashCmd(step, disk string, bad bool) *exec.Cmd {
	cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=crash", stepEnv+"="+step, diskEnv+"="+disk, "BALLAST_NSTEST_ISOLATED=1")
	if bad {
		cmd.Env = append(cmd.Env, badEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	return cmd
}
