// Command testinit is the /init of the test images qemu-tests boots to run
// Go test binaries on the image's kernel: it mounts the early filesystems,
// loads the image's modules, runs testinit.run with testinit.args
// (comma-separated), prints "testinit: exit N" and powers off.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/pid1"
)

// ExitPrefix starts the line that reports the test binary's exit code.
const ExitPrefix = "testinit: exit "

func main() {
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	code := run(log)
	fmt.Printf("%s%d\n", ExitPrefix, code)
	_ = pid1.PowerDown(pid1.Poweroff)
	select {}
}

func run(log *slog.Logger) int {
	if err := boot.MountEssential("/", log); err != nil {
		log.Error("mount", "err", err)
		return 125
	}
	info, err := boot.ReadImageInfo(boot.ImageInfoPath)
	if err != nil {
		log.Error("image info", "err", err)
		return 125
	}
	res := boot.LoadModules(filepath.Join("/lib/modules", info.KernelRelease), info.Modules, log)
	if len(res.Failed) > 0 {
		log.Error("modules failed", "failed", len(res.Failed))
		return 125
	}
	cmdline, err := boot.ReadCmdline()
	if err != nil {
		log.Error("cmdline", "err", err)
		return 125
	}
	bin, _ := cmdline.Get("testinit.run")
	var args []string
	if a, ok := cmdline.Get("testinit.args"); ok && a != "" {
		args = strings.Split(a, ",")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	cmd.Dir = "/tmp"
	cmd.Env = []string{"PATH=/bin", "HOME=/tmp", "TMPDIR=/tmp"}
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.ExitCode()
	default:
		log.Error("run test binary", "bin", bin, "err", err)
		return 126
	}
}
