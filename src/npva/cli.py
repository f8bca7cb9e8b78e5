"""The `npva` command line: parses arguments and hands them to the library; nothing else reads them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from npva import __version__
from npva.config import ExperimentConfig, PreprocessConfig, settings_help
from npva.errors import NpvaError
from npva.io.splits import DEFAULT_PROTOCOL, GENERIC_TEST_FRACTION, PROTOCOLS

# Exit statuses (README, "Exit status"); argparse exits 2 on a usage error.
EXIT_PROBLEMS = 1  # the command ran and reported problems (check: not usable; preprocess: some failed)
EXIT_BAD_INPUT = 3  # a file missing or malformed, settings that contradict, a run directory in use
EXIT_SYSTEM = 4  # the operating system refused to read or write (permission, full disk, ...)
EXIT_INTERRUPTED = 130


def _cmd_synth(args: argparse.Namespace) -> int:
    from npva.synth import write_subject

    summary = write_subject(
        Path(args.out), preset=args.preset, seed=args.seed, variant=args.variant, cameras=args.cameras
    )
    print(summary)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from npva.io.check import check_subject

    report = check_subject(Path(args.subject))
    print(report.summary(max_lines=args.max_lines))
    return 0 if report.usable else EXIT_PROBLEMS


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from npva.preprocess import parse_shard, preprocess_subject

    mode, *rest = args.depth
    if len(rest) > 1 or (rest and mode != "import"):
        raise NpvaError(f"--depth takes auto, import [DIR], stereo, mesh or none, got {' '.join(args.depth)}")
    if args.preset and args.uv_size:
        raise NpvaError("give --preset or --uv-size, not both (a preset decides the position map size)")
    config = PreprocessConfig(
        uv_size=args.uv_size or _preset_uv_size(args.preset or "full"),
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
    return EXIT_PROBLEMS if summary.failed else 0


def _preset_uv_size(preset: str) -> int:
    from npva.train.presets import preset_config

    return preset_config(preset).model.posmap_size


def _cmd_split(args: argparse.Namespace) -> int:
    from npva.io.splits import protocol_split
    from npva.io.subject import SubjectLayout

    folder = SubjectLayout(Path(args.subject)).splits_dir
    if folder.exists():
        raise NpvaError(f"{folder}: exists already; move it away to write another split")
    split = protocol_split(
        Path(args.subject),
        args.protocol,
        test_sequences=args.test_sequences,
        test_fraction=args.test_fraction,
        test_cameras=args.test_cameras,
        every=args.every,
    )
    split.write(folder)
    print(f"{split.describe()}; written to {folder}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import logging
    import os

    from npva.train import build_config, preprocessed_preset, saved_run_config, train

    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING, format="npva train: %(message)s"
    )
    run_dir = Path(args.out)
    subject = Path(args.subject)
    gendir = Path(args.gendir) if args.gendir else subject / "gendir"
    saved = None if args.preset is not None or args.config is not None else saved_run_config(run_dir)
    preset = args.preset
    if preset is None and saved is None:
        preset = preprocessed_preset(gendir)
        logging.getLogger(__name__).info("preset %s: the one %s was preprocessed for", preset, gendir)
    config = build_config(preset, args.config, args.set, base=saved)
    live = None
    if args.view and main_process:
        from npva.view import LiveView

        live = LiveView(subject, gendir, run_dir, config, args.view_every, args.host, args.port)
    try:
        result = train(subject, run_dir, config, gendir=gendir, on_step=live)
    finally:
        if live is not None:
            live.close()
    if main_process:
        print(result.summary())
    return 0


def _open_checkpoint(args: argparse.Namespace):
    """The EvalContext of the arguments added by _add_checkpoint_arguments."""
    import torch

    from npva.eval.loading import open_checkpoint

    return open_checkpoint(
        Path(args.checkpoint),
        subject=Path(args.subject) if args.subject else None,
        gendir=Path(args.gendir) if args.gendir else None,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )


def _cmd_render(args: argparse.Namespace) -> int:
    from npva.eval.loading import evaluation_dataset, run_directory
    from npva.eval.render import render_samples

    ctx = _open_checkpoint(args)
    dataset = evaluation_dataset(ctx, args.img_list, args.cameras)
    out_dir = Path(args.out) if args.out else run_directory(ctx.checkpoint) / "render"
    records = render_samples(
        ctx, dataset, out_dir, full=args.full, preview=args.preview, progress=not args.no_progress
    )
    frames = len({(r.seq, r.frame) for r in records})
    cameras = len({r.cam for r in records})
    print(
        f"npva render: {len(records)} images ({frames} frames x {cameras} cameras) of step {ctx.step} "
        f"in {out_dir}/<seq>/<frame>/, index in {out_dir / 'render.json'}"
    )
    if dataset.skipped:
        print(f"  {len(dataset.skipped)} missing files left samples out, e.g. {dataset.skipped[0]}")
    return 0


def _cmd_video(args: argparse.Namespace) -> int:
    from npva.eval.loading import read_img_list, run_directory
    from npva.eval.video import describe_video, make_video

    ctx = _open_checkpoint(args)
    if args.out:
        out_path = Path(args.out)
    else:
        frames = read_img_list(ctx, args.img_list)
        seq = frames[0][0] if frames else "video"
        out_path = run_directory(ctx.checkpoint) / "video" / f"{seq}.mp4"
    path = make_video(
        ctx,
        args.img_list,
        out_path,
        camera=args.camera,
        orbit=args.orbit,
        prmesh=args.prmesh,
        fps=args.fps,
        progress=not args.no_progress,
        orbit_degrees=args.orbit_degrees,
    )
    print(f"npva video: {describe_video(path)}")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from npva.eval.loading import run_directory
    from npva.view import Viewer, open_subject, serve, viser_module

    viser_module()  # before the checkpoint: a missing package is said at once
    ctx = _open_checkpoint(args)
    out_dir = Path(args.out) if args.out else run_directory(ctx.checkpoint) / "view"
    viewer = Viewer(open_subject(ctx), out_dir, host=args.host, port=args.port)
    print(f"npva view: {viewer.url} shows step {ctx.step} of {ctx.checkpoint} (Ctrl-C stops)", flush=True)
    try:
        serve(viewer)
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from npva.eval.loading import evaluation_dataset
    from npva.eval.metrics import default_out_dir, evaluate_checkpoint, protocol_cameras

    ctx = _open_checkpoint(args)
    cameras = protocol_cameras(args.protocol, args.cameras, ctx.layout.krt)
    dataset = evaluation_dataset(ctx, args.img_list, cameras)
    out_dir = Path(args.out) if args.out else default_out_dir(ctx, args.protocol)
    report = evaluate_checkpoint(
        ctx,
        dataset,
        args.protocol,
        baseline=args.baseline == "mesh",
        out_dir=out_dir,
        progress=not args.no_progress,
        lpips_weights=args.lpips_weights,
    )
    print(report.table())
    print(f"  per image: {out_dir / 'metrics.csv'}; summary and settings: {out_dir / 'metrics.json'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from npva.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="npva demo: %(message)s")
    result = run_demo(Path(args.out), preset=args.preset, seed=args.seed, progress=not args.no_progress)
    print(result.report())
    return 0


def _add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every command that evaluates a trained avatar takes."""
    parser.add_argument("checkpoint", help="checkpoint file, or a run directory (its newest checkpoint)")
    parser.add_argument("--subject", help="subject directory (default: the one trained on)")
    parser.add_argument("--gendir", help="preprocessing output (default: the one trained on)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default cuda when available")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the viewer serves."""
    parser.add_argument("--host", default="127.0.0.1", help="viewer address (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8080, help="viewer port (the next free one if taken)")


SETTINGS_EPILOG = (
    "settings (--set KEY=VALUE, --config FILE; the values shown are the full preset's, the published "
    "ones; [resumable]: a resumed run may change it):"
)


class _SettingsListFormatter(argparse.RawDescriptionHelpFormatter):
    """Help whose SETTINGS_EPILOG is followed by every setting (config.settings_help): the list is read
    from the settings' source only when the help is shown, not at every start of the command."""

    def add_text(self, text: str | None) -> None:
        if text == SETTINGS_EPILOG:
            text = f"{text}\n{settings_help(ExperimentConfig())}"
        super().add_text(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npva", description=__doc__)
    parser.add_argument("--version", action="version", version=f"npva {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="write a synthetic subject in the Multiface layout")
    synth.add_argument("--out", required=True, help="subject directory to create")
    synth.add_argument("--preset", default="tiny", choices=("tiny", "demo", "full"))
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--variant",
        default="clean",
        choices=("clean", "capture"),
        help="capture: varied head, hair volume, clothing, tracking error and lag, unwrapped textures, "
        "lights with highlights, camera gains, sensor noise (default clean)",
    )
    synth.add_argument(
        "--cameras",
        default="preset",
        choices=("preset", "dome"),
        help="preset: the preset's cameras (default); dome: all 38 cameras of the dome, 15-20 degrees "
        "apart, as many as a Multiface capture has, at the preset's image size",
    )
    synth.set_defaults(run=_cmd_synth)

    check = sub.add_parser("check", help="validate a subject directory")
    check.add_argument("subject", help="subject directory (Multiface layout)")
    check.add_argument("--max-lines", type=int, default=20, help="problems listed per category")
    check.set_defaults(run=_cmd_check)

    defaults = PreprocessConfig()
    prep = sub.add_parser("preprocess", help="position maps, masks, depth and statistics")
    prep.add_argument("subject", help="subject directory (Multiface layout)")
    prep.add_argument("--gendir", help="output directory (default SUBJECT/gendir)")
    prep.add_argument(
        "--preset",
        choices=("tiny", "demo", "full"),
        help="the training preset to preprocess for: its position map size (default full, 256)",
    )
    prep.add_argument("--uv-size", type=int, help="position map side (instead of --preset)")
    prep.add_argument("--scale", type=float, default=defaults.image_scale, help="training size / image size")
    prep.add_argument(
        "--depth",
        nargs="+",
        default=[defaults.depth],
        metavar="MODE",
        help="auto (import when SUBJECT/mvs_depth exists, else mesh; the default), "
        "import [DIR] (MVS depth per camera, .exr or .npz, or COLMAP dense workspaces DIR/SEQ/FRAME; "
        "default SUBJECT/mvs_depth), stereo (multi-view stereo from the photos around the tracked mesh), "
        "mesh (the tracked mesh rendered: a weak fallback without mouth interior or hair), none",
    )
    prep.add_argument(
        "--depth-scale",
        type=float,
        default=defaults.depth_scale,
        help="multiplies imported depth to give mm (1000 for metres; 1 for COLMAP run with KRT's mm)",
    )
    prep.add_argument("--mouth-mask", help="UV-space PNG of mouth texels (default: derived)")
    prep.add_argument("--stats-list", help="frames for the statistics (default: the split's train frames)")
    prep.add_argument("--shard", help="I/N: this process's part (default RANK/WORLD_SIZE, or all)")
    prep.add_argument("--workers", type=int, default=1, help="processes on this machine")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(run=_cmd_preprocess)

    split = sub.add_parser(
        "split", help="write SUBJECT/splits/ (train and test frames, camera split) by a named protocol"
    )
    split.add_argument("subject", help="subject directory (Multiface layout) without splits/")
    split.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=DEFAULT_PROTOCOL,
        help="npva-paper (the authors' held-out Multiface sequences, every third frame), generic (the "
        "options below), auto (npva-paper when the subject has those sequences, else generic; the split "
        "used without splits/)",
    )
    split.add_argument("--test-sequences", nargs="+", default=[], metavar="SEQ", help="generic: held out")
    split.add_argument(
        "--test-fraction",
        type=float,
        default=GENERIC_TEST_FRACTION,
        help="generic: share of sequences held out when none are named (spread over their sorted names)",
    )
    split.add_argument(
        "--test-cameras", nargs="+", default=[], metavar="NAME", help="generic: cameras held out of training"
    )
    split.add_argument("--every", type=int, default=1, help="generic: every N-th frame of each sequence")
    split.set_defaults(run=_cmd_split)

    train = sub.add_parser(
        "train",
        help="train an avatar of a preprocessed subject (resumes RUN_DIR); under torchrun on several GPUs",
        epilog=SETTINGS_EPILOG,
        formatter_class=_SettingsListFormatter,
    )
    train.add_argument("subject", help="subject directory (Multiface layout), preprocessed")
    train.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="run directory; an existing run resumes"
    )
    train.add_argument("--gendir", help="preprocessing output (default SUBJECT/gendir)")
    train.add_argument(
        "--preset",
        choices=("tiny", "demo", "full"),
        help="named settings (default: the run's own when resuming, else the preset the gendir was "
        "preprocessed for, else full, the published ones)",
    )
    train.add_argument("--config", metavar="FILE", help="YAML settings laid over the preset")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.lr=5e-4 --set data.cameras=400029 (repeatable)",
    )
    train.add_argument("--view", action="store_true", help="watch the training in the browser (npva view)")
    train.add_argument(
        "--view-every", type=int, default=200, metavar="N", help="--view: newest weights every N steps"
    )
    _add_server_arguments(train)
    train.set_defaults(run=_cmd_train)

    render = sub.add_parser("render", help="render a list of frames: images, depth, normals, meshes, points")
    _add_checkpoint_arguments(render)
    render.add_argument(
        "--img-list",
        default="test",
        metavar="FILE",
        help='"<seq> <frame>" lines, or a split name (default test: the held-out frames)',
    )
    render.add_argument(
        "--cameras", nargs="+", default=[], metavar="NAME", help="camera names, test or train (default all)"
    )
    render.add_argument("--full", action="store_true", help="render every pixel, not only the covered ones")
    render.add_argument("--preview", action="store_true", help="images only (no arrays, meshes, points)")
    render.add_argument("--out", metavar="DIR", help="output directory (default RUN_DIR/render)")
    render.set_defaults(run=_cmd_render)

    video = sub.add_parser("video", help="replay a list of frames as an MP4 (fixed camera or orbit)")
    _add_checkpoint_arguments(video)
    video.add_argument(
        "--img-list",
        default="test",
        metavar="FILE",
        help='"<seq> <frame>" lines in order, or a split name (default test: the held-out frames)',
    )
    video.add_argument("--camera", metavar="NAME", help="fixed camera (default 400029, else KRT's first)")
    video.add_argument(
        "--orbit", action="store_true", help="swing around the head (from --camera's position and intrinsics)"
    )
    video.add_argument("--orbit-degrees", type=float, default=30.0, help="swing amplitude, +- degrees")
    video.add_argument("--prmesh", action="store_true", help="the shaded tracked mesh beside the render")
    video.add_argument("--fps", type=int, default=30)
    video.add_argument("--out", metavar="FILE.mp4", help="default RUN_DIR/video/<seq>.mp4")
    video.set_defaults(run=_cmd_video)

    view = sub.add_parser(
        "view", help="look at an avatar in the browser: free camera, timeline, depth, normals, points, photos"
    )
    view.add_argument("checkpoint", help="checkpoint file, or a run directory (its newest checkpoint)")
    view.add_argument("--subject", help="subject directory (default: the one trained on)")
    view.add_argument("--gendir", help="preprocessing output (default: the one trained on)")
    view.add_argument("--device", choices=("cpu", "cuda"), help="default cuda when available")
    view.add_argument("--out", metavar="DIR", help="screenshots and turntables (default RUN_DIR/view)")
    _add_server_arguments(view)
    view.set_defaults(run=_cmd_view)

    metrics = sub.add_parser("metrics", help="PSNR / SSIM / LPIPS under a named protocol, CSV + JSON")
    _add_checkpoint_arguments(metrics)
    metrics.add_argument(
        "--img-list",
        default="test",
        metavar="FILE",
        help='"<seq> <frame>" lines, or a split name (default test: the held-out frames)',
    )
    metrics.add_argument(
        "--protocol",
        choices=("standard", "npva-legacy"),
        default="standard",
        help="standard (per-image means in image, mask and mouth regions) or npva-legacy (the published "
        "script: camera 400029, zeroed outside coverage AND mask, PSNR of the mean MSE)",
    )
    metrics.add_argument(
        "--cameras", nargs="+", default=[], metavar="NAME", help="camera names, test or train (default all)"
    )
    metrics.add_argument(
        "--baseline", choices=("mesh",), help="also score the tracked mesh textured with its average texture"
    )
    metrics.add_argument(
        "--lpips-weights",
        nargs="+",
        metavar="FILE",
        help="LPIPS-VGG weight files (default NPVA_LPIPS_WEIGHTS; without any, LPIPS is unavailable)",
    )
    metrics.add_argument("--out", metavar="DIR", help="output directory (default RUN_DIR/metrics/PROTOCOL)")
    metrics.set_defaults(run=_cmd_metrics)

    demo = sub.add_parser(
        "demo", help="synth, preprocess, train, measure, render and make a video of the synthetic subject"
    )
    demo.add_argument("--preset", choices=("demo", "tiny"), default="demo", help="size (tiny: seconds)")
    demo.add_argument("--out", default="demo_out", help="output directory; a re-run continues it")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic subject")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_cmd_demo)
    return parser


def describe_os_error(exc: OSError) -> str:
    """One line naming the file(s) of an OSError and the cause."""
    cause = exc.strerror or str(exc)
    if exc.filename is None:
        return cause
    names = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{names}: {cause}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NpvaError as exc:
        print(f"npva {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"npva {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_SYSTEM
    except KeyboardInterrupt:
        print(f"npva {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
