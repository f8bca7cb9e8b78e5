"""The `npva` command line: parses arguments and hands them to the library; nothing else reads them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from npva import __version__
from npva.errors import NpvaError


def _cmd_synth(args: argparse.Namespace) -> int:
    from npva.synth import write_subject

    summary = write_subject(Path(args.out), preset=args.preset, seed=args.seed)
    print(summary)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from npva.io.check import check_subject

    report = check_subject(Path(args.subject))
    print(report.summary(max_lines=args.max_lines))
    return 0 if report.usable else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npva", description=__doc__)
    parser.add_argument("--version", action="version", version=f"npva {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="write a synthetic subject in the Multiface layout")
    synth.add_argument("--out", required=True, help="subject directory to create")
    synth.add_argument("--preset", default="tiny", choices=("tiny", "demo", "full"))
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=_cmd_synth)

    check = sub.add_parser("check", help="validate a subject directory")
    check.add_argument("subject", help="subject directory (Multiface layout)")
    check.add_argument("--max-lines", type=int, default=20, help="problems listed per category")
    check.set_defaults(run=_cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NpvaError as exc:
        print(f"npva {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npva {args.command}: interrupted", file=sys.stderr)
        return 130
