package agent

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ballast-os/ballast/initagent/sysslot"
)

// firstRunBinaries are the system image's programs a node runs first, in
// the order it needs them; kubeadm and kubelet are links to one
// multi-call binary, read once.
var firstRunBinaries = []string{
	"usr/bin/kubeadm", "usr/bin/kubelet", "usr/bin/containerd", "usr/bin/containerd-shim-runc-v2", "usr/bin/runc",
}

// prefetchPayload reads the Kubernetes binaries into the page cache while
// boot waits for DHCP and the machine config. Their first run would
// otherwise page them in from the squashfs on the way to kubelet: in
// faulting order, decompressing blocks on the critical path (kubeadm's
// first phase took 5.6 s under TCG, most of it paging in the 165 MB
// binary).
func (a *Agent) prefetchPayload(ctx context.Context) {
	start := time.Now()
	files, bytes, err := prefetch(ctx, filepath.Join(a.Root, sysslot.SystemMount), firstRunBinaries)
	if err != nil {
		a.Log.Warn("payload prefetch", "err", err)
		return
	}
	a.Log.Info("payload prefetched", "files", files, "MiB", bytes>>20, "took", time.Since(start).Round(time.Millisecond))
}

// prefetch reads the files named (relative to root, links resolved inside
// root, each file once) to the end. Files that do not exist are skipped.
func prefetch(ctx context.Context, root string, names []string) (files int, bytes int64, err error) {
	seen := map[string]bool{}
	buf := make([]byte, 1<<20)
	for _, name := range names {
		path, err := filepath.EvalSymlinks(filepath.Join(root, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return files, bytes, err
		}
		if seen[path] || !strings.HasPrefix(path, filepath.Clean(root)+string(filepath.Separator)) {
			continue
		}
		seen[path] = true
		n, err := readToEnd(ctx, path, buf)
		bytes += n
		if err != nil {
			return files, bytes, err
		}
		files++
	}
	return files, bytes, nil
}

func readToEnd(ctx context.Context, path string, buf []byte) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := f.Read(buf)
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
