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
        val_size=("default" if args.val_size is None else args.val_size) if need_val else 0,
        seed=args.seed,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        image_size=args.image_size,
        val_fraction=args.val_fraction if need_val else None,
        channels=args.image_channels,
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
        **(  # finetune --distill TEACHER: the teacher's weight and temperature
            {
                "distill": 0.5 if args.distill_weight is None else args.distill_weight,
                "temperature": 4.0 if args.temperature is None else args.temperature,
            }
            if getattr(args, "distill", None)
            else {}
        ),
    )
    cfg.validate()
    return cfg


def read_json_file(path: str, what: str) -> Any:
    """A JSON file the user named, or one line saying which file and why it is unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrunelabError(f"{what} {path}: cannot read it as JSON ({e})") from None


def read_plan(path: str) -> Any:
    plan = read_json_file(path, "plan")
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
    m.update(sparsity=sparsity_report(model, macs=False)["prunable_sparsity"], split=args.split)
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
    from ..accounting import count_macs, count_params
    from ..fileio import write_json
    from ..pruning import format_sparsity_table, sparsity_report

    check_out(args.json)
    model, _ = load(args)
    rep = sparsity_report(model, scope=args.scope)
    # whole-model totals, traced on the model's own input size (conv, linear, matmul MACs)
    rep["params"], rep["macs"] = count_params(model), count_macs(model)["total"]
    print(format_sparsity_table(rep))
    print(f"whole model: {rep['params']:,} parameters, {rep['macs']:,} MACs per input")
    if args.json:
        write_json(args.json, rep)
    return 0


def prune(args: argparse.Namespace) -> int:
    from ..pruning import format_sparsity_table, sparsity_report
    from .steps import prune_checkpoint

    given = [args.sparsity, args.plan, args.channels, args.channel_plan]
    if sum(g is not None for g in given) != 1:
        raise PrunelabError(
            "give exactly one of --sparsity S, --plan plan.json (fine-grained), "
            "--channels RATIO or --channel-plan plan.json (channels)"
        )
    check_out(args.out)
    calibrate = None
    if args.calibrate:
        from .steps import calibration_images

        def calibrate():  # read only once the checkpoint has loaded
            return calibration_images(splits(args), args.calibrate, args.seed)

    if args.channels is not None or args.channel_plan is not None:
        from .steps import channel_prune_checkpoint

        plan = args.channels if args.channels is not None else read_plan(args.channel_plan)
        model, kept = channel_prune_checkpoint(
            args.checkpoint,
            args.out,
            plan,
            args.importance,
            args.round_to,
            calibrate=calibrate,
            **load_args(args),
        )
        print(format_channel_table(kept))
    else:
        plan = read_plan(args.plan) if args.plan else args.sparsity
        model, _ = prune_checkpoint(
            args.checkpoint, args.out, plan, args.scope, calibrate=calibrate, **load_args(args)
        )
        print(format_sparsity_table(sparsity_report(model, scope=args.scope)))
    if calibrate is not None:
        print(f"BatchNorm statistics re-estimated on {args.calibrate} training images")
    print(f"saved {args.out}")
    return 0


def format_channel_table(kept: dict[str, Any]) -> str:
    """Channels before and after per layer, and the model's parameters and MACs."""
    lines = ["| layer | channels | kept |", "|---|---:|---:|"]
    for name, row in kept["layers"].items():
        lines.append(f"| {name} | {row['channels']} | {row['kept']} |")
    lines.append("")
    lines.append(
        f"parameters {kept['params']:,} (dense {kept['dense_params']:,}), MACs {kept['macs']:,} "
        f"(dense {kept['dense_macs']:,}; conv, linear and matmul, traced on the input size)"
    )
    from .report import left_whole_lines

    for line in left_whole_lines(kept.get("left_whole", {})):
        lines.append(line.removeprefix("- "))
    return "\n".join(lines)


