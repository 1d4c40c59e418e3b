"""``python -m sandbox serve``: both simulators on 127.0.0.1 until interrupted (design §7)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from sandbox import SandboxServers, _profile, dataverse, marketo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the Marketo and Dataverse simulators")
    serve.add_argument("--marketo-port", type=int, default=0)
    serve.add_argument("--dataverse-port", type=int, default=0)
    serve.add_argument("--request-log", metavar="FILE")
    serve.add_argument("--seed-leads", type=int, default=0, help="leads seeded on each side")
    serve.add_argument("--seed-contacts", type=int, default=0, help="contacts seeded in Dataverse")
    serve.add_argument("--no-limits", action="store_true", help="turn off rate, concurrency and quota limits")
    serve.add_argument("--tls", action="store_true", help="serve https with a locally generated CA")
    serve.add_argument(
        "--profile", choices=_profile.NAMES, default="instant", help="latency and capacity model (README)"
    )
    serve.add_argument("--profile-file", metavar="FILE", help="JSON overriding any figure of the --profile")
    marketo.add_arguments(serve)
    dataverse.add_arguments(serve)
    args = parser.parse_args(argv)

    marketo_options, dataverse_options = marketo.options_from_args(args), dataverse.options_from_args(args)
    try:
        profile = _profile.load(args.profile, args.profile_file)
    except (OSError, ValueError) as exc:
        parser.error(f"--profile-file: {exc}")
    _profile.apply(profile, marketo=marketo_options, dataverse=dataverse_options)
    log = open(args.request_log, "a", encoding="utf-8") if args.request_log else None  # noqa: SIM115
    servers = SandboxServers(
        marketo=marketo_options,
        dataverse=dataverse_options,
        marketo_port=args.marketo_port,
        dataverse_port=args.dataverse_port,
        request_log=log,
        tls=args.tls,
    ).start()
    ready = {"marketo": servers.marketo_url, "dataverse": servers.dataverse_url}
    if servers.ca_bundle is not None:
        ready["caBundle"] = str(servers.ca_bundle)
    print(json.dumps(ready), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    servers.stop()
    if log is not None:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
