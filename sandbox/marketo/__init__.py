"""The Marketo simulator (placeholder until its issue lands: answers 404 to everything)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sandbox._http import Request, Response


@dataclass
class MarketoOptions:
    limits: bool = True
    seed_leads: int = 0


class MarketoSandbox:
    def __init__(self, options: MarketoOptions) -> None:
        self.options = options

    def handle(self, request: Request) -> Response:
        return Response.text("not implemented", 404)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Marketo-only command-line flags of `python -m sandbox serve`."""


def options_from_args(args: argparse.Namespace) -> MarketoOptions:
    return MarketoOptions(limits=not args.no_limits, seed_leads=args.seed_leads)
