// Command initagent is ballast's PID 1.
//
// It never returns: after the agent asks for a power action it kills what is
// left, syncs and calls reboot(2). On a fatal error it logs, waits and
// reboots, because an init that exits panics the kernel.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/ballast-os/ballast/initagent/agent"
	"github.com/ballast-os/ballast/initagent/boot"
	"github.com/ballast-os/ballast/initagent/console"
	"github.com/ballast-os/ballast/initagent/logring"
	"github.com/ballast-os/ballast/initagent/pid1"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// fatalRebootDelay leaves time to read the error on the console.
const fatalRebootDelay = 10 * time.Second

func main() {
	level := new(slog.LevelVar) // the agent lowers it to debug for ballast.debug on the cmdline
	// Recent lines stay in memory for `nodectl logs`; /dev/console gets them
	// all, the node's other consoles (VGA beside serial) warnings and errors.
	logs := logring.New(20000)
	consoles := console.New(os.Stdout)
	log := slog.New(logs.Handler(slog.NewMultiHandler(
		slog.NewTextHandler(consoles, &slog.HandlerOptions{Level: level}),
		slog.NewTextHandler(consoles.ImportantExtrasOnly(), &slog.HandlerOptions{Level: slog.LevelWarn}))))
	// containerd's packages (initagent/imagestore) log through logrus's
	// standard logger: their lines join the agent's log.
	logrus.SetOutput(io.Discard)
	logrus.AddHook(logrusHook{log.With("from", "containerd")})
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "initagent: must run as PID 1 (the kernel's init)")
		os.Exit(2)
	}
	// Ctrl-Alt-Del sends SIGINT to init instead of rebooting at once.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)

	req, err := runRecovered(log, level, logs, consoles)
	if err != nil {
		log.Error("fatal, rebooting", "err", err, "in", fatalRebootDelay)
		time.Sleep(fatalRebootDelay)
		req = pid1.Request{Action: pid1.Reboot, Reason: "fatal error"}
	}
	pid1.KillAll(log, 5*time.Second)
	log.Info("powering down", "action", req.Action)
	fmt.Fprintf(consoles.Important(), "ballast: %s\n", req.Action)
	flush, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	consoles.Flush(flush)
	cancel()
	if err := pid1.PowerDown(req.Action); err != nil {
		log.Error("reboot(2) refused", "err", err)
	}
	select {} // the kernel takes it from here
}

func runRecovered(log *slog.Logger, level *slog.LevelVar, logs *logring.Ring, consoles *console.Consoles) (req pid1.Request, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	a := &agent.Agent{Log: log, LogLevel: level, Console: consoles, Logs: logs, Container: boot.InContainer()}
	return a.Run(context.Background())
}

// logrusHook sends logrus entries to slog. Warnings come in at info: the
// packages warn about what is expected on a node (no fs-verity on the
// containerd root), and a real failure reaches the agent as an error.
type logrusHook struct{ log *slog.Logger }

func (logrusHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h logrusHook) Fire(e *logrus.Entry) error {
	level := slog.LevelInfo
	switch {
	case e.Level <= logrus.ErrorLevel:
		level = slog.LevelError
	case e.Level >= logrus.DebugLevel:
		level = slog.LevelDebug
	}
	attrs := make([]any, 0, 2*len(e.Data)+2)
	attrs = append(attrs, "containerd_level", e.Level.String())
	for k, v := range e.Data {
		attrs = append(attrs, k, v)
	}
	h.log.Log(context.Background(), level, e.Message, attrs...)
	return nil
}
