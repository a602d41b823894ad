"""One module per `streamrl` subcommand, each with `build_parser(prog)` and `run(args)` (see infra/cli.py)."""
