"""Fine-grained against channel pruning, on one dense model: the comparison users ask for.

For each channel ratio r: channel pruning uniform (every group keeps round(c (1 - r))
channels), channel pruning guided by a channel sensitivity scan to the same MACs, and
fine-grained magnitude pruning to the same number of parameters; each fine-tuned with the
same budget, then accuracy before and after, parameters, MACs, file size and latency
measured for all of them in one interleaved run beside the dense model.

A recipe with a [channels] table runs this instead of the study. Steps are resumable and
redone when their settings change, as in `Study`.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from ..accounting import count_macs, count_params
from ..batchnorm import recalibrate_bn
from ..channels import graph_of, macs_target_plan, prune_channels
from ..fileio import write_json, write_png, write_text
from ..latency_report import format_latency_table
from ..models import save_checkpoint
from ..pruning import sparsity_report
from .report import data_and_machine, left_whole_lines, model_label
from .steps import (
    calibration_images,
    finetune_checkpoint,
    light,
    norm,
    prune_checkpoint,
    recipe_splits,
)
from .study import Study, recovery_settings, tag

LABELS = {
    "dense": "dense",
    "fine": "fine-grained (same parameters)",
    "uniform": "channels, uniform",
    "guided": "channels, sensitivity-guided (same MACs)",
}


class ChannelsStudy(Study):
    """The [channels] comparison as resumable steps on the study's dense model."""

    def run(self) -> dict[str, Any]:
        rec, out, ch = self.rec, self.out, self.rec["channels"]
        t0 = time.perf_counter()
        torch.manual_seed(rec["seed"])
        splits = recipe_splits(rec, self.data_dir, self.cache)
        dense_path, dense, dense_ckpt = self.dense_model(splits)
        dense_row = self._evaluated("dense", dense, splits, 0.0)
        dense_macs, dense_params = count_macs(dense)["total"], count_params(dense)
        scan = None
        if "guided" in ch["methods"]:
            scan_path = out / "channels" / "scan.json"
            scan_digest = self.step(
                "channel sensitivity scan",
                scan_path,
                lambda: self.channel_scan_to(dense, splits, scan_path, ch),
                {
                    "dense": self.dense_digest,
                    "scan": ch["scan"],
                    "imp": ch["importance"],
                    **recovery_settings(ch),
                },
            )
            scan = json.loads(scan_path.read_text())
        calibration = calibration_images(splits, ch["calibrate"], rec["seed"])
        models: dict[str, tuple[Path, str]] = {}  # name -> (fine-tuned model, its step digest)
        rows = []
        for r in ch["ratios"]:
            uniform_path = out / "pruned" / f"uniform-{tag(r)}.pth"
            uniform_digest = self.step(
                f"channels uniform {r:.2f}",
                uniform_path,
                lambda r=r, p=uniform_path: self._channels(dense_path, r, p),
                {
                    "dense": self.dense_digest,
                    "ratio": r,
                    "imp": ch["importance"],
                    "round_to": ch["round_to"],
                },
            )
            uniform = self.load(uniform_path)[0]
            target_macs, target_params = count_macs(uniform)["total"], count_params(uniform)
            for method in ch["methods"]:
                name = f"{method}-{tag(r)}"
                p_path = out / "pruned" / f"{name}.pth"
                if method == "uniform":
                    parent = uniform_digest
                elif method == "guided":
                    frac = target_macs / dense_macs
                    parent = self.step(
                        f"channels guided {r:.2f}",
                        p_path,
                        lambda f=frac, p=p_path: self._guided(dense_path, dense, scan, f, p),
                        {
                            "dense": self.dense_digest,
                            "macs": frac,
                            "scan": scan_digest,
                            "imp": ch["importance"],
                            "round_to": ch["round_to"],
                        },
                    )
                elif method == "fine":
                    s = fine_sparsity(dense, dense_params, target_params)
                    parent = self.step(
                        f"fine-grained {s:.4f}",
                        p_path,
                        lambda s=s, p=p_path: prune_checkpoint(
                            dense_path,
                            p,
                            s,
                            meta={"produced_by": "prunelab channels: fine"},
                            cache=self.cache,
                            model=self.user_spec,
                        ),
                        {"dense": self.dense_digest, "sparsity": s},
                    )
                pmodel = self.load(p_path)[0]
                if calibration is not None:  # the evaluation cache is keyed by the statistics too
                    recalibrate_bn(pmodel, calibration, norm(pmodel))
                before = self._evaluated(f"{name}-before", pmodel, splits, r)
                f_path = out / "finetune" / f"{name}.pth"
                digest = self.step(
                    f"finetune {name}",
                    f_path,
                    lambda p=p_path, f=f_path, n=name: finetune_checkpoint(
                        p,
                        f,
                        splits,
                        copy.deepcopy(ch["finetune"]),
                        resume=self.interrupted(f),
                        device=self.device,
                        progress=self.progress,
                        desc=f"finetune {n}",
                        cache=self.cache,
                        model=self.user_spec,
                    ),
                    {
                        "pruned": str(p_path),
                        "parent": parent,  # a model remade at the same path is fine-tuned again
                        "ft": ch["finetune"],
                        "data": rec["data"],
                    },
                )
                fmodel, fck = self.load(f_path)
                after = self._evaluated(name, fmodel, splits, r)
                models[name] = f_path, digest
                rows.append(
                    self._row(method, r, name, fmodel, fck, before, after, dense_row, f_path)
                )
        latency = self._latency(dense_path, models)
        for row in rows:
            row.update(latency_columns(latency, row["name"]))
        dense_summary = {
            "method": "dense",
            "label": "dense",
            "ratio": 0.0,
            "name": "dense",
            "params": dense_params,
            "macs": dense_macs,
            "accuracy_before": dense_row["accuracy"],
            "accuracy_after": dense_row["accuracy"],
            "file_bytes": self.export_bytes(dense, out / "export" / "dense.plz"),
            **latency_columns(latency, "dense"),
        }
        results = {
            **self.results_head(dense, dense_ckpt, splits),
            "kind": "channels",
            "channels": json.loads(json.dumps(ch, default=lambda o: o.__dict__)),
            "validation_check": (scan or {}).get("validation_check"),
            "left_whole": graph_of(dense).unprunable,  # the ratios apply to the other layers
            "rows": [dense_summary, *rows],
            "latency": latency,
            "timings_seconds": self.timings,
            "seconds_total": time.perf_counter() - t0,
        }
        results["dense"]["accuracy"] = dense_row["accuracy"]
        plot_accuracy_vs_latency(results, out / "figures" / "accuracy_vs_latency.png")
        write_json(out / "results.json", results)
        write_text(out / "report.md", channels_report(results))
        return results

    # ----- steps -----
    def _channels(self, dense_path: Path, ratio: float, path: Path) -> None:
        model, ck = self.load(dense_path)
        ch = self.rec["channels"]
        kept = prune_channels(model, ratio, importance=ch["importance"], round_to=ch["round_to"])
        meta = {
            **light(ck["meta"]),
            "produced_by": "prunelab channels: uniform",
            "channel_ratio": ratio,
            "kept_channels": kept,
        }
        save_checkpoint(path, model, meta)

    def _guided(self, dense_path: Path, dense: Any, scan: Any, frac: float, path: Path) -> None:
        ch = self.rec["channels"]
        plan = macs_target_plan(
            dense, scan, frac, importance=ch["importance"], round_to=ch["round_to"]
        )
        model, ck = self.load(dense_path)
        kept = prune_channels(
            model, plan["plan"], importance=ch["importance"], round_to=ch["round_to"]
        )
        meta = {
            **light(ck["meta"]),
            "produced_by": "prunelab channels: guided",
            "channel_plan": plan["plan"],
            "macs_target": frac,
            "kept_channels": kept,
        }
        save_checkpoint(path, model, meta)

    def _row(self, method, r, name, model, ck, before, after, dense_row, f_path) -> dict:
        rep = sparsity_report(model, macs=False)
        return {
            "method": method,
            "label": LABELS[method],
            "ratio": r,
            "name": name,
            "params": count_params(model),
            "nonzero_params": round(rep["model_params"] * (1 - rep["model_sparsity_all_params"])),
            "macs": count_macs(model)["total"],
            "conv_sparsity": rep["prunable_sparsity"],
            "accuracy_before": before["accuracy"],
            "accuracy_after": after["accuracy"],
            "delta_dense": after["accuracy"] - dense_row["accuracy"],
            "history": ck["meta"].get("history"),
            "file_bytes": self.export_bytes(model, self.out / "export" / f"{name}.plz"),
        }

    def _latency(self, dense_path: Path, models: dict[str, tuple[Path, str]]) -> dict[str, Any]:
        """Dense and every fine-tuned model {name: (checkpoint, step digest)} timed
        interleaved in one run (eager fp32)."""
        lat = self.rec["channels"]["latency"]
        return self.timed(
            dense_path,
            models,
            {"latency": lat},
            batch_sizes=tuple(lat["batch_sizes"]),
            threads=lat["threads"],
            reps=lat["reps"],
        )


