// Command lavit-coord runs and manages the lavit coordinator: `up` starts a
// node; the other verbs talk to the cluster's leader over NATS.
package main

import (
	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	cliutil.Main(newApp())
}

func newApp() *cli.App {
	return &cli.App{
		Name:    "lavit-coord",
		Usage:   "the lavit coordinator: raft-replicated control plane for distributed LaVIT pretraining",
		Version: version,
		Commands: []*cli.Command{
			upCommand(),
			statusCommand(),
			workersCommand(),
			raftCommand(),
			tokenCommand(),
			caCommand(),
			shardsCommand(),
			runCommand(),
			evalCommand(),
			ckptCommand(),
			textCommand(),
		},
	}
}
