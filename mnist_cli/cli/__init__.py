"""The `mnist` command: dispatch to a subcommand, run its Hydra app, claim the run folder."""
