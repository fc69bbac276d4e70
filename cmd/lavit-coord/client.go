package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/datadir"
	"github.com/lavit-org/lavit/internal/wire"
)

// clientFlags are taken by every verb that talks to the cluster.
func clientFlags(withJSON bool) []cli.Flag {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "coord", Value: "nats://127.0.0.1:4222", Usage: "NATS URL(s) of the coordinators, comma-separated", EnvVars: env("COORD")},
		&cli.StringFlag{Name: "token", Usage: "join token (default: read from --data-dir)", EnvVars: env("TOKEN")},
		&cli.StringFlag{Name: "data-dir", Value: datadir.Default, Usage: "a local coordinator's data dir, to find the token", EnvVars: env("DATA_DIR")},
		&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "give up after this long"},
	}
	if withJSON {
		flags = append(flags, &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"})
	}
	return flags
}

// callCluster connects to NATS, makes one call to the leader and closes.
func callCluster[Req, Rep any](c *cli.Context, ep wire.Endpoint[Req, Rep], req *Req) (Rep, error) {
	var zero Rep
	token := c.String("token")
	if token == "" {
		t, err := datadir.ReadToken(c.String("data-dir"))
		if err != nil {
			return zero, cliutil.Usagef("no join token: pass --token, set LAVIT_TOKEN, or run where --data-dir holds a coordinator's token (%v)", err)
		}
		token = t
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	host, _ := os.Hostname()
	nc, err := nats.Connect(c.String("coord"), nats.Name("lavit-coord cli"), nats.Timeout(c.Duration("timeout")))
	if err != nil {
		return zero, fmt.Errorf("connect to coordinator NATS at %s: %w", c.String("coord"), err)
	}
	defer nc.Close()
	client := &wire.Client{NC: nc, Token: token, From: "cli@" + host}
	rep, err := ep.Call(ctx, client, req)
	if err != nil {
		return zero, err
	}
	return *rep, nil
}

func noArgs(c *cli.Context) error {
	args, err := cliutil.Args(c)
	if err != nil {
		return err
	}
	if len(args) > 0 {
		return cliutil.Usagef("%s takes no arguments (got %q)", c.Command.FullName(), args)
	}
	return nil
}
