"""The Dataverse simulator (placeholder until its issue lands: answers 404 to everything)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sandbox._http import Request, Response


@dataclass
class DataverseOptions:
    limits: bool = True
    seed_leads: int = 0


class DataverseSandbox:
    def __init__(self, options: DataverseOptions) -> None:
        self.options = options

    def handle(self, request: Request) -> Response:
        return Response.text("not implemented", 404)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Dataverse-only command-line flags of `python -m sandbox serve`."""


def options_from_args(args: argparse.Namespace) -> DataverseOptions:
    return DataverseOptions(limits=not args.no_limits, seed_leads=args.seed_leads)