def sensitivity(args: argparse.Namespace) -> int:
    from .steps import check_images_fit, scan_to_folder

    check_out_dir(args.out)
    dev = device(args)
    model, _ = load(args)
    data = splits(args, need_val=args.split == "val")
    x, y = data.split(args.split)
    check_images_fit(model, x)
    if args.channels:
        return channel_sensitivity(args, model, x, y, data)
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


def channel_sensitivity(args: argparse.Namespace, model: Any, x: Any, y: Any, data: Any) -> int:
    from ..channels import channel_scan
    from ..fileio import write_json
    from .steps import calibration_images, norm

    res = channel_scan(
        model,
        x,
        y,
        ratios=args.ratios,
        importance=args.importance,
        normalize=norm(model),
        progress=not args.no_progress,
        calibrate=calibration_images(data, args.calibrate, args.seed),
    )
    res["split"], res["images"] = args.split, len(y)
    write_json(Path(args.out) / "channel_scan.json", res)
    print(f"dense accuracy {res['dense_accuracy']:.4f} on {args.split} ({len(y)} images)")
    if res["bn_recalibrated_on"]:
        print(
            f"dense accuracy {res['reference_accuracy']:.4f} with its BatchNorm statistics "
            "re-estimated like every probe's (what the probes are compared with)"
        )
    print(f"{'group':28s} {'channels':>8s}  " + "  ".join(f"r={r:.2f}" for r in res["ratios"]))
    for name, row in res["groups"].items():
        accs = "  ".join("  -   " if a is None else f"{a:.4f}" for a in row["accuracy"])
        print(f"{name:28s} {row['channels']:8d}  {accs}")
    print(f"wrote {args.out}/channel_scan.json in {res['seconds']:.1f} s")
    return 0


@distributed
def finetune(args: argparse.Namespace) -> int:
    from .report import plot_curves
    from .steps import finetune_checkpoint

    check_out(args.out)
    if args.sparsity is not None and args.plan is not None:
        raise PrunelabError("give at most one of --sparsity S or --plan plan.json")
    given = [
        flag
        for flag, v in (
            ("--distill-weight", args.distill_weight),
            ("--temperature", args.temperature),
            ("--teacher-logits", args.teacher_logits),
        )
        if v is not None
    ]
    if given and not args.distill:
        raise PrunelabError(f"{', '.join(given)} set distillation: give --distill TEACHER too")
    check_out_dir(args.teacher_logits)
    dev, cfg = device(args), train_config(args, keep_best=True)
    target = read_plan(args.plan) if args.plan else args.sparsity
    gradual = None
    if args.prune_schedule == "gradual":
        gradual = {
            "initial_sparsity": args.initial_sparsity,
            "prune_every": args.prune_every,
            "prune_steps_fraction": args.prune_steps_fraction,
        }
    model, pruner, res, sp = finetune_checkpoint(
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
        teacher=args.distill,
        teacher_cache=args.teacher_logits,
        **load_args(args),
    )
    out = Path(args.out)
    plot_curves({out.stem: res.history}, out.with_suffix(".png"), title=f"fine-tuning {out.name}")
    if pruner is None:  # channel-pruned: nothing held at zero, the channels are gone
        kept = (getattr(model, "prunelab_arch", None) or {}).get("channels") or {}
        how = f"channel-pruned model ({len(kept)} channel groups), no masks"
    else:
        how = f"sparsity {sp['sparsity_before']:.4f} before, {sp['sparsity_after']:.4f} after"
    print(f"test accuracy {sp['test_accuracy']:.4f}; {how}; saved {out}")
    return 0


