package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/datadir"
	"github.com/lavit-org/lavit/internal/wire"
)

// caCommand prints the cluster CA's certificate, derived offline from the
// admin token, for tools that verify the coordinators themselves.
func caCommand() *cli.Command {
	return &cli.Command{
		Name:  "ca",
		Usage: "print the cluster CA's certificate (PEM; derived from the admin token) for curl --cacert or a Prometheus scrape; coordinators' certificates name " + clusterca.ServerName,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: datadir.Default, Usage: "a local coordinator's data dir, to find the admin token", EnvVars: env("DATA_DIR")},
			&cli.BoolFlag{Name: "fingerprint", Usage: "print the certificate's sha256 (hex) instead"},
		}, cliutil.TokenFlags(env, "the admin token (default: the one in --data-dir)")...),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			token, _, err := cliutil.ClientToken(c, datadir.ReadToken)
			if err != nil {
				return err
			}
			if cred, _ := wire.SplitToken(token); strings.HasPrefix(cred, "lavit.") {
				return cliutil.Usagef("ca: an issued token cannot derive the CA; give the admin token (the first coordinator's <data-dir>/token)")
			}
			ca, err := clusterca.Derive(token)
			if err != nil {
				return err
			}
			if c.Bool("fingerprint") {
				fmt.Println(ca.Fingerprint())
				return nil
			}
			_, err = os.Stdout.Write(ca.CertPEM())
			return err
		},
	}
}

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "issue, list and revoke tokens (worker tokens for lavit-worker join; admin tokens for operators)",
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "make a token and print it (shown only this once)",
				Flags: append(clientFlags(true),
					&cli.StringFlag{Name: "role", Value: "worker", Usage: "worker (may only run lavit-worker join) or admin (may do anything)"},
					&cli.DurationFlag{Name: "ttl", Usage: "expire the token this long after now (default: never)"},
					&cli.StringFlag{Name: "note", Usage: "what the token is for (shown by token ls)"},
				),
				Action: func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					ttl := c.Duration("ttl")
					if ttl < 0 || (ttl > 0 && ttl < time.Second) {
						return cliutil.Usagef("--ttl %s: want at least 1s (or leave it out: never expires)", ttl)
					}
					req := &wire.TokenCreateRequest{Role: c.String("role"), TTLSeconds: int64(ttl / time.Second), Note: c.String("note")}
					reply, err := callCluster(c, wire.CreateToken, req)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return cliutil.PrintJSON(os.Stdout, reply)
					}
					fmt.Println(reply.Token)
					expires := "never expires"
					if !reply.Expires.IsZero() {
						expires = "expires " + reply.Expires.Format(time.RFC3339)
					}
					fmt.Fprintf(os.Stderr, "token %s (%s, %s): shown only now; give it to lavit-worker join --token-file\n", reply.ID, reply.Role, expires)
					return nil
				},
			},
			{
				Name:  "ls",
				Usage: "list the issued tokens (ids and roles, never the tokens)",
				Flags: clientFlags(true),
				Action: func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					reply, err := callCluster(c, wire.ListTokens, &wire.TokenListRequest{})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return cliutil.PrintJSON(os.Stdout, reply.Tokens)
					}
					now := time.Now()
					var rows [][]string
					for _, t := range reply.Tokens {
						expires := "never"
						if !t.Expires.IsZero() {
							expires = t.Expires.Format(time.RFC3339)
							if !now.Before(t.Expires) {
								expires += " (expired)"
							}
						}
						rows = append(rows, []string{t.ID, t.Role, cliutil.Ago(t.Created, now), expires, t.Note})
					}
					return cliutil.Table(os.Stdout, []string{"ID", "ROLE", "CREATED", "EXPIRES", "NOTE"}, rows)
				},
			},
			tokenRotateCommand(),
			{
				Name:      "revoke",
				Usage:     "revoke a token: every coordinator refuses it, and its connections are closed within seconds",
				ArgsUsage: "ID",
				Flags:     clientFlags(false),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return cliutil.Usagef("token revoke needs one ID (got %d arguments; token ls lists them)", c.NArg())
					}
					if _, err := callCluster(c, wire.RevokeToken, &wire.TokenRevokeRequest{ID: c.Args().First()}); err != nil {
						return err
					}
					fmt.Printf("revoked %s\n", c.Args().First())
					return nil
				},
			},
		},
	}
}

// tokenRotateCommand replaces the admin token, and with it the cluster
// CA, without stopping the cluster: start, move clients to the new token,
// finish (or abort).
func tokenRotateCommand() *cli.Command {
	return &cli.Command{
		Name:  "rotate",
		Usage: "replace the admin token and the cluster CA live: start (prints the new token once), move clients and worker tokens over, then --finish with the new token (or --abort)",
		Flags: append(clientFlags(true),
			&cli.BoolFlag{Name: "finish", Usage: "end the rotation: the old token and CA stop working (call it with the new token)"},
			&cli.BoolFlag{Name: "abort", Usage: "abandon the rotation: the new token and CA stop working"},
			&cli.BoolFlag{Name: "force", Usage: "with --finish: finish even though some coordinators are unreachable (copy the new token into their data dirs by hand)"},
		),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			action, err := rotateAction(c.Bool("finish"), c.Bool("abort"), c.Bool("force"))
			if err != nil {
				return err
			}
			reply, err := callCluster(c, wire.RotateToken, &wire.TokenRotateRequest{Action: action, Force: c.Bool("force")})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return cliutil.PrintJSON(os.Stdout, reply)
			}
			switch action {
			case wire.RotateStart:
				fmt.Println(reply.Token)
				fmt.Fprintf(os.Stderr, `new admin token above: shown only now. Both tokens and both CAs work until the rotation ends.
  1. Save it where operators and scripts read the admin token (--token-file); every coordinator's <data-dir>/token.next has it too.
  2. Worker tokens pin the CA: give workers tokens re-pinned to %s
     (replace the last field of each lavit.* token with it, or make new ones with token create).
  3. lavit-coord token rotate --finish --token-file NEW   (the old token and CA stop working)
     or lavit-coord token rotate --abort                  (the new ones do)
`, reply.CAFingerprint)
			case wire.RotateFinish:
				fmt.Printf("rotation finished: the old admin token and CA no longer work; tokens pin CA %s\n", reply.CAFingerprint)
			case wire.RotateAbort:
				fmt.Printf("rotation aborted: the new admin token and CA no longer work; tokens pin CA %s\n", reply.CAFingerprint)
			}
			return nil
		},
	}
}

// rotateAction maps token rotate's flags to the step they ask for.
func rotateAction(finish, abort, force bool) (string, error) {
	switch {
	case finish && abort:
		return "", cliutil.Usagef("token rotate: --finish and --abort are exclusive")
	case force && !finish:
		return "", cliutil.Usagef("token rotate: --force goes with --finish")
	case finish:
		return wire.RotateFinish, nil
	case abort:
		return wire.RotateAbort, nil
	}
	return wire.RotateStart, nil
}
