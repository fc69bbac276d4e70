package logging

import (
	"fmt"
	"log/slog"
)

// NATSLogger adapts a slog.Logger to the NATS server's Logger interface
// (Noticef, Warnf, Fatalf, Errorf, Debugf, Tracef).
type NATSLogger struct {
	L *slog.Logger
}

// Noticef is the NATS server's start-up chatter; it goes to debug.
func (n NATSLogger) Noticef(format string, v ...any) { n.L.Debug(fmt.Sprintf(format, v...)) }
func (n NATSLogger) Warnf(format string, v ...any)   { n.L.Warn(fmt.Sprintf(format, v...)) }
func (n NATSLogger) Fatalf(format string, v ...any)  { n.L.Error(fmt.Sprintf(format, v...)) }
func (n NATSLogger) Errorf(format string, v ...any)  { n.L.Error(fmt.Sprintf(format, v...)) }
func (n NATSLogger) Debugf(format string, v ...any)  { n.L.Debug(fmt.Sprintf(format, v...)) }
func (n NATSLogger) Tracef(format string, v ...any)  { n.L.Debug(fmt.Sprintf(format, v...)) }