def plan(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..plan import format_plan_table, global_plan, sensitivity_plan

    check_out(args.out)
    scan = None
    if args.scan:
        scan = read_json_file(args.scan, "scan")
    model, _ = load(args)
    if args.channel_scan:
        return channel_plan(args, model)
    if args.sparsity is None:
        raise PrunelabError("give --sparsity S (fine-grained) or --channel-scan SCAN (channels)")
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


def channel_plan(args: argparse.Namespace, model: Any) -> int:
    """A channel plan reaching a MACs or measured-latency target, guided by a channel scan."""
    from ..channels import macs_target_plan
    from ..channels.latency_plan import latency_target_plan
    from ..channels.timing_log import stored_timings
    from ..errors import StoredTimingsError
    from ..fileio import write_json

    if (args.macs is None) == (args.latency is None):
        raise PrunelabError("with --channel-scan give exactly one of --macs F or --latency F")
    if args.widen and args.latency is None:
        raise PrunelabError("--widen times its candidates: it needs --latency F, not --macs")
    if args.timings and args.latency is None:
        raise PrunelabError("--timings replays a latency search: it needs --latency F, not --macs")
    scan = read_json_file(args.channel_scan, "scan")
    stored = None
    if args.timings:
        try:
            stored = stored_timings(read_json_file(args.timings, "--timings"))
        except StoredTimingsError as e:
            raise StoredTimingsError(f"--timings {args.timings}: {e}") from None
    if args.latency is not None:
        result = latency_target_plan(
            model,
            scan,
            1 / args.latency,
            batch_size=args.latency_batch_size,
            importance=args.importance,
            round_to=args.round_to,
            threads=args.threads,
            band=args.band,
            widen=args.widen,
            timings=stored,
            rank_energy=args.rank_energy,
        )
        log = result["timing_log"]
        print(
            f"measured {result['measured_speedup']:.2f}x faster than dense at batch "
            f"{args.latency_batch_size} (goal {1 / args.latency:.2f}x; "
            f"{len(result['attempts'])} attempts); timings: {log['timed']} measured, "
            f"{log['reused']} read from earlier ones"
        )
        if not result["reached"]:
            print(
                f"warning: the closest plan measured {result['measured_speedup']:.2f}x faster, "
                f"short of {1 / args.latency:.2f}x at batch {args.latency_batch_size}"
            )
    else:
        result = macs_target_plan(
            model,
            scan,
            args.macs,
            importance=args.importance,
            round_to=args.round_to,
            band=args.band,
            rank_energy=args.rank_energy,
        )
    write_json(args.out, result)
    target = f"MACs {args.macs}" if args.macs is not None else f"latency {args.latency}"
    print(
        f"channel plan for {target} of dense: {result['macs']:,} MACs "
        f"({result['macs'] / result['dense_macs']:.3f} of dense), predicted accuracy drop "
        f"{100 * result['predicted']['accuracy_drop']:.2f} points (summed scan drops)"
    )
    print(
        f"wrote {args.out}; apply it with: prunelab prune {args.checkpoint} "
        f"--channel-plan {args.out} --importance {args.importance} --out PRUNED.pth"
    )
    return 0


def export(args: argparse.Namespace) -> int:
    from ..export import export_compressed, format_size_table, size_table

    if args.out is None and args.onnx is None:
        raise PrunelabError("give --out FILE.plz (compressed), --onnx FILE.onnx, or both")
    check_out(args.out, args.onnx)
    if args.onnx:
        from ..onnx_export import _require

        _require()  # the optional packages, before any work
    model, _ = load(args)
    if args.out:
        info = export_compressed(
            model, args.out, fp16=args.fp16, arch=getattr(model, "prunelab_arch", None)
        )
        print(format_size_table(size_table(args.dense, args.checkpoint, args.out, model)))
        print(f"wrote {args.out} ({info['bytes']:,} bytes)")
    if args.onnx:
        export_onnx_checked(args, model)
    return 0


def export_onnx_checked(args: argparse.Namespace, model: Any) -> None:
    """Write ONNX, check its logits against PyTorch with onnxruntime, and time it (and the
    dense model's ONNX, with --dense) with onnxruntime."""
    import tempfile

    from ..latency_report import format_latency_table
    from ..models import load_model
    from ..onnx_export import check_onnx, export_onnx, onnx_latency

    info = export_onnx(model, args.onnx)
    check = check_onnx(model, args.onnx)
    print(
        f"wrote {args.onnx} ({info['bytes']:,} bytes); onnxruntime logits match PyTorch "
        f"(max |diff| {check['max_abs_diff']:.2e}, argmax agrees: {check['argmax_agree']})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        if args.dense:
            dense, _ = load_model(args.dense, **{**load_args(args), "model_args": None})
            paths["dense"] = export_onnx(dense, Path(tmp) / "dense.onnx")["path"]
        paths[Path(args.onnx).stem] = args.onnx
        lat = onnx_latency(paths, batch_sizes=args.batch_size, threads=args.threads)
    print(format_latency_table(lat))


def latency(args: argparse.Namespace) -> int:
    """Time the model (and the dense one, interleaved in the same run) in eager PyTorch."""
    from ..fileio import write_json
    from ..latency import measure_latency
    from ..latency_report import format_latency_table
    from ..models import load_model

    check_out(args.json, args.figure)
    if args.layers and (device(args).type != "cpu" or args.bf16):
        raise PrunelabError("--layers times and profiles on the CPU in fp32: drop --device/--bf16")
    models = {}
    if args.dense:
        models["dense"] = load_model(args.dense, **{**load_args(args), "model_args": None})[0]
    models[Path(args.checkpoint).stem] = load(args)[0]
    timing = {
        "batch_sizes": args.batch_size,
        "threads": args.threads,
        "reps": args.reps,
        "warmup": args.warmup,
        "fold_bn": not args.no_fold_bn,
    }
    result = measure_latency(
        models, device=device(args), bf16=args.bf16, primed=not args.cold, **timing
    )
    if args.layers:
        from ..kernels import layer_breakdown

        result = {**result, "layers": layer_breakdown(models, **timing)}
    # files first: a reader that leaves early (| head) must not cost the user the results
    if args.json:
        write_json(args.json, result)
    if args.figure:
        from ..latency_figure import plot_latency

        plot_latency(result, args.figure)
    print(format_latency_table(result))
    if args.layers:
        from ..latency_report import format_layer_table

        for b in args.batch_size:
            print(format_layer_table(result["layers"], b))
    if args.figure:
        print(f"wrote {args.figure}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..train import Interrupted
    from .recipes import load_recipe
    from .run import run_recipe
    from .shipped import find_recipe

    recipe = load_recipe(find_recipe(args.recipe))
    if args.dense is not None:
        recipe = _started_from(recipe, args.dense, args.cache_dir)
    check_out_dir(args.out)
    try:
        run_recipe(
            recipe,
            data_dir=args.data_dir,
            out=args.out,
            cache=args.cache_dir,
            device=device(args),
            progress=not args.no_progress,
            fresh=args.fresh,
        )
    except Interrupted as e:  # `run` has no --resume: a rerun resumes by itself
        raise Interrupted(
            e.what,
            "rerun the same prunelab run command: finished steps are skipped and this one "
            "resumes from its state",
        ) from None
    return 0


def _started_from(recipe: dict[str, Any], path: str, cache: str | None) -> dict[str, Any]:
    """`run --dense`: the recipe on that checkpoint's network, read once here so that a bad
    file fails before any step runs."""
    from ..models import load_model, read_checkpoint
    from .recipes import with_dense_checkpoint

    record = read_checkpoint(path, cache)["arch"]
    if record is None:
        raise PrunelabError(
            f"checkpoint {path} has no architecture record; --dense needs one written by "
            "prunelab (for a bare state dict, set checkpoint in the recipe's [model] instead)"
        )
    spec, name = record["model"], recipe["model"]["name"]
    if ":" in spec and spec != name:
        raise PrunelabError(
            f"checkpoint {path} was made from {spec}; run it with a recipe whose [model] "
            f"name is {spec!r} (prunelab never imports code named inside a file)"
        )
    model, _ = load_model(path, cache, model=spec if ":" in spec else None)
    return with_dense_checkpoint(recipe, path, model.prunelab_arch)


def bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_argv)
