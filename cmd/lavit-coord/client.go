package main

import (
	"context"
	"errors"
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
		&cli.StringFlag{Name: "data-dir", Value: datadir.Default, Usage: "a local coordinator's data dir, to find the admin token", EnvVars: env("DATA_DIR")},
		&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "give up after this long"},
		cliutil.FlagPlaintextNATS(env),
	}
	flags = append(flags, cliutil.TokenFlags(env, "token (default: the admin token in --data-dir)")...)
	if withJSON {
		flags = append(flags, &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"})
	}
	return flags
}

// callCluster connects to NATS, makes one call to the leader and closes.
func callCluster[Req, Rep any](c *cli.Context, ep wire.Endpoint[Req, Rep], req *Req) (Rep, error) {
	var zero Rep
	token, _, err := cliutil.ClientToken(c, datadir.ReadToken)
	if err != nil {
		return zero, err
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	host, _ := os.Hostname()
	connect := wire.ConnectOptions
	if c.Bool("plaintext-nats") {
		connect = wire.PlaintextConnectOptions
	}
	opts := append(connect(token), nats.Name("lavit-coord cli"), nats.Timeout(c.Duration("timeout")))
	nc, err := nats.Connect(c.String("coord"), opts...)
	switch {
	case errors.Is(err, nats.ErrAuthorization):
		return zero, fmt.Errorf("connect to coordinator NATS at %s: the token was refused (check --token-file / --token / LAVIT_TOKEN)", c.String("coord"))
	case c.Bool("plaintext-nats") && errors.Is(err, nats.ErrTLS):
		return zero, fmt.Errorf("connect to coordinator NATS at %s: it requires TLS (lavit's embedded NATS does unless started with --plaintext-nats): leave out --plaintext-nats", c.String("coord"))
	case errors.Is(err, nats.ErrSecureConnWanted):
		return zero, fmt.Errorf("connect to coordinator NATS at %s: it does not speak TLS, and lavit's coordinators always do (for an external NATS without TLS, pass --plaintext-nats)", c.String("coord"))
	}
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
