package main

import (
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/wire"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the cluster: leader, coordinators, worker counts",
		Flags: clientFlags(true),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			st, err := callCluster(c, wire.GetStatus, &wire.StatusRequest{})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return cliutil.PrintJSON(os.Stdout, st)
			}
			fmt.Printf("cluster   %s\nleader    %s (%s)\nterm      %d\ncommit    %d\nworkers   %d (%d idle, %d training, %d lost)\nruns      %d\n\n",
				st.ClusterID, st.Leader, st.LeaderAddr, st.Term, st.CommitIndex,
				st.Workers.Total, st.Workers.Idle, st.Workers.Training, st.Workers.Lost, st.Runs)
			if !st.AdminRotationSince.IsZero() {
				fmt.Printf("an admin token rotation is in progress since %s: finish it (token rotate --finish, with the new token) or abort it (--abort)\n\n", st.AdminRotationSince.Format(time.RFC3339))
			}
			return printCoordinators(st.Coordinators)
		},
	}
}

func printCoordinators(cs []wire.Coordinator) error {
	rows := make([][]string, 0, len(cs))
	for _, co := range cs {
		role := "follower"
		if co.Leader {
			role = "leader"
		}
		if co.Suffrage != "Voter" {
			role += " (" + co.Suffrage + ")"
		}
		rows = append(rows, []string{co.ID, role, co.RaftAddr, dash(co.HTTPAddr), dash(co.NATSURL)})
	}
	return cliutil.Table(os.Stdout, []string{"COORDINATOR", "ROLE", "RAFT", "HTTP", "NATS"}, rows)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func workersCommand() *cli.Command {
	return &cli.Command{
		Name:  "workers",
		Usage: "the worker fleet",
		Subcommands: []*cli.Command{{
			Name:  "ls",
			Usage: "list workers with their state (IDLE, TRAINING, LOST)",
			Flags: clientFlags(true),
			Action: func(c *cli.Context) error {
				if err := noArgs(c); err != nil {
					return err
				}
				reply, err := callCluster(c, wire.ListWorkers, &wire.WorkersRequest{})
				if err != nil {
					return err
				}
				if c.Bool("json") {
					if reply.Workers == nil {
						reply.Workers = []wire.Worker{}
					}
					return cliutil.PrintJSON(os.Stdout, reply.Workers)
				}
				now := time.Now()
				rows := make([][]string, 0, len(reply.Workers))
				for _, w := range reply.Workers {
					rows = append(rows, []string{w.ID, w.Host, w.Device, w.State, cliutil.Ago(w.Since, now), cliutil.Ago(w.LastHeartbeat, now), dash(w.Run)})
				}
				return cliutil.Table(os.Stdout, []string{"ID", "HOST", "DEVICE", "STATE", "SINCE", "LAST HEARTBEAT", "RUN"}, rows)
			},
		}},
	}
}
