"""`streamrl serve`: the HTTP action service for the environment's registry and stack."""

from __future__ import annotations

import argparse

from infra.commands._common import add_environment_arguments, environment_from


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve actions over HTTP (POST /v1/act).")
    add_environment_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from serving import create_app

    config = environment_from(args).serving_config()
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning")
    return 0
