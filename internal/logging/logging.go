// Package logging sets up lavit's structured logs (log/slog) and adapts the
// loggers of the libraries it embeds (hashicorp/raft's hclog, the NATS server)
// so that every line goes through one slog handler.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Options chooses the log format and level.
type Options struct {
	// Level is one of debug, info, warn, error.
	Level string
	// Format is "text" (human) or "json" (for log collectors).
	Format string
}

// ParseLevel turns a level name into a slog.Level.
func ParseLevel(name string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", name)
}

// New returns a logger writing to w in the chosen format.
func New(w io.Writer, opts Options) (*slog.Logger, error) {
	level, err := ParseLevel(opts.Level)
	if err != nil {
		return nil, err
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(opts.Format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("unknown log format %q (want text or json)", opts.Format)
}

// Discard returns a logger that drops everything (for tests and benchmarks).
func Discard() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}
