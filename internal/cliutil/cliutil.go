// Package cliutil holds what both lavit CLIs share: exit codes, logging
// flags, human tables and JSON output.
package cliutil

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/logging"
)

// Exit codes, documented in docs/cli.md.
const (
	ExitOK    = 0
	ExitError = 1 // the command ran and failed
	ExitUsage = 2 // bad flags or arguments
)

// UsageError marks an error in how the command was called.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return UsageError{Err: fmt.Errorf(format, args...)}
}

// Main runs app and exits with the documented code. It is the only place
// a lavit binary calls os.Exit.
func Main(app *cli.App) {
	app.ExitErrHandler = func(*cli.Context, error) {} // we print and exit below
	app.OnUsageError = asUsageError
	markUsageErrors(app.Commands)
	err := app.Run(os.Args)
	if err == nil {
		os.Exit(ExitOK)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", app.Name, err)
	var ue UsageError
	if errors.As(err, &ue) {
		os.Exit(ExitUsage)
	}
	os.Exit(ExitError)
}

func asUsageError(_ *cli.Context, err error, _ bool) error { return UsageError{Err: err} }

// markUsageErrors makes flag-parsing errors of every command usage errors.
func markUsageErrors(cmds []*cli.Command) {
	for _, c := range cmds {
		if c.OnUsageError == nil {
			c.OnUsageError = asUsageError
		}
		markUsageErrors(c.Subcommands)
	}
}

// Args returns the command's positional arguments and applies flags that
// follow them, so `lavit-coord run show ID --json` works: urfave/cli stops
// parsing flags at the first positional argument. "--" ends flags.
func Args(c *cli.Context) ([]string, error) {
	var pos []string
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(pos, args[i+1:]...), nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := findFlag(c.Command.Flags, name)
		if f == nil {
			return nil, Usagef("%s: unknown flag %s", c.Command.FullName(), a)
		}
		if !hasValue {
			if _, isBool := f.(*cli.BoolFlag); isBool {
				value = "true"
			} else {
				if i+1 >= len(args) {
					return nil, Usagef("%s: flag %s needs a value", c.Command.FullName(), a)
				}
				i++
				value = args[i]
			}
		}
		if err := c.Set(f.Names()[0], value); err != nil {
			return nil, Usagef("%s: flag %s: %v", c.Command.FullName(), a, err)
		}
	}
	return pos, nil
}

func findFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// LogFlags are the logging flags every command takes.
func LogFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"LAVIT_LOG_LEVEL"}},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json", EnvVars: []string{"LAVIT_LOG_FORMAT"}},
	}
}

// Logger builds the logger from the logging flags. Logs go to stderr;
// stdout is for results.
func Logger(c *cli.Context) (*slog.Logger, error) {
	l, err := logging.New(os.Stderr, logging.Options{Level: c.String("log-level"), Format: c.String("log-format")})
	if err != nil {
		return nil, UsageError{Err: err}
	}
	return l, nil
}

// PrintJSON writes v as indented JSON to w.
func PrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Table writes aligned columns.
func Table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	line := func(cols []string) {
		for i, c := range cols {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, c)
		}
		fmt.Fprintln(tw)
	}
	line(header)
	for _, r := range rows {
		line(r)
	}
	return tw.Flush()
}

// Ago renders how long ago t was ("-" for zero).
func Ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms ago", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs ago", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds ago", int(d.Minutes()), int(d.Seconds())%60)
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// ClientToken is the token a client command presents: --token (or
// LAVIT_TOKEN), else the file --token-file names (or LAVIT_TOKEN_FILE;
// keeps the secret out of process listings), else the admin token a local
// coordinator saved in --data-dir. Both --token and --token-file is an
// error. from says where it came from, for logs (never the token).
func ClientToken(c *cli.Context, readDataDir func(dir string) (string, error)) (token, from string, err error) {
	if token, from, err = FlagToken(c); err != nil || token != "" {
		return token, from, err
	}
	dir := c.String("data-dir")
	t, err := readDataDir(dir)
	if err != nil {
		return "", "", Usagef("no token: pass --token-file (or LAVIT_TOKEN_FILE), --token (or LAVIT_TOKEN), or run where --data-dir holds a coordinator's token (%v)", err)
	}
	return t, "the data dir " + dir, nil
}

// FlagToken is the token --token or --token-file gives ("" when
// neither is set), and which of them gave it.
func FlagToken(c *cli.Context) (token, from string, err error) {
	flagToken, file := c.String("token"), c.String("token-file")
	switch {
	case flagToken != "" && file != "":
		return "", "", Usagef("--token and --token-file both given: pass one")
	case flagToken != "":
		return flagToken, "--token", nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", "", Usagef("--token-file: %v", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", "", Usagef("--token-file %s is empty", file)
		}
		return t, "--token-file " + file, nil
	}
	return "", "", nil
}

// TokenFlags are --token and --token-file, with their LAVIT_* variables.
func TokenFlags(env func(string) []string, what string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "token", Usage: what + " (visible in process listings: prefer --token-file)", EnvVars: env("TOKEN")},
		&cli.StringFlag{Name: "token-file", Usage: "a file holding the " + what, EnvVars: env("TOKEN_FILE")},
	}
}

// FlagPlaintextNATS is --plaintext-nats: connect to the coordinators'
// NATS without TLS, for an external NATS that does not speak it.
func FlagPlaintextNATS(env func(string) []string) cli.Flag {
	return &cli.BoolFlag{Name: "plaintext-nats", Usage: "connect without TLS: only for an external NATS (lavit-coord up --nats-url) that does not speak it; the token travels in clear", EnvVars: env("PLAINTEXT_NATS")}
}
