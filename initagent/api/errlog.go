package api

import (
	"log"
	"log/slog"
	"strings"
)

// slogErrorLog routes net/http's own messages (such as refused TLS
// handshakes) into the structured log.
func slogErrorLog(l *slog.Logger) *log.Logger {
	return log.New(errWriter{l}, "", 0)
}

type errWriter struct{ l *slog.Logger }

func (w errWriter) Write(p []byte) (int, error) {
	w.l.Warn("node api connection", "detail", strings.TrimSpace(string(p)))
	return len(p), nil
}
