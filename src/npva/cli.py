"""The `npva` command line: parses arguments and hands them to the library; nothing else reads them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from npva import __version__
from npva.config import PreprocessConfig
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


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from npva.preprocess import parse_shard, preprocess_subject

    mode, *rest = args.depth
    if len(rest) > 1 or (rest and mode != "import"):
        raise NpvaError(f"--depth takes import [DIR], mesh or none, got {' '.join(args.depth)}")
    config = PreprocessConfig(
        uv_size=args.uv_size,
        image_scale=args.scale,
        depth=mode,
        depth_dir=rest[0] if rest else None,
        depth_scale=args.depth_scale,
        mouth_mask=args.mouth_mask,
        stats_list=args.stats_list,
    )
    summary = preprocess_subject(
        Path(args.subject),
        config,
        gendir=Path(args.gendir) if args.gendir else None,
        shard=parse_shard(args.shard),
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(summary)
    return 1 if summary.failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    import logging
    import os

    from npva.train import build_config, saved_run_config, train

    run_dir = Path(args.out)
    fresh_settings = args.preset is not None or args.config is not None
    config = build_config(
        args.preset, args.config, args.set, base=None if fresh_settings else saved_run_config(run_dir)
    )
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING, format="npva train: %(message)s"
    )
    result = train(Path(args.subject), run_dir, config, gendir=Path(args.gendir) if args.gendir else None)
    if main_process:
        print(result.summary())
    return 0


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

    defaults = PreprocessConfig()
    prep = sub.add_parser("preprocess", help="position maps, masks, depth and statistics")
    prep.add_argument("subject", help="subject directory (Multiface layout)")
    prep.add_argument("--gendir", help="output directory (default SUBJECT/gendir)")
    prep.add_argument("--uv-size", type=int, default=defaults.uv_size, help="position map side")
    prep.add_argument("--scale", type=float, default=defaults.image_scale, help="training size / image size")
    prep.add_argument(
        "--depth",
        nargs="+",
        default=["import"],
        metavar="MODE",
        help="import [DIR] (MVS depth per camera, .exr or .npz; default SUBJECT/mvs_depth), "
        "mesh (the tracked mesh rendered: a weak fallback without mouth interior or hair), none",
    )
    prep.add_argument(
        "--depth-scale",
        type=float,
        default=defaults.depth_scale,
        help="multiplies imported depth to give mm (1000 for metres)",
    )
    prep.add_argument("--mouth-mask", help="UV-space PNG of mouth texels (default: derived)")
    prep.add_argument("--stats-list", help="frames for the statistics (default: the train split)")
    prep.add_argument("--shard", help="I/N: this process's part (default RANK/WORLD_SIZE, or all)")
    prep.add_argument("--workers", type=int, default=1, help="processes on this machine")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(run=_cmd_preprocess)

    train = sub.add_parser(
        "train",
        help="train an avatar of a preprocessed subject (resumes RUN_DIR); under torchrun on several GPUs",
    )
    train.add_argument("subject", help="subject directory (Multiface layout), preprocessed")
    train.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="run directory; an existing run resumes"
    )
    train.add_argument("--gendir", help="preprocessing output (default SUBJECT/gendir)")
    train.add_argument(
        "--preset",
        choices=("tiny", "demo", "full"),
        help="named settings (default: the run's own when resuming, else full, the published ones)",
    )
    train.add_argument("--config", metavar="FILE", help="YAML settings laid over the preset")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.lr=5e-4 --set data.cameras=400029 (repeatable)",
    )
    train.set_defaults(run=_cmd_train)
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
