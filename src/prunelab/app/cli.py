"""The `prunelab` command line: options and help only; each command's work is in
`commands` (a few lines each), which calls the steps."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from ..errors import PrunelabError
from . import commands
from .argtypes import (
    Parser,
    at_least_one,
    batch_sizes,
    cap_item,
    count,
    device,
    energy_share,
    existing_file,
    mean_std,
    model_arg,
    points,
    positive,
    ratio,
    ratio_list,
    ratio_open,
    seed,
    sparsity,
    sparsity_list,
    weight,
)
from .shipped import shipped_recipes

SCOPES = ["conv", "linear", "all"]
IMPORTANCES = ["l2", "l1", "lab", "bn", "group"]  # prunelab.channels.IMPORTANCES (kept torch-free)
SCOPE_HELP = (
    "layers to prune: conv = every Conv1d/2d/3d and ConvTranspose weight (the study); "
    "linear = Linear weights; all = both (default conv)"
)


# ---------- shared option groups ----------


def _global_opts(p: argparse.ArgumentParser, top: bool = False) -> None:
    """--debug and --threads work before or after the command name."""
    default = None if top else argparse.SUPPRESS
    p.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show tracebacks for errors",
    )
    p.add_argument(
        "--threads",
        type=at_least_one,
        default=default,
        metavar="N",
        help="CPU threads for torch (default: torch's choice, one per core); on a busy "
        "machine 1 can be faster than 2",
    )


def _checkpoint(p: argparse.ArgumentParser, what: str = "checkpoint to read (file or URL)") -> None:
    """The checkpoint is the first positional argument; --checkpoint is kept as an alias."""
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", type=existing_file, help=what)
    p.add_argument(
        "--checkpoint",
        dest="checkpoint_opt",
        metavar="CHECKPOINT",
        type=existing_file,
        default=None,
        help="the same as the positional CHECKPOINT (kept for existing scripts)",
    )
    _model_opts(p)
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="load a checkpoint even if it holds NaN or Inf values (refused by default)",
    )


def _model_opts(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--model",
        default=default,
        help="a registry model (vgg, resnet20, resnet56, mobilenetv2) or your own "
        "package.module:factory returning an nn.Module; needed for checkpoints made from "
        "your own code and for bare state dicts" + (f" (default {default})" if default else ""),
    )
    p.add_argument(
        "--model-arg",
        type=model_arg,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="keyword argument for the model factory, e.g. width=0.5 (repeatable)",
    )


def _data_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=None,
        help="an image-folder tree train/<class>/*, test/<class>/* (optional val/<class>/*), "
        "PNG or JPEG, or a CIFAR-10/100 python archive or folder (default: CIFAR-10 in the "
        "cache folder, downloaded there with an md5 check when absent)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="downloads and decoded data (default: $PRUNELAB_CACHE or ~/.cache/prunelab)",
    )
    p.add_argument(
        "--image-size",
        type=at_least_one,
        default=None,
        help="resize every image to N x N (needed when a tree's images differ in size)",
    )
    p.add_argument(
        "--image-channels",
        type=int,
        choices=[1, 3],
        default=None,
        help="convert every image to 1 (grayscale) or 3 (RGB) channels (default: 1 when every "
        "image is grayscale, else 3; the run says which)",
    )
    p.add_argument(
        "--val-size",
        type=count,
        default=None,
        help="training images held out for validation when the tree has no val/ folder "
        "(default 5000, or a tenth of train/ when that is fewer; 0 = none)",
    )
    p.add_argument(
        "--val-fraction",
        type=positive,
        default=None,
        help="hold out this fraction of train/ instead of --val-size (e.g. 0.1)",
    )
    p.add_argument(
        "--train-subset",
        type=at_least_one,
        default=None,
        help="use only this many training images, class-balanced (quick experiments)",
    )
    p.add_argument(
        "--test-subset",
        type=at_least_one,
        default=None,
        help="use only this many test images, class-balanced (quick experiments)",
    )


def _run_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", type=device, default="auto", help="cpu, cuda, cuda:N or auto (default)"
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast (faster on CPUs with bf16 units and on GPUs; fp32 is the default)",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _fold_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="run BatchNorm as a separate layer (by default each true conv -> BatchNorm pair "
        "is folded into one conv, checked against the unfolded model: the same model to fp32 "
        "rounding, 9-17%% faster on CPU)",
    )


def _importance_opt(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--importance", choices=IMPORTANCES, default="l2", help=help)


def _scope_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scope", choices=SCOPES, default="conv", help=SCOPE_HELP)


def _train_opts(
    p: argparse.ArgumentParser, epochs: int, lr: float, optimizer: str, schedule: str
) -> None:
    p.add_argument("--epochs", type=count, default=epochs, help=f"(default {epochs})")
    p.add_argument(
        "--batch-size", type=at_least_one, default=256, help="images per step (default 256)"
    )
    p.add_argument(
        "--optimizer",
        choices=["sgd", "adam", "adamw"],
        default=optimizer,
        help=f"(default {optimizer})",
    )
    p.add_argument("--lr", type=positive, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov")
    p.add_argument(
        "--weight-decay", type=float, default=5e-4, help="L2 on weights, not BN/biases (5e-4)"
    )
    p.add_argument(
        "--schedule",
        choices=["onecycle", "cosine", "constant"],
        default=schedule,
        help=f"learning-rate schedule (default {schedule})",
    )
    p.add_argument(
        "--label-smoothing", type=float, default=0.1, help="cross-entropy smoothing (0.1)"
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="train on the images as they are (default: random crop with zero padding of "
        "1/8 of the image size, and horizontal flip)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the state saved beside --out by an interrupted run (refused if "
        "a setting that defines the run changed)",
    )


def _command(sub, name: str, func, help: str, **kw) -> argparse.ArgumentParser:
    s = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", **kw)
    _global_opts(s)
    s.set_defaults(func=func)
    return s


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="prunelab",
        description="Prune a PyTorch CNN and measure what it cost (accuracy, precision, recall, "
        "specificity, size, MACs), on any registry model or your own package.module:factory "
        "and any image-folder tree; the VGG/CIFAR-10 pruning study is built in. "
        "Start with: prunelab run quick",
    )
    _global_opts(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    p.set_defaults(commands=sub.choices)  # each command's parser, to report its own errors

    s = _command(sub, "train", commands.train, "train a dense model from scratch")
    _model_opts(s, default="vgg")
    s.add_argument(
        "--width", type=positive, default=0.25, help="vgg: channel multiplier (default 0.25)"
    )
    s.add_argument(
        "--normalize",
        type=mean_std,
        default=None,
        help="input normalisation recorded in the checkpoint and applied wherever the model "
        "runs: 'MEAN,STD', 'm1,m2,m3;s1,s2,s3' or none (default none: inputs in [0, 1])",
    )
    _data_opts(s)
    _run_opts(s)
    _train_opts(s, epochs=10, lr=0.1, optimizer="sgd", schedule="onecycle")
    s.add_argument("--out", default="checkpoints/model.pth", help="checkpoint to write")

    s = _command(
        sub, "evaluate", commands.evaluate, "accuracy, precision, recall, specificity and F1"
    )
    _checkpoint(s)
    _data_opts(s)
    _run_opts(s)
    s.add_argument(
        "--split", choices=["test", "val"], default="test", help="images to score (default test)"
    )
    s.add_argument("--json", default=None, help="write the metrics here")
    s.add_argument("--confusion", default=None, help="draw the confusion matrix to this PNG")
    _fold_opt(s)

    s = _command(
        sub, "sparsity", commands.sparsity, "per-layer sparsity, parameters, MACs and sizes"
    )
    _checkpoint(s)
    _scope_opt(s)
    s.add_argument("--json", default=None, help="write the report here")
    s.add_argument("--cache-dir", default=None, help="where URL checkpoints are downloaded")

    s = _command(
        sub,
        "prune",
        commands.prune,
        "zero the smallest weights (a sparsity or plan), or remove whole channels (--channels)",
    )
    _checkpoint(s, "dense checkpoint to prune (file or URL)")
    s.add_argument(
        "--sparsity",
        type=sparsity,
        default=None,
        help="fraction of each layer's weights set to zero, in [0, 1]",
    )
    s.add_argument(
        "--plan",
        type=existing_file,
        default=None,
        help="JSON mapping layer names to sparsities (from `prunelab plan`)",
    )
    s.add_argument(
        "--channels",
        type=ratio,
        default=None,
        help="channel pruning: remove this fraction of every layer's output channels, "
        "physically (residual and depthwise dependencies followed), in [0, 1)",
    )
    s.add_argument(
        "--channel-plan",
        type=existing_file,
        default=None,
        help="channel pruning with per-layer ratios: JSON {layer: ratio} (from `prunelab plan "
        "--channel-scan`)",
    )
    _importance_opt(
        s,
        "channel ranking: l2/l1 norm of each filter summed over its dependency group "
        "(default l2); lab: the course lab's rule (next layer's input-channel norm; keeps the "
        "last conv); bn: BatchNorm |gamma|",
    )
    s.add_argument(
        "--round-to",
        type=at_least_one,
        default=None,
        help="channel counts kept as multiples of N",
    )
    _scope_opt(s)
    s.add_argument(
        "--calibrate",
        type=at_least_one,
        default=None,
        metavar="N",
        help="re-estimate BatchNorm statistics on N training images (from --data-dir, drawn "
        "with --seed) after pruning. Weights are untouched and fine-tuning ends the same "
        "either way, but the accuracy before fine-tuning then measures the pruning, not "
        "stale statistics (width-0.25 VGG, N=2048: 75%% of conv weights pruned 10.0%% -> "
        "69.0%%, 30%% of channels 16.0%% -> 58.0%%)",
    )
    s.add_argument("--seed", type=seed, default=0, help="which images --calibrate draws")
    s.add_argument("--out", required=True, help="pruned checkpoint to write (masks included)")
    _data_opts(s)

    s = _command(
        sub,
        "sensitivity",
        commands.sensitivity,
        "per-layer sensitivity scan of weights or channels (CSV, JSON, figures)",
    )
    _checkpoint(s)
    _data_opts(s)
    _run_opts(s)
    s.add_argument(
        "--sparsities",
        type=sparsity_list,
        default=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="comma-separated sparsities, each probed alone per layer (default 0.4,...,0.9)",
    )
    s.add_argument(
        "--split",
        choices=["test", "val"],
        default="val",
        help="val (held out of training, the better practice; default) or test "
        "(what the study did)",
    )
    _scope_opt(s)
    s.add_argument("--out", default="runs/sensitivity", help="folder for the outputs")
    _fold_opt(s)
    s.add_argument(
        "--channels",
        action="store_true",
        help="channel scan instead: each channel group pruned alone to each of --ratios "
        "(writes channel_scan.json, the input of `prunelab plan --channel-scan`)",
    )
    s.add_argument(
        "--ratios",
        type=ratio_list,
        default=[0.25, 0.5, 0.75],
        help="--channels: fractions of channels removed, comma-separated (default 0.25,0.5,0.75)",
    )
    _importance_opt(
        s, "--channels: which channels go first (default l2; see prunelab prune --help)"
    )
    s.add_argument(
        "--calibrate",
        type=count,
        default=1024,
        help="--channels: re-estimate each probe's BatchNorm statistics on this many training "
        "images before scoring it (adaptive BN: the scan then tracks accuracy after "
        "fine-tuning far better); 0 scores probes as cut (default 1024)",
    )

    s = _command(
        sub,
        "finetune",
        commands.finetune,
        "fine-tune a pruned model (zeroed weights stay zero), optionally distilling",
    )
    _checkpoint(s, "a pruned checkpoint (with masks), or a dense one with --sparsity/--plan")
    s.add_argument(
        "--sparsity",
        type=sparsity,
        default=None,
        help="prune a dense checkpoint to this sparsity first (refused on a pruned one)",
    )
    _scope_opt(s)
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
        type=at_least_one,
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
    s.add_argument(
        "--distill",
        type=existing_file,
        default=None,
        metavar="TEACHER",
        help="distil from this checkpoint while fine-tuning (usually the dense model the "
        "pruned one came from): the loss mixes the labels with the teacher's softened outputs",
    )
    s.add_argument(
        "--distill-weight",
        type=weight,
        default=None,
        help="--distill: weight of the teacher's term, in [0, 1] (default 0.5)",
    )
    s.add_argument(
        "--temperature",
        type=positive,
        default=None,
        help="--distill: temperature softening both outputs (default 4)",
    )
    s.add_argument(
        "--teacher-logits",
        default=None,
        metavar="FOLDER",
        help="--distill: save the teacher's outputs per epoch in FOLDER and reuse them when "
        "another model is fine-tuned from the same teacher, data, seed and batch size (the "
        "same result, without the teacher's forward: about half a step for a dense VGG)",
    )
    s.add_argument("--out", required=True, help="fine-tuned checkpoint to write")

    s = _command(
        sub,
        "plan",
        commands.plan,
        "per-layer sparsities or channel ratios reaching a sparsity, MACs or latency target",
    )
    _checkpoint(s, "the dense checkpoint the plan is for")
    s.add_argument(
        "--scan",
        type=existing_file,
        default=None,
        help="sensitivity.json from `prunelab sensitivity` (best on the val split)",
    )
    s.add_argument(
        "--sparsity",
        "--target",
        dest="sparsity",
        default=None,
        type=sparsity,
        help="overall sparsity of the scope's weights, e.g. 0.8 (--target is an alias)",
    )
    s.add_argument(
        "--cap",
        type=cap_item,
        action="append",
        default=None,
        metavar="LAYER=CAP",
        help="most a layer may be pruned, a sparsity (repeatable)",
    )
    s.add_argument(
        "--default-cap", type=sparsity, default=0.95, help="cap of every other layer (0.95)"
    )
    s.add_argument(
        "--first-last-cap",
        type=sparsity,
        default=0.8,
        help="cap of the first and last layer of the scope (default 0.8)",
    )
    s.add_argument(
        "--max-drop",
        type=points,
        default=None,
        help="most accuracy a layer may lose by the scan, in percentage points (e.g. 2)",
    )
    s.add_argument(
        "--global",
        dest="global_",
        action="store_true",
        help="one magnitude threshold over the scope instead (for comparison)",
    )
    s.add_argument(
        "--channel-scan",
        type=existing_file,
        default=None,
        help="a channel plan instead, from `prunelab sensitivity --channels`: reach --macs or "
        "--latency (a fraction of the dense model's)",
    )
    s.add_argument(
        "--macs",
        type=ratio_open,
        default=None,
        help="--channel-scan: keep at most this fraction of the dense MACs, e.g. 0.5",
    )
    s.add_argument(
        "--latency",
        type=ratio_open,
        default=None,
        help="--channel-scan: reach this fraction of the dense latency, measured: the plan "
        "is predicted from per-layer timings, the pruned model timed against the dense one "
        "and the target corrected until it holds (timings and attempts stored in the plan)",
    )
    s.add_argument(
        "--latency-batch-size",
        type=at_least_one,
        default=1,
        help="--latency: the batch size the per-layer timings use (default 1)",
    )
    _importance_opt(s, "--channel-scan: the importance the scan used (default l2)")
    s.add_argument(
        "--round-to", type=at_least_one, default=None, help="channel counts kept as multiples of N"
    )
    s.add_argument(
        "--band",
        type=ratio,
        default=None,
        help="--channel-scan: keep every layer within this distance of the uniform ratio "
        "reaching the same target, e.g. 0.1 (the scan then tilts a uniform plan; without "
        "it, plans far from uniform fine-tuned worse than uniform in our measurements)",
    )
    s.add_argument(
        "--rank-energy",
        type=energy_share,
        default=None,
        metavar="E",
        help="--channel-scan: first cut layers with more filters than inputs (a first conv on "
        "RGB: 64 filters in 3x3x3 = 27 dimensions) to the rank holding this share of their "
        "weights' energy, e.g. 0.9 (the VGG's conv0: 15 of 64; others keep the plan's ratio)",
    )
    s.add_argument(
        "--widen",
        type=count,
        default=0,
        help="--latency: then widen layers again, up to N rounding steps per move, while the "
        "measured speed-up holds (batch-1 latency is not monotone in channel counts; default 0)",
    )
    s.add_argument(
        "--timings",
        type=existing_file,
        default=None,
        metavar="PLAN.json",
        help="--latency: read timings from an earlier latency plan's file instead of timing "
        "again: the same scan and settings then give the same plan without timing anything; "
        "models the earlier search never timed are timed (same dense model, batch size, "
        "threads)",
    )
    _scope_opt(s)
    s.add_argument("--out", default="plan.json", help="plan JSON for `prunelab prune --plan`")
    s.add_argument("--cache-dir", default=None, help="where URL checkpoints are downloaded")

    s = _command(
        sub,
        "export",
        commands.export,
        "write a pruned model compactly (real file sizes) or as ONNX (checked, timed)",
    )
    _checkpoint(s)
    s.add_argument("--out", default=None, help="compressed model to write, e.g. model.plz")
    s.add_argument(
        "--onnx",
        default=None,
        help="also write ONNX here (BatchNorm folded, normalisation baked in, inputs in [0, 1]), "
        "check its logits against PyTorch with onnxruntime and print onnxruntime's latency; "
        "needs pip install 'prunelab[onnx]'",
    )
    s.add_argument(
        "--batch-size",
        type=batch_sizes,
        default=[1],
        help="--onnx: batch sizes for the onnxruntime latency, e.g. 1,64 (default 1)",
    )
    s.add_argument("--fp16", action="store_true", help="store values as fp16 (lossy, half size)")
    s.add_argument(
        "--dense",
        type=existing_file,
        default=None,
        help="the dense checkpoint, for the size comparison and (with --onnx) the dense "
        "model's onnxruntime latency beside the pruned one's (default for sizes: the plain "
        "state dict, which has the same size)",
    )
    s.add_argument("--cache-dir", default=None, help="where URL checkpoints are downloaded")

    s = _command(
        sub,
        "latency",
        commands.latency,
        "measured latency of a model, and of its dense parent interleaved in the same run",
    )
    _checkpoint(s)
    s.add_argument(
        "--dense",
        type=existing_file,
        default=None,
        help="the dense checkpoint: timed in the same run, interleaved, as the baseline",
    )
    s.add_argument(
        "--batch-size",
        type=batch_sizes,
        default=[1, 64],
        help="comma-separated batch sizes (default 1,64)",
    )
    s.add_argument(
        "--reps", type=at_least_one, default=30, help="timed rounds at least (default 30)"
    )
    s.add_argument("--warmup", type=count, default=10, help="untimed rounds first (default 10)")
    s.add_argument(
        "--cold",
        action="store_true",
        help="time every call right after the other model's (default: after an untimed call "
        "of the same model, as a model served alone finds the CPU caches; a pruned model "
        "whose weights fit in cache then times a few percent faster)",
    )
    s.add_argument(
        "--device", type=device, default="cpu", help="cpu (default), cuda, cuda:N or auto"
    )
    s.add_argument("--bf16", action="store_true", help="time under bf16 autocast (default fp32)")
    s.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="time BatchNorm as a separate layer (default: folded, as prunelab evaluates)",
    )
    s.add_argument(
        "--layers",
        action="store_true",
        help="also time every conv and Linear layer and name the kernel PyTorch runs it on "
        "(oneDNN, ATen im2col, ...), beside the dense model's same layer: why a pruned model "
        "is or is not faster (CPU, fp32)",
    )
    s.add_argument(
        "--figure",
        default=None,
        metavar="PNG",
        help="also draw the timings: per batch size, each model's median and spread, or with "
        "--layers each layer's time per model, labelled with its kernel",
    )
    s.add_argument("--json", default=None, help="write every timing and the settings here")
    s.add_argument("--cache-dir", default=None, help="where URL checkpoints are downloaded")

    s = _command(sub, "run", commands.run, "run a recipe (a whole study) and write its report")
    s.add_argument(
        "recipe",
        help="a recipe TOML file, or a shipped recipe's name: "
        + ", ".join(sorted(shipped_recipes())),
    )
    s.add_argument(
        "--data-dir",
        default=None,
        help="image data (default: the recipe's [data] dir, else CIFAR-10 in the cache folder)",
    )
    s.add_argument("--cache-dir", default=None, help="downloads and decoded data")
    s.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    s.add_argument(
        "--device", type=device, default="auto", help="cpu, cuda, cuda:N or auto (default)"
    )
    s.add_argument(
        "--dense",
        default=None,
        help="start from this dense checkpoint (file or URL) instead of the recipe's model, "
        "which is then the file's network: e.g. runs/quick/dense/model.pth to reuse the quick "
        "study's instead of training it again, or a full-width VGG",
    )
    s.add_argument("--fresh", action="store_true", help="ignore finished steps and redo them")
    s.add_argument("--no-progress", action="store_true", help="hide progress bars")

    # options are bench's own (it imports torch, which the parser must not): see main()
    s = sub.add_parser(
        "bench",
        add_help=False,
        help="time evaluation, training and the scan against a plain PyTorch baseline "
        "(prunelab bench --help)",
    )
    s.set_defaults(func=commands.bench)
    return p


def _resolve_checkpoint(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not hasattr(args, "checkpoint_opt"):
        return
    given = [c for c in (args.checkpoint, args.checkpoint_opt) if c is not None]
    if not given:
        parser.error(f"{args.command}: give the checkpoint (prunelab {args.command} CHECKPOINT)")
    if len(given) == 2 and given[0] != given[1]:
        parser.error(f"{args.command}: two different checkpoints given ({given[0]}, {given[1]})")
    args.checkpoint = given[0]


def _did_you_mean(cmd: argparse.ArgumentParser, extra: list[str]) -> str:
    """'; did you mean --x?' for the first unknown flag close to one of the command's."""
    flags = [o for a in cmd._actions for o in a.option_strings if o.startswith("--")]
    for word in extra:
        if word.startswith("--"):
            close = difflib.get_close_matches(word.split("=")[0], flags, n=1)
            return f"; did you mean {close[0]}?" if close else ""
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":  # said by the command, whose --help lists its flags
        cmd = args.commands[args.command]
        cmd.error(f"unrecognized arguments: {' '.join(extra)}{_did_you_mean(cmd, extra)}")
    args.bench_argv = extra
    _resolve_checkpoint(parser, args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return status
    except BrokenPipeError:
        # the reader left (`prunelab latency ... | head`): stop quietly, as other tools do;
        # stdout goes to devnull so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
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
