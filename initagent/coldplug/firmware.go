package coldplug

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"syscall"
)

// firmwareFailure is how the kernel reports a blob a driver asked for and
// did not find: "<dev>: Direct firmware load for NAME failed with error -2".
var firmwareFailure = regexp.MustCompile(`^(?:(\S+) (\S+): )?Direct firmware load for (\S+) failed with error (-?\d+)`)

// watchFirmware follows the kernel log (/dev/kmsg, from its start, so
// failures during coldplug count too) and turns each failed firmware load
// into a warning naming the blob, the device and where the image's firmware
// came from. A missing blob leaves a device degraded (or without its
// offloads), not the node down.
func (l *Loader) watchFirmware(ctx context.Context, kmsg io.ReadCloser) {
	go func() {
		<-ctx.Done()
		kmsg.Close()
	}()
	// Each read of /dev/kmsg returns one record: "PRI,SEQ,TS,FLAGS;MESSAGE\n".
	r := bufio.NewReaderSize(kmsg, 8192)
	for {
		line, err := r.ReadString('\n')
		switch {
		case err == nil:
		case errors.Is(err, syscall.EPIPE):
			continue // records overwritten before they were read
		case ctx.Err() != nil, errors.Is(err, io.EOF), errors.Is(err, os.ErrClosed):
			return
		default:
			l.Log.Warn("kernel log: stopped following it, missing firmware will not be reported", "err", err)
			return
		}
		_, msg, ok := strings.Cut(line, ";")
		if !ok {
			continue
		}
		m := firmwareFailure.FindStringSubmatch(strings.TrimSpace(msg))
		if m == nil {
			continue
		}
		l.mu.Lock()
		l.status.FirmwareMissing = appendOnce(l.status.FirmwareMissing, m[3])
		l.mu.Unlock()
		hint := "not in the image: add the Debian package that has it to kernel/firmware.go"
		if len(l.Firmware.Packages) > 0 {
			hint = "not in the image's firmware packages (" + strings.Join(l.Firmware.Packages, ", ") + "): find it with `apt-file search " + m[3] + "` and pin that package in kernel/firmware.go"
		}
		l.Log.Warn("firmware missing", "file", m[3], "driver", m[1], "device", m[2], "error", m[4], "fix", hint)
	}
}

func appendOnce(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
