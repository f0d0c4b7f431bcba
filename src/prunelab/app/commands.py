"""What each `prunelab` command does: a few lines that call the steps and print the result.

Imports are inside the functions so that `prunelab --help` and argument errors answer
without importing torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import PrunelabError


def check_out(*paths: str | None) -> None:
    """Fail before working if an output file cannot be written (or is an existing folder)."""
    from ..fileio import ensure_writable

    for path in paths:
        if path is not None:
            if Path(path).is_dir():
                raise PrunelabError(f"{path} is a directory; expected a file path")
            ensure_writable(Path(path).parent / "_")


def check_out_dir(path: str | None) -> None:
    """Fail before working if an output folder cannot be made (or exists as a file)."""
    from ..fileio import ensure_writable

    if path is not None:
        if Path(path).exists() and not Path(path).is_dir():
            raise PrunelabError(f"{path} exists and is a file; expected a folder")
        ensure_writable(Path(path) / "_")


def device(args: argparse.Namespace):
    from ..train import resolve_device

    return resolve_device(args.device)


def load_args(args: argparse.Namespace) -> dict[str, Any]:
    """How to rebuild the checkpoint's model: --model/--model-arg when given."""
    from ..models import parse_model_args

    return {
        "cache": args.cache_dir,
        "model": getattr(args, "model", None),
        "model_args": parse_model_args(getattr(args, "model_arg", None)) or None,
        "allow_nonfinite": getattr(args, "allow_nonfinite", False),
    }


def load(args: argparse.Namespace):
    from ..models import load_model

    return load_model(args.checkpoint, **load_args(args))


def splits(args: argparse.Namespace, need_val: bool = True):
    from .steps import load_splits

    return load_splits(
        args.data_dir,
        args.cache_dir,
        val_size=args.val_size if need_val else 0,
        seed=args.seed,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        image_size=args.image_size,
        val_fraction=args.val_fraction if need_val else None,
        channels=args.channels,
    )


def train_config(args: argparse.Namespace, keep_best: bool = False):
    from ..train import TrainConfig

    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=not args.no_nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        augment=not args.no_augment,
        bf16=args.bf16,
        seed=args.seed,
        keep_best=keep_best,
    )
    cfg.validate()
    return cfg


def read_plan(path: str) -> Any:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrunelabError(f"plan {path}: cannot read it as JSON ({e})") from None
    if isinstance(plan, dict) and "plan" in plan:
        plan = plan["plan"]
    if not isinstance(plan, dict | float | int) or isinstance(plan, bool):
        raise PrunelabError(
            f"plan {path}: expected a JSON object mapping layer names to sparsities"
        )
    return plan


# ---------- commands ----------


def distributed(cmd):
    """Under torchrun (WORLD_SIZE > 1): check --device, join the process group (NCCL on GPUs,
    gloo on the CPU), run on this rank's device (LOCAL_RANK picks the GPU), print only on
    rank 0, and leave the group afterwards. Otherwise run `cmd` unchanged."""
    import contextlib
    import functools
    import io

    @functools.wraps(cmd)
    def wrapped(args: argparse.Namespace) -> int:
        from ..distributed import cleanup, init_from_env, is_main, launched_by_torchrun

        if not launched_by_torchrun():
            return cmd(args)
        device(args)  # refuse a bad or unavailable --device before joining
        args.device = str(init_from_env(args.device)[2])
        quiet = contextlib.nullcontext() if is_main() else contextlib.redirect_stdout(io.StringIO())
        try:
            with quiet:
                return cmd(args)
        finally:
            cleanup()

    return wrapped


@distributed
def train(args: argparse.Namespace) -> int:
    from ..models import parse_model_args
    from .steps import train_dense

    check_out(args.out)
    cfg, dev, data = train_config(args), device(args), splits(args)
    model_args = parse_model_args(args.model_arg)
    if args.model == "vgg" and "width" not in model_args:
        model_args["width"] = args.width
    _, meta = train_dense(
        data,
        args.model,
        cfg,
        args.out,
        device=dev,
        resume=args.resume,
        progress=not args.no_progress,
        model_args=model_args,
        normalize=args.normalize,
    )
    print(
        f"test accuracy {meta['test_accuracy']:.4f} after {cfg.epochs} epochs "
        f"({meta['seconds']:.0f} s); saved {args.out}"
    )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..metrics import format_metrics
    from ..pruning import sparsity_report
    from .report import plot_confusion
    from .steps import evaluate_on

    check_out(args.json, args.confusion)
    dev = device(args)
    model, _ = load(args)
    data = splits(args, need_val=args.split == "val")
    m = evaluate_on(
        model,
        data,
        args.split,
        device=dev,
        bf16=args.bf16,
        fold_bn=not args.no_fold_bn,
        progress=not args.no_progress,
    )
    m.pop("predictions")
    m.update(sparsity=sparsity_report(model)["prunable_sparsity"], split=args.split)
    m["classes"] = data.classes
    print(format_metrics(m, data.classes))
    print(f"\n{m['num_images']} {args.split} images; conv-weight sparsity {m['sparsity']:.4f}")
    if args.json:
        write_json(args.json, m)
    if args.confusion:
        title = f"{Path(args.checkpoint).name}: accuracy {m['accuracy']:.4f}"
        plot_confusion(m["confusion_matrix"], data.classes, args.confusion, title)
    return 0


