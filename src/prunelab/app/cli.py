"""The `prunelab` command: parses arguments and calls the library. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import PrunelabError
from .argtypes import (
    Parser,
    cap_item,
    count,
    existing_file,
    positive,
    sparsity,
    sparsity_list,
)

DEFAULT_DATA = "../shared/data/cifar10-jpeg"


# ---------- shared option groups ----------


def _data_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA,
        help="CIFAR-10 as cifar-10-python.tar.gz / cifar-10-batches-py or an image-folder "
        f"tree train/<class>/*, test/<class>/* (default: {DEFAULT_DATA})",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="downloads and decoded data (default: $PRUNELAB_CACHE or ~/.cache/prunelab)",
    )
    p.add_argument(
        "--val-size",
        type=count,
        default=5000,
        help="training images held out for validation (default 5000)",
    )
    p.add_argument(
        "--train-subset",
        type=count,
        default=None,
        help="use only this many training images (quick experiments)",
    )
    p.add_argument(
        "--test-subset",
        type=count,
        default=None,
        help="use only this many test images (quick experiments)",
    )


def _run_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast (fast on AMX CPUs and GPUs; fp32 is the default)",
    )
    p.add_argument("--seed", type=count, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _fold_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="run BatchNorm as a separate layer (by default it is folded into the conv: "
        "the same model to fp32 rounding, 9-17%% faster on CPU)",
    )


def _train_opts(
    p: argparse.ArgumentParser, epochs: int, lr: float, optimizer: str, schedule: str
) -> None:
    p.add_argument("--epochs", type=count, default=epochs, help=f"(default {epochs})")
    p.add_argument("--batch-size", type=int, default=256, help="(default 256)")
    p.add_argument(
        "--optimizer",
        choices=["sgd", "adam", "adamw"],
        default=optimizer,
        help=f"(default {optimizer})",
    )
    p.add_argument("--lr", type=positive, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="(default 5e-4)")
    p.add_argument(
        "--schedule",
        choices=["onecycle", "cosine", "constant"],
        default=schedule,
        help=f"learning-rate schedule (default {schedule})",
    )
    p.add_argument("--label-smoothing", type=float, default=0.1, help="(default 0.1)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the state saved beside --out by an interrupted run",
    )


def _config(args: argparse.Namespace, keep_best: bool = False):
    from ..train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=not args.no_nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        bf16=args.bf16,
        seed=args.seed,
        keep_best=keep_best,
    )


def _splits(args: argparse.Namespace):
    from .steps import load_splits

    return load_splits(
        args.data_dir,
        args.cache_dir,
        val_size=args.val_size,
        seed=args.seed,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
    )


def _device(args: argparse.Namespace):
    from ..train import resolve_device

    return resolve_device(args.device)


def _distributed(cmd):
    """Under torchrun (WORLD_SIZE > 1): check --device, join the process group (NCCL on GPUs,
    gloo on the CPU), run on this rank's device (LOCAL_RANK picks the GPU), print only on
    rank 0, and leave the group afterwards. Otherwise run `cmd` unchanged."""
    import contextlib
    import functools
    import io

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        from ..distributed import cleanup, init_from_env, is_main, launched_by_torchrun

        if not launched_by_torchrun():
            return cmd(args)
        _device(args)  # refuse a bad or unavailable --device before joining
        args.device = str(init_from_env(args.device)[2])
        quiet = contextlib.nullcontext() if is_main() else contextlib.redirect_stdout(io.StringIO())
        try:
            with quiet:
                return cmd(args)
        finally:
            cleanup()

    return run


def _check_out(path: str | None) -> None:
    """Fail before working if the output location cannot be written."""
    if path is None:
        return
    from ..fileio import ensure_writable

    ensure_writable(Path(path))


# ---------- commands ----------


@_distributed
def cmd_train(args: argparse.Namespace) -> int:
    from .steps import train_dense

    _check_out(args.out)
    device = _device(args)
    cfg = _config(args)
    cfg.validate()
    splits = _splits(args)
    _, meta = train_dense(
        splits,
        args.width,
        cfg,
        args.out,
        device=device,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(
        f"test accuracy {meta['test_accuracy']:.4f} after {cfg.epochs} epochs "
        f"({meta['seconds']:.0f} s); saved {args.out}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..metrics import format_metrics
    from ..models import load_model
    from ..pruning import sparsity_report
    from ..train import evaluate
    from .report import plot_confusion

    _check_out(args.json)
    _check_out(args.confusion)
    device = _device(args)
    model, _ = load_model(args.checkpoint, args.cache_dir)
    splits = _splits(args)
    x, y = splits.split(args.split)
    m = evaluate(
        model,
        x,
        y,
        len(splits.classes),
        device=device,
        bf16=args.bf16,
        fold_bn=not args.no_fold_bn,
        progress=not args.no_progress,
    )
    m.pop("predictions")
    m["sparsity"] = sparsity_report(model)["prunable_sparsity"]
    m["split"] = args.split
    m["classes"] = splits.classes
    print(format_metrics(m, splits.classes))
    print(f"\n{m['num_images']} {args.split} images; conv-weight sparsity {m['sparsity']:.4f}")
    if args.json:
        from ..fileio import write_json

        write_json(args.json, m)
    if args.confusion:
        plot_confusion(
            m["confusion_matrix"],
            splits.classes,
            args.confusion,
            f"{Path(args.checkpoint).name}: accuracy {m['accuracy']:.4f}",
        )
    return 0


def cmd_sparsity(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..pruning import format_sparsity_table, sparsity_report

    model, _ = load_model(args.checkpoint, args.cache_dir)
    rep = sparsity_report(model, scope=args.scope)
    print(format_sparsity_table(rep))
    if args.json:
        from ..fileio import write_json

        write_json(args.json, rep)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from ..models import load_model, save_checkpoint
    from ..pruning import format_sparsity_table, sparsity_report
    from .steps import prune

    if (args.sparsity is None) == (args.plan is None):
        raise PrunelabError("give exactly one of --sparsity S or --plan plan.json")
    _check_out(args.out)
    plan: Any = args.sparsity
    if args.plan:
        plan = _read_plan(args.plan)
    model, ckpt = load_model(args.checkpoint, args.cache_dir)
    pruner = prune(model, plan, scope=args.scope)
    rep = sparsity_report(model, scope=args.scope)
    print(format_sparsity_table(rep))
    meta = dict(ckpt.get("meta", {}))
    meta.update(
        {
            "produced_by": "prunelab prune",
            "parent": str(args.checkpoint),
            "plan": plan,
            "scope": args.scope,
            "sparsity": rep["prunable_sparsity"],
        }
    )
    save_checkpoint(args.out, model, meta, masks=pruner.masks)
    print(f"saved {args.out}")
    return 0


def _read_plan(path: str) -> Any:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PrunelabError(f"plan {path}: cannot read it as JSON ({e})") from None
    if isinstance(plan, dict) and "plan" in plan:
        plan = plan["plan"]
    if not isinstance(plan, dict | float | int):
        raise PrunelabError(
            f"plan {path}: expected a JSON object mapping layer names to sparsities"
        )
    return plan


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..sensitivity import (
        plot_layer_params,
        plot_sensitivity,
        plot_weight_histograms,
        sensitivity_scan,
        write_scan,
    )

    _check_out(args.out)
    device = _device(args)
    model, _ = load_model(args.checkpoint, args.cache_dir)
    splits = _splits(args)
    x, y = splits.split(args.split)
    res = sensitivity_scan(
        model,
        x,
        y,
        sparsities=args.sparsities,
        scope=args.scope,
        device=device,
        bf16=args.bf16,
        fold_bn=not args.no_fold_bn,
        progress=not args.no_progress,
    )
    res["split"] = args.split
    out = Path(args.out)
    write_scan(res, out / "sensitivity.json", out / "sensitivity.csv")
    plot_sensitivity(res, out / "sensitivity.png")
    plot_layer_params(model, out / "layer_params.png")
    plot_weight_histograms(model, out / "weight_histograms.png")
    print(f"dense accuracy {res['dense_accuracy']:.4f} on {args.split} ({len(y)} images)")
    for name, row in res["layers"].items():
        accs = " ".join(f"{a:.3f}" for a in row["accuracy"])
        print(f"{name:28s} {accs}")
    print(f"wrote {out}/sensitivity.{{json,csv,png}} in {res['seconds']:.1f} s")
    return 0


@_distributed
def cmd_finetune(args: argparse.Namespace) -> int:
    from ..models import load_model, save_checkpoint
    from ..pruning import Pruner, sparsity_report
    from .steps import finetune, state_path_for

    _check_out(args.out)
    device = _device(args)
    cfg = _config(args, keep_best=True)
    cfg.validate()
    model, ckpt = load_model(args.checkpoint, args.cache_dir)
    if args.sparsity is not None and args.plan is not None:
        raise PrunelabError("give at most one of --sparsity S or --plan plan.json")
    target = _read_plan(args.plan) if args.plan else args.sparsity
    hook = None
    if args.prune_schedule == "gradual":
        pruner, hook = _gradual_pruner(args, model, ckpt, target)
        cfg.keep_best = False  # earlier epochs have other masks: keep the final one
    elif ckpt.get("masks"):
        pruner = Pruner.from_masks(model, ckpt["masks"])
    elif target is not None:
        pruner = Pruner(model, target, scope=args.scope)
        pruner.apply()
    else:
        raise PrunelabError(f"{args.checkpoint} holds no masks: prune it first or give --sparsity")
    splits = _splits(args)
    out = Path(args.out)
    res, sp = finetune(
        model,
        pruner,
        splits,
        cfg,
        out=out,
        resume=args.resume,
        device=device,
        progress=not args.no_progress,
        step_hook=hook,
    )
    from ..train import evaluate

    test = evaluate(model, splits.test_x, splits.test_y, len(splits.classes), device=device)
    meta = dict(ckpt.get("meta", {}))
    meta.update(
        {
            "produced_by": "prunelab finetune",
            "parent": str(args.checkpoint),
            "test_accuracy": test["accuracy"],
            "history": res.history,
            "best_epoch": res.best_epoch,
            **sp,
            "sparsity": sparsity_report(model)["prunable_sparsity"],
        }
    )
    save_checkpoint(out, model, meta, masks=pruner.masks)
    from .report import plot_curves

    plot_curves({out.stem: res.history}, out.with_suffix(".png"), title=f"fine-tuning {out.name}")
    state_path_for(out).unlink(missing_ok=True)  # every torchrun rank gets here: no race
    print(
        f"test accuracy {test['accuracy']:.4f}; sparsity {sp['sparsity_before']:.4f} before, "
        f"{sp['sparsity_after']:.4f} after; saved {out}"
    )
    return 0


def _gradual_pruner(args: argparse.Namespace, model: Any, ckpt: dict, target: Any):
    """A GradualPruner for `finetune --prune-schedule gradual`, and its step hook."""
    from ..gradual import GradualPruner

    if ckpt.get("masks"):
        raise PrunelabError(
            f"{args.checkpoint} already holds masks: gradual pruning starts from a dense checkpoint"
        )
    if target is None:
        raise PrunelabError(
            "--prune-schedule gradual needs the final sparsity: --sparsity S or --plan plan.json"
        )
    pruner = GradualPruner(
        model,
        target,
        scope=args.scope,
        initial_sparsity=args.initial_sparsity,
        prune_every=args.prune_every,
        prune_steps_fraction=args.prune_steps_fraction,
    )
    return pruner, pruner.hook


def cmd_plan(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..models import load_model
    from ..plan import format_plan_table, global_plan, sensitivity_plan

    _check_out(args.out)
    scan = None
    if args.scan:
        try:
            scan = json.loads(Path(args.scan).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PrunelabError(f"scan {args.scan}: cannot read it as JSON ({e})") from None
    model, _ = load_model(args.checkpoint, args.cache_dir)
    if args.global_:
        if args.cap or args.max_drop is not None:
            raise PrunelabError("--cap and --max-drop apply to the sensitivity plan, not --global")
        plan = global_plan(model, args.target, scope=args.scope, scan=scan)
    else:
        if scan is None:
            raise PrunelabError(
                "a sensitivity plan needs --scan SENSITIVITY_JSON (or use --global)"
            )
        caps = dict(args.cap or [])
        plan = sensitivity_plan(
            scan,
            model,
            args.target,
            scope=args.scope,
            caps=caps,
            default_cap=args.default_cap,
            first_last_cap=args.first_last_cap,
            max_drop=args.max_drop,
        )
    print(format_plan_table(plan, model))
    write_json(args.out, plan)
    print(
        f"wrote {args.out}; apply it with: prunelab prune --checkpoint {args.checkpoint} "
        f"--plan {args.out} --scope {args.scope} --out PRUNED.pth"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_compressed, format_size_table, size_table
    from ..models import load_model

    _check_out(args.out)
    model, _ = load_model(args.checkpoint, args.cache_dir)
    info = export_compressed(model, args.out, fp16=args.fp16)
    print(format_size_table(size_table(args.dense, args.checkpoint, args.out, model)))
    print(f"wrote {args.out} ({info['bytes']:,} bytes)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .recipes import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    _check_out(args.out)
    run_recipe(
        recipe,
        data_dir=args.data_dir,
        out=args.out,
        cache=args.cache_dir,
        device=_device(args),
        progress=not args.no_progress,
        fresh=args.fresh,
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_argv)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="prunelab",
        description="Fine-grained magnitude pruning of CNNs, with the "
        "VGG/CIFAR-10 pruning study built in. Start with: prunelab run recipes/quick.toml",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument(
        "--threads",
        type=count,
        default=None,
        help="CPU threads for torch (default: torch's choice, one per core); on a busy "
        "machine 1 can be faster than 2",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("train", help="train a dense VGG from scratch")
    _data_opts(s)
    _run_opts(s)
    _train_opts(s, epochs=10, lr=0.1, optimizer="sgd", schedule="onecycle")
    s.add_argument("--width", type=positive, default=0.25, help="channel multiplier (default 0.25)")
    s.add_argument("--out", default="checkpoints/vgg.pth", help="checkpoint to write")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="accuracy, precision, recall, specificity, F1 of a model")
    s.add_argument("--checkpoint", required=True, type=existing_file, help="file or URL")
    _data_opts(s)
    _run_opts(s)
    s.add_argument("--split", choices=["test", "val"], default="test")
    s.add_argument("--json", default=None, help="write the metrics here")
    s.add_argument("--confusion", default=None, help="draw the confusion matrix to this PNG")
    _fold_opt(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sparsity", help="per-layer sparsity, MACs and size table of a checkpoint")
    s.add_argument("checkpoint", type=existing_file)
    s.add_argument("--scope", choices=["conv", "all"], default="conv")
    s.add_argument("--json", default=None, help="write the report here")
    s.add_argument("--cache-dir", default=None)
    s.set_defaults(func=cmd_sparsity)

    s = sub.add_parser("prune", help="magnitude-prune a checkpoint (uniform sparsity or a plan)")
    s.add_argument("--checkpoint", required=True, type=existing_file)
    s.add_argument("--sparsity", type=sparsity, default=None, help="uniform sparsity in [0, 1]")
    s.add_argument(
        "--plan",
        type=existing_file,
        default=None,
        help="JSON mapping layer names to sparsities (from `prunelab plan`)",
    )
    s.add_argument(
        "--scope",
        choices=["conv", "all"],
        default="conv",
        help="conv: every Conv2d weight (the study); all: Conv2d and Linear",
    )
    s.add_argument("--out", required=True, help="pruned checkpoint to write (masks included)")
    s.add_argument("--cache-dir", default=None)
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("sensitivity", help="per-layer sensitivity scan (CSV, JSON, figures)")
    s.add_argument("--checkpoint", required=True, type=existing_file)
    _data_opts(s)
    _run_opts(s)
    s.add_argument(
        "--sparsities",
        type=sparsity_list,
        default=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="comma-separated (default 0.4,...,0.9)",
    )
    s.add_argument(
        "--split",
        choices=["test", "val"],
        default="val",
        help="val (held out of training, the better practice; default) or test "
        "(what the study did)",
    )
    s.add_argument("--scope", choices=["conv", "all"], default="conv")
    s.add_argument("--out", default="runs/sensitivity", help="folder for the outputs")
    _fold_opt(s)
    s.set_defaults(func=cmd_sensitivity)

    s = sub.add_parser("finetune", help="fine-tune a pruned model; pruned weights stay zero")
    s.add_argument(
        "--checkpoint",
        required=True,
        type=existing_file,
        help="a pruned checkpoint (with masks), or a dense one with --sparsity",
    )
    s.add_argument("--sparsity", type=sparsity, default=None)
    s.add_argument("--scope", choices=["conv", "all"], default="conv")
    _data_opts(s)
    _run_opts(s)
    _train_opts(s, epochs=5, lr=0.01, optimizer="sgd", schedule="cosine")
    s.add_argument(
        "--plan",
        type=existing_file,
        default=None,
        help="per-layer final sparsities (from `prunelab plan`) instead of --sparsity",
    )
    s.add_argument(
        "--prune-schedule",
        choices=["oneshot", "gradual"],
        default="oneshot",
        help="oneshot: prune, then fine-tune (default); gradual: start dense and "
        "raise sparsity along a cubic schedule while training (Zhu & Gupta)",
    )
    s.add_argument(
        "--initial-sparsity",
        type=sparsity,
        default=0.0,
        help="gradual: overall sparsity at the first step (default 0)",
    )
    s.add_argument(
        "--prune-every",
        type=int,
        default=100,
        help="gradual: optimizer steps between mask updates (default 100)",
    )
    s.add_argument(
        "--prune-steps-fraction",
        type=sparsity,
        default=0.5,
        help="gradual: fraction of all steps spent pruning; then the masks are "
        "frozen (default 0.5)",
    )
    s.add_argument("--out", required=True, help="fine-tuned checkpoint to write")
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser(
        "plan", help="per-layer sparsities reaching a target from a sensitivity scan"
    )
    s.add_argument(
        "--scan",
        type=existing_file,
        default=None,
        help="sensitivity.json from `prunelab sensitivity` (best on the val split)",
    )
    s.add_argument("--checkpoint", required=True, type=existing_file)
    s.add_argument(
        "--target",
        required=True,
        type=sparsity,
        help="overall sparsity of the scope's weights, e.g. 0.8",
    )
    s.add_argument(
        "--cap",
        type=cap_item,
        action="append",
        default=None,
        metavar="LAYER=CAP",
        help="most a layer may be pruned (repeatable)",
    )
    s.add_argument("--default-cap", type=sparsity, default=0.95, help="(default 0.95)")
    s.add_argument(
        "--first-last-cap",
        type=sparsity,
        default=0.8,
        help="cap of the first and last layer of the scope (default 0.8)",
    )
    s.add_argument(
        "--max-drop",
        type=sparsity,
        default=None,
        help="most accuracy a layer may lose by the scan, e.g. 0.02 = 2 points",
    )
    s.add_argument(
        "--global",
        dest="global_",
        action="store_true",
        help="one magnitude threshold over the scope instead (for comparison)",
    )
    s.add_argument("--scope", choices=["conv", "all"], default="conv")
    s.add_argument("--out", default="plan.json", help="plan JSON for `prunelab prune --plan`")
    s.add_argument("--cache-dir", default=None)
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("export", help="write a pruned model compactly; print real file sizes")
    s.add_argument("checkpoint", type=existing_file)
    s.add_argument("--out", required=True, help="compressed model to write, e.g. model.plz")
    s.add_argument("--fp16", action="store_true", help="store values as fp16 (lossy, half size)")
    s.add_argument(
        "--dense",
        type=existing_file,
        default=None,
        help="the dense checkpoint, for the size comparison (default: the plain "
        "state dict, which has the same size)",
    )
    s.add_argument("--cache-dir", default=None)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("run", help="run a recipe (the whole study) and write its report")
    s.add_argument("recipe", type=existing_file, help="a recipe TOML, e.g. recipes/quick.toml")
    s.add_argument("--data-dir", default=DEFAULT_DATA)
    s.add_argument("--cache-dir", default=None)
    s.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    s.add_argument("--device", default="auto")
    s.add_argument("--fresh", action="store_true", help="ignore finished steps and redo them")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_run)

    # options are bench.py's own (it imports torch, which the parser must not): see main()
    s = sub.add_parser(
        "bench",
        add_help=False,
        help="time evaluation, training and the scan against a plain PyTorch baseline "
        "(prunelab bench --help)",
    )
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.bench_argv = extra
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except PrunelabError as e:
        if args.debug:
            raise
        sys.stderr.write(f"prunelab {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("prunelab: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
