"""Command line: ``python -m dcl_teach train ...`` and ``python -m dcl_teach compare ...``.

``python -m dcl_teach`` with no arguments trains DCL on the bundled 8x8 digits on the CPU
(about half a minute) and prints its kNN accuracy next to two baselines: an untrained encoder
and raw pixels. Every field of :class:`dcl_teach.train.TrainConfig` is a flag
(``batch_size`` -> ``--batch-size``); the flags are generated from the dataclass, with the
help text each field carries, so the two cannot drift apart::

    python -m dcl_teach train --loss dcl --dataset cifar10 --batch-size 256 --epochs 200 --out runs/dcl
    python -m dcl_teach train --out runs/dcl --resume     # continue a killed run
    torchrun --nproc-per-node 4 -m dcl_teach train --dataset cifar10 --out runs/ddp
    python -m dcl_teach compare --losses infonce dcl dclw --batch-sizes 32 256 --out runs/grid
    python -m dcl_teach compare --preset colab --losses infonce dcl --batch-sizes 128 256 512

``--preset NAME`` starts from :meth:`TrainConfig.preset` (``digits``, ``cifar10``, ``colab``);
the other flags apply on top of it.

Taught in notebook 06.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dcl_teach.atomic import atomic_output, atomic_write
from dcl_teach.losses import LOSSES
from dcl_teach.models import ARCHITECTURES, NORMS
from dcl_teach.sweep import ARMS
from dcl_teach.train import (
    AMP_MODES,
    CHECKPOINT_NAME,
    PRESETS,
    CheckpointError,
    History,
    TrainConfig,
    plot_comparison,
    run_grid,
    summarize,
    train,
)

COMMANDS = ("train", "compare", "sweep")
_CHOICES = {"dataset": tuple(ARCHITECTURES), "loss": tuple(LOSSES), "amp": AMP_MODES, "norm": NORMS}
_CHOICES["arms"] = ARMS  # SweepConfig.arms
_ALIASES = {"out_dir": ("--out",)}  # extra spellings of a flag
# Short metavars for the sweep's flags; "arms" keeps one, its help lists the choices.
_METAVARS = dict(batch_sizes="B", steps_batch_sizes="B", match_steps_of="B", seeds="S", arms="ARM")


def _optional(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = f"{kind.__name__} or none"  # shown by argparse in its error messages
    return parse


def add_config_flags(parser: argparse.ArgumentParser, *, exclude: Sequence[str] = ()) -> None:
    """Add one flag per TrainConfig field; unset flags are absent from the parsed namespace.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_config_flags(p)
        >>> vars(p.parse_args(["--batch-size", "64", "--no-progress"]))
        {'batch_size': 64, 'progress': False}

    Taught in notebook 06.
    """
    _add_field_flags(parser, TrainConfig, "training configuration (TrainConfig fields)", exclude)


def _add_field_flags(parser, cls: type, title: str, exclude: Sequence[str]) -> None:
    """One flag per field of the dataclass ``cls``, with the help text the field carries.

    ``bool`` fields get ``--x/--no-x``, ``tuple[T, ...]`` fields take one or more values,
    ``T | None`` fields also take ``none``; unset flags are absent from the namespace.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a not in (type(None), Ellipsis)]
        kind = args[0] if args else hint
        flags = [f"--{f.name.replace('_', '-')}", *_ALIASES.get(f.name, ())]
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        text = f"{f.metadata.get('help', '')} (default: {default})".strip()
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            optional = type(None) in typing.get_args(hint)
            kwargs["type"] = _optional(kind) if optional else kind
            kwargs["metavar"] = _METAVARS.get(f.name, f.name.upper())
            if typing.get_origin(hint) is tuple:
                kwargs["nargs"] = "+"
            if f.name in _CHOICES:
                kwargs["choices"] = _CHOICES[f.name]
                if f.name not in _METAVARS:
                    kwargs.pop("metavar")
        group.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m dcl_teach`` parser with its ``train`` and ``compare`` sub-commands."""
    parser = argparse.ArgumentParser(
        prog="python -m dcl_teach",
        description="Train contrastive encoders with InfoNCE, DCL or DCLW and compare them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,sweep}")
    tr = sub.add_parser(
        "train",
        help="train one model (the default command)",
        usage="python -m dcl_teach [train] [-h] [--resume | --fresh] [--FIELD VALUE ...]",
        description="Train one encoder; with no flags: DCL on the bundled digits, on the CPU.",
    )
    _add_preset_flag(tr)
    add_config_flags(tr)
    _add_run_flags(tr)
    tr.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also report kNN on raw pixels and on an untrained encoder (default: on)",
    )
    cmp = sub.add_parser(
        "compare",
        help="train a loss x batch-size grid and plot it",
        usage="python -m dcl_teach compare [-h] [--losses L ...] [--batch-sizes B ...] "
        "[--out OUT] [--FIELD VALUE ...]",
        description="Train every (loss, batch size) pair and plot kNN accuracy against batch "
        "size. Each run writes to OUT/<loss>_bs<batch>; OUT gets compare.png, summary.json "
        "and summary.csv.",
    )
    cmp.add_argument(
        "--losses",
        nargs="+",
        choices=_CHOICES["loss"],
        default=["infonce", "dcl", "dclw"],
        help="losses to compare",
    )
    cmp.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=[32, 256],
        metavar="B",
        help="batch sizes to compare (default: 32 256)",
    )
    cmp.add_argument(
        "--out",
        "--out-dir",
        dest="out_dir",
        default="runs/compare",
        help="output folder (default: runs/compare)",
    )
    _add_preset_flag(cmp)
    add_config_flags(cmp, exclude=("loss", "batch_size", "out_dir"))
    _add_run_flags(cmp)
    _add_sweep_parser(sub)
    for command in sub.choices.values():  # main() reports errors in the sub-command's usage
        command.set_defaults(command_parser=command)
    return parser


def _add_sweep_parser(sub) -> None:
    from dcl_teach.sweep import SweepConfig

    sw = sub.add_parser(
        "sweep",
        help="train losses x batch sizes x seeds with controls; summarise with error bars",
        usage="python -m dcl_teach sweep [-h] [--out OUT] [--batch-sizes B ...] [--seeds S ...] "
        "[--arms A ...] [--only NAME ...] [--FIELD VALUE ...]",
        description="Train every (arm, batch size, seed) of the grid, evaluate each encoder with "
        "few-label kNN and linear probes, and write OUT/results.json, results.csv and "
        "summary.csv. Finished runs are skipped: run the same command again to resume.",
    )
    sw.add_argument(
        "--out",
        "--out-dir",
        dest="out_dir",
        default="results/digits-sweep",
        help="output folder (default: results/digits-sweep)",
    )
    sw.add_argument(
        "--only", nargs="+", metavar="NAME", help="train only these runs, e.g. dcl_bs64_seed0"
    )
    sw.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default: 1 for digits on the CPU)",
    )
    _add_field_flags(sw, SweepConfig, "the sweep (SweepConfig fields)", exclude=("base",))
    _add_preset_flag(sw)
    add_config_flags(sw, exclude=("loss", "batch_size", "seed", "out_dir", "progress"))


def _add_preset_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="start from a named TrainConfig.preset, then apply the other flags: digits (the "
        "defaults), cifar10 (a lightly-style ResNet-18 setting, 200 epochs), colab (a width-32 "
        "ResNet-18 on CIFAR-10 for a Colab T4 GPU, fp16, about 5 min a run; docs/gpu.md). "
        "Without it, --dataset cifar10 takes the cifar10 preset",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: 1 for digits on the CPU, else torch's default)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in the output folder"
    )
    group.add_argument(
        "--fresh", action="store_true", help="ignore (and overwrite) an existing checkpoint"
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig a parsed command line asks for: the preset first, then the flags.

    The preset is ``args.preset`` when the namespace has one (None or absent: the preset of
    ``--dataset``, digits by default).

    Raises:
        ValueError: a value TrainConfig rejects (the message names the field).

    Example:
        >>> args = build_parser().parse_args(["train", "--dataset", "cifar10", "--epochs", "5"])
        >>> c = config_from_args(args)
        >>> c.dataset, c.epochs, c.batch_size
        ('cifar10', 5, 256)
        >>> c = config_from_args(build_parser().parse_args(["train", "--preset", "colab"]))
        >>> c.width, c.epochs, c.amp
        (32, 10, 'fp16')
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    preset = getattr(args, "preset", None)
    if preset is None:
        return TrainConfig.for_dataset(overrides.pop("dataset", "digits"), **overrides)
    return TrainConfig.preset(preset, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcl_teach``; returns the exit status.

    Example:
        >>> main(["train", "--epochs", "0"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["train", *argv]  # `python -m dcl_teach --epochs 5` means train
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = args.command_parser  # its error() prints the sub-command's usage
    try:
        config = config_from_args(args)
    except ValueError as e:
        sub.error(str(e))
    if args.threads is not None and args.threads <= 0:
        sub.error(f"--threads must be a positive integer, got {args.threads}")
    if args.command == "sweep":
        return _sweep(config, args, sub)
    if args.command == "compare" and not (args.losses and args.batch_sizes):
        sub.error("--losses and --batch-sizes need at least one value each")
    _set_threads(config, args.threads)
    try:
        if args.command == "train":
            return _train(config, args, sub)
        return _compare(config, args, sub)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _set_threads(config: TrainConfig, threads: int | None) -> None:
    # The digits CNN is too small to gain from intra-op threads, and on a busy machine the extra
    # threads spin-wait: one thread is as fast on an idle 2-core machine and several times
    # faster on a loaded one. An explicit --threads or OMP_NUM_THREADS wins.
    if threads is None and "OMP_NUM_THREADS" not in os.environ and config.dataset == "digits":
        if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
            threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def _resume(out_dirs: Sequence[Path], args: argparse.Namespace, sub) -> bool:
    existing = [d for d in out_dirs if (d / CHECKPOINT_NAME).exists()]
    if existing and not (args.resume or args.fresh):
        sub.error(
            f"{existing[0]} already holds a checkpoint: pass --resume to continue it or --fresh "
            "to start over"
        )
    return not args.fresh


def _train(config: TrainConfig, args: argparse.Namespace, sub) -> int:
    resume = _resume([Path(config.out_dir)] if config.out_dir else [], args, sub)
    history = train(config, resume=resume)
    if not history.records:
        print("nothing to do: the run had already finished")
        return 0
    _print_run(config, history)
    if args.baselines and history.final_knn is not None:
        from dcl_teach.data import load_dataset
        from dcl_teach.evaluate import baselines
        from dcl_teach.train import resolve_device

        device = resolve_device(config.device)
        load = {"root": config.data_root, "device": device, "download": config.download}
        # The untrained encoder has the trained one's widths: width w is feature_dim 8 w.
        dim = config.feature_dim if config.width is None else 8 * config.width
        base = baselines(
            load_dataset(config.dataset, split="train", **load),
            load_dataset(config.dataset, split="test", **load),
            k=config.knn_k,
            t=config.knn_t,
            seed=config.seed,
            num_labels_per_class=config.num_labels_per_class,
            feature_dim=dim,
            norm=config.norm,
            device=device,
        )
        print(f"  untrained encoder  {100 * base['random_encoder']:5.1f} %")
        print(f"  raw pixels         {100 * base['raw_pixels']:5.1f} %")
    if config.out_dir:
        print(f"history and checkpoint in {config.out_dir}")
    return 0


def _print_run(config: TrainConfig, history: History) -> None:
    last = history.records[-1]
    bank = (
        "all training labels"
        if config.num_labels_per_class is None
        else f"{config.num_labels_per_class} labels per class"
    )
    print(
        f"{config.loss} on {config.dataset}: batch {config.batch_size}, {last['epoch']} epochs "
        f"({last['step']} steps) in {history.meta['wall_time_s']:.1f} s on {history.meta['device']}"
    )
    print(f"final loss {last['loss']:.3f}, mean q_B {last['q_b']:.3f}")
    print(f"kNN accuracy (k={config.knn_k}, t={config.knn_t}, {bank}):")
    print(f"  trained encoder    {100 * history.final_knn:5.1f} %")


def _compare(config: TrainConfig, args: argparse.Namespace, sub) -> int:
    out = Path(args.out_dir)
    dirs = [out / f"{loss}_bs{bs}" for bs in args.batch_sizes for loss in args.losses]
    resume = _resume(dirs, args, sub)
    try:
        histories = run_grid(
            config, losses=args.losses, batch_sizes=args.batch_sizes, out_dir=out, resume=resume
        )
    except ValueError as e:
        sub.error(str(e))
    rows = summarize(histories)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"base_config": dataclasses.asdict(config), "runs": rows}
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "summary.csv", table.getvalue())
    with atomic_output(out / "compare.png") as png:
        plot_comparison(histories).savefig(png, format="png", dpi=120)
    print(f"{'loss':>8} {'batch':>6} {'kNN acc':>8} {'q_B':>6}")
    for r in rows:
        acc = "-" if r["knn_acc"] is None else f"{100 * r['knn_acc']:.1f}%"
        print(f"{r['loss']:>8} {r['batch_size']:>6} {acc:>8} {r['q_b']:6.3f}")
    print(f"wrote {out / 'compare.png'}, {out / 'summary.json'}, {out / 'summary.csv'}")
    return 0


def _sweep(config: TrainConfig, args: argparse.Namespace, sub) -> int:
    from dcl_teach.sweep import SweepConfig, format_summary, run_sweep

    _set_threads(config, args.threads)
    if "epochs" not in vars(args) and config.dataset == "digits":
        config = dataclasses.replace(config, epochs=SweepConfig().base.epochs)  # 30, not 50
    try:
        names = {f.name for f in dataclasses.fields(SweepConfig)}
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()}
        fields = {k: v for k, v in given.items() if k in names}
        sweep = SweepConfig(base=dataclasses.replace(config, progress=False), **fields)
        command = " ".join(["python -m dcl_teach", *sys.argv[1:]])
        results = run_sweep(sweep, args.out_dir, only=args.only, command=command)
    except ValueError as e:
        sub.error(str(e))
    print(format_summary(results))
    print(f"wrote {Path(args.out_dir) / 'results.json'}, results.csv and summary.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