def sparsity(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..pruning import format_sparsity_table, sparsity_report

    check_out(args.json)
    model, _ = load(args)
    rep = sparsity_report(model, scope=args.scope)
    print(format_sparsity_table(rep))
    if args.json:
        write_json(args.json, rep)
    return 0


def prune(args: argparse.Namespace) -> int:
    from ..pruning import format_sparsity_table, sparsity_report
    from .steps import prune_checkpoint

    if (args.sparsity is None) == (args.plan is None):
        raise PrunelabError("give exactly one of --sparsity S or --plan plan.json")
    check_out(args.out)
    plan = read_plan(args.plan) if args.plan else args.sparsity
    model, _ = prune_checkpoint(args.checkpoint, args.out, plan, args.scope, **load_args(args))
    print(format_sparsity_table(sparsity_report(model, scope=args.scope)))
    print(f"saved {args.out}")
    return 0


def sensitivity(args: argparse.Namespace) -> int:
    from .steps import scan_to_folder

    check_out_dir(args.out)
    dev = device(args)
    model, _ = load(args)
    x, y = splits(args, need_val=args.split == "val").split(args.split)
    res = scan_to_folder(
        model,
        x,
        y,
        args.out,
        extra={"split": args.split},
        plots=("sensitivity", "layer_params", "weights"),
        sparsities=args.sparsities,
        scope=args.scope,
        device=dev,
        bf16=args.bf16,
        fold_bn=not args.no_fold_bn,
        progress=not args.no_progress,
    )
    print(f"dense accuracy {res['dense_accuracy']:.4f} on {args.split} ({len(y)} images)")
    for name, row in res["layers"].items():
        print(f"{name:28s} " + " ".join(f"{a:.3f}" for a in row["accuracy"]))
    print(f"wrote {args.out}/sensitivity.{{json,csv,png}} in {res['seconds']:.1f} s")
    return 0


@distributed
def finetune(args: argparse.Namespace) -> int:
    from .report import plot_curves
    from .steps import finetune_checkpoint

    check_out(args.out)
    if args.sparsity is not None and args.plan is not None:
        raise PrunelabError("give at most one of --sparsity S or --plan plan.json")
    dev, cfg = device(args), train_config(args, keep_best=True)
    target = read_plan(args.plan) if args.plan else args.sparsity
    gradual = None
    if args.prune_schedule == "gradual":
        gradual = {
            "initial_sparsity": args.initial_sparsity,
            "prune_every": args.prune_every,
            "prune_steps_fraction": args.prune_steps_fraction,
        }
    _, _, res, sp = finetune_checkpoint(
        args.checkpoint,
        args.out,
        lambda: splits(args),
        cfg,
        target=target,
        scope=args.scope,
        gradual=gradual,
        resume=args.resume,
        device=dev,
        progress=not args.no_progress,
        **load_args(args),
    )
    out = Path(args.out)
    plot_curves({out.stem: res.history}, out.with_suffix(".png"), title=f"fine-tuning {out.name}")
    print(
        f"test accuracy {sp['test_accuracy']:.4f}; sparsity {sp['sparsity_before']:.4f} before, "
        f"{sp['sparsity_after']:.4f} after; saved {out}"
    )
    return 0


def plan(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..plan import format_plan_table, global_plan, sensitivity_plan

    check_out(args.out)
    scan = None
    if args.scan:
        try:
            scan = json.loads(Path(args.scan).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PrunelabError(f"scan {args.scan}: cannot read it as JSON ({e})") from None
    model, _ = load(args)
    if args.global_:
        if args.cap or args.max_drop is not None:
            raise PrunelabError("--cap and --max-drop apply to the sensitivity plan, not --global")
        result = global_plan(model, args.sparsity, scope=args.scope, scan=scan)
    elif scan is None:
        raise PrunelabError("a sensitivity plan needs --scan SENSITIVITY_JSON (or use --global)")
    else:
        result = sensitivity_plan(
            scan,
            model,
            args.sparsity,
            scope=args.scope,
            caps=dict(args.cap or []),
            default_cap=args.default_cap,
            first_last_cap=args.first_last_cap,
            max_drop=None if args.max_drop is None else args.max_drop / 100,
        )
    print(format_plan_table(result, model))
    write_json(args.out, result)
    print(
        f"wrote {args.out}; apply it with: prunelab prune {args.checkpoint} "
        f"--plan {args.out} --scope {args.scope} --out PRUNED.pth"
    )
    return 0


def export(args: argparse.Namespace) -> int:
    from ..export import export_compressed, format_size_table, size_table

    check_out(args.out)
    model, _ = load(args)
    info = export_compressed(
        model, args.out, fp16=args.fp16, arch=getattr(model, "prunelab_arch", None)
    )
    print(format_size_table(size_table(args.dense, args.checkpoint, args.out, model)))
    print(f"wrote {args.out} ({info['bytes']:,} bytes)")
    return 0


def run(args: argparse.Namespace) -> int:
    from .recipes import load_recipe
    from .run import run_recipe
    from .shipped import find_recipe

    recipe = load_recipe(find_recipe(args.recipe))
    check_out_dir(args.out)
    run_recipe(
        recipe,
        data_dir=args.data_dir,
        out=args.out,
        cache=args.cache_dir,
        device=device(args),
        progress=not args.no_progress,
        fresh=args.fresh,
    )
    return 0


def bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_argv)
