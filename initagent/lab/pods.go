package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// PodPID finds the pause process whose network namespace holds addr (a
// pod IP): container nodes share this machine's kernel, so their pods'
// processes are visible here; nsenter -t PID -n runs in the pod's network.
func PodPID(addr string) (int, error) {
	procs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, p := range procs {
		comm, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(comm)) != "pause" {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "ip", "-o", "addr", "show").Output()
		if err == nil && strings.Contains(string(out), " "+addr+"/") {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no pause process has %s", addr)
}

// ImportImages imports an OCI archive into every container node's
// containerd (namespace k8s.io) with ctr, as the node imports its own
// preloaded images: images the system image does not carry (test servers).
func (s *State) ImportImages(ctx context.Context, ctr, archive string) error {
	for _, n := range s.Nodes {
		_, pid := s.NodeProcess(n)
		if pid == 0 {
			return fmt.Errorf("import into %s: the node is not running", n.Name)
		}
		sock := fmt.Sprintf("/proc/%d/root/run/containerd/containerd.sock", pid)
		out, err := exec.CommandContext(ctx, ctr, "--address", sock, "--namespace", "k8s.io",
			"images", "import", "--snapshotter", "overlayfs", archive).CombinedOutput()
		if err != nil {
			return fmt.Errorf("import %s into %s: %v\n%s", filepath.Base(archive), n.Name, err, out)
		}
	}
	return nil
}