def fine_sparsity(dense: Any, dense_params: int, target_params: int) -> float:
    """The conv sparsity that leaves the fine-grained model as many non-zero parameters as
    the channel-pruned one has parameters (the same size, counted fairly)."""
    conv = sparsity_report(dense, macs=False)["prunable_params"]
    removed = dense_params - target_params
    return min(max(removed / conv, 0.0), 0.99)


def latency_columns(latency: dict[str, Any], name: str) -> dict[str, Any]:
    """Median ms per batch and the speed-up over dense, per batch size, for one model."""
    out: dict[str, Any] = {}
    for row in latency["rows"]:
        if row["model"] == name:
            b = row["batch_size"]
            out[f"latency_ms_b{b}"] = row["median_ms"]
            out[f"speedup_b{b}"] = row.get("speedup")
    return out


def plot_accuracy_vs_latency(r: dict[str, Any], path: Path) -> None:
    """Accuracy after fine-tuning against batch-1 and largest-batch latency, per method."""
    sizes = r["channels"]["latency"]["batch_sizes"]
    fig = Figure(figsize=(5.5 * len(sizes), 4.2))
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    markers = {"dense": "*", "fine": "o", "uniform": "s", "guided": "^"}
    for ax, b in zip(axes, sizes, strict=True):
        for method in ["dense", *r["channels"]["methods"]]:
            pts = [x for x in r["rows"] if x["method"] == method and f"latency_ms_b{b}" in x]
            if not pts:
                continue
            ax.plot(
                [p[f"latency_ms_b{b}"] for p in pts],
                [100 * p["accuracy_after"] for p in pts],
                marker=markers[method],
                linestyle="-" if len(pts) > 1 else "none",
                markersize=11 if method == "dense" else 7,
                label=LABELS[method],
            )
            for p in pts:
                if method != "dense":
                    ax.annotate(
                        f"{p['ratio']:.2f}",
                        (p[f"latency_ms_b{b}"], 100 * p["accuracy_after"]),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        ax.set_xlabel(f"median latency, batch {b} (ms, eager fp32)")
        ax.set_ylabel("test accuracy after fine-tuning (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{model_label(r['dense'])}: accuracy against measured latency", fontsize=10)
    fig.tight_layout()
    write_png(fig, path)


def channels_report(r: dict[str, Any]) -> str:
    """report.md: the comparison table, the latency table and the figure."""
    sizes = r["channels"]["latency"]["batch_sizes"]
    head = (
        "| method | channel ratio | params | MACs | export KiB | "
        + " | ".join(f"batch-{b} ms | speed-up b{b}" for b in sizes)
        + " | before FT % | after FT % | Δ dense |"
    )
    lines = [
        f"# prunelab channels report: {r['recipe']['name']}",
        "",
        r["recipe"].get("description", ""),
        "",
        f"- dense model: {r['dense']['source']} ({model_label(r['dense'])}), test accuracy "
        f"{100 * r['dense']['accuracy']:.2f}%",
        *data_and_machine(r),
        f"- fine-tuning: {r['channels']['finetune']['epochs']} epochs of "
        f"{r['channels']['finetune']['optimizer']} (lr {r['channels']['finetune']['lr']}) for "
        "every method; importance: " + r["channels"]["importance"],
        "- before FT: "
        + (
            f"BatchNorm statistics re-estimated on {r['channels']['calibrate']:,} training "
            "images first (weights as cut)"
            if r["channels"].get("calibrate")
            else "the pruned model as cut, BatchNorm statistics included (`calibrate = N` "
            "re-estimates them first)"
        ),
        "- latency: every model timed in one interleaved run, eager PyTorch fp32, BatchNorm "
        "folded (see latency table below for threads, warm-up and repetitions)",
        *left_whole_lines(r.get("left_whole") or {}),
        "",
        head,
        "|---|---:|---:|---:|---:|" + "---:|---:|" * len(sizes) + "---:|---:|---:|",
    ]
    for x in r["rows"]:
        lat = " | ".join(
            f"{x.get(f'latency_ms_b{b}', float('nan')):.2f} | {x.get(f'speedup_b{b}') or 1:.2f}x"
            for b in sizes
        )
        delta = "" if x["method"] == "dense" else f"{100 * x['delta_dense']:+.2f}"
        before = "" if x["method"] == "dense" else f"{100 * x['accuracy_before']:.2f}"
        lines.append(
            f"| {LABELS[x['method']]} | {x['ratio']:.2f} | {x['params']:,} | {x['macs']:,} | "
            f"{x['file_bytes'] / 1024:.1f} | {lat} | {before} | "
            f"{100 * x['accuracy_after']:.2f} | {delta} |"
        )
    lines += [
        "",
        "Fine-grained rows keep every channel and zero weights instead: their MACs are the "
        "dense MACs (the zeros are multiplied too), so their latency is the dense latency; "
        "their export is small because zeros compress. Channel-pruned models are physically "
        "smaller: fewer MACs, less time.",
        "",
        "![accuracy against latency](figures/accuracy_vs_latency.png)",
        "",
        "## Latency",
        "",
        format_latency_table(r["latency"]),
        "",
    ]
    return "\n".join(lines)
