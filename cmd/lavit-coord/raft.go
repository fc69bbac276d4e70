package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/wire"
)

func raftCommand() *cli.Command {
	return &cli.Command{
		Name:  "raft",
		Usage: "coordinator cluster membership",
		Subcommands: []*cli.Command{
			{
				Name:  "peers",
				Usage: "list the raft configuration",
				Flags: clientFlags(true),
				Action: func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					reply, err := callCluster(c, wire.ListRaftPeers, &wire.RaftPeersRequest{})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return cliutil.PrintJSON(os.Stdout, reply.Peers)
					}
					return printCoordinators(reply.Peers)
				},
			},
			{
				Name:      "join",
				Usage:     "add a coordinator (started with --no-bootstrap) as a voter",
				ArgsUsage: "ID RAFT_ADDR",
				Flags:     clientFlags(false),
				Action: func(c *cli.Context) error {
					if c.NArg() != 2 {
						return cliutil.Usagef("raft join needs ID and RAFT_ADDR (got %d arguments)", c.NArg())
					}
					req := &wire.RaftJoinRequest{ID: c.Args().Get(0), RaftAddr: c.Args().Get(1)}
					if _, err := callCluster(c, wire.JoinRaft, req); err != nil {
						return err
					}
					fmt.Printf("added %s (%s) as a voter\n", req.ID, req.RaftAddr)
					return nil
				},
			},
			{
				Name:      "remove",
				Usage:     "remove a coordinator from the raft configuration",
				ArgsUsage: "ID",
				Flags:     clientFlags(false),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return cliutil.Usagef("raft remove needs one ID (got %d arguments)", c.NArg())
					}
					req := &wire.RaftRemoveRequest{ID: c.Args().First()}
					if _, err := callCluster(c, wire.RemoveRaftPeer, req); err != nil {
						return err
					}
					fmt.Printf("removed %s\n", req.ID)
					return nil
				},
			},
			{
				Name:      "transfer",
				Usage:     "move leadership to another voter (to ID if given)",
				ArgsUsage: "[ID]",
				Flags:     clientFlags(false),
				Action: func(c *cli.Context) error {
					if c.NArg() > 1 {
						return cliutil.Usagef("raft transfer takes at most one ID")
					}
					req := &wire.RaftTransferRequest{ID: c.Args().First()}
					if _, err := callCluster(c, wire.TransferLeadership, req); err != nil {
						return err
					}
					fmt.Println("leadership transferred")
					return nil
				},
			},
		},
	}
}
