"""One module per `streamrl` subcommand: `HELP`, `DESCRIPTION`, `add_arguments(parser)`, `run(args)`.

Each module imports only cheap things at the top (argparse, `_common`); heavy ones go inside `run`.
See infra/cli.py.
"""
