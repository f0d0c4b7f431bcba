"""Beyond the study: on one dense model, compare uniform one-shot pruning (the study's),
sensitivity-guided one-shot pruning and sensitivity-guided gradual pruning, each fine-tuned
for the same number of epochs, at several overall sparsities; export every result in the
compact format and report accuracy and real file sizes.

A recipe with a [compare] table runs this instead of the study. Steps write their outputs
atomically and are skipped when the outputs exist, as in `Study`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from ..errors import PrunelabError
from ..export import export_compressed, format_size_table, size_table
from ..fileio import file_digest, write_json, write_png, write_text
from ..plan import global_plan, sensitivity_plan, uniform_plan
from ..pruning import sparsity_report
from .recipe_compare import parse_compare as parse_compare  # where it was before
from .report import PUBLISHED, model_label
from .steps import (
    Splits,
    data_record,
    environment,
    finetune_checkpoint,
    light,
    prune_checkpoint,
    recipe_splits,
    scan_to_folder,
)
from .study import Study, scan_images, tag

METHODS = {
    "uniform": "uniform one-shot",
    "global": "global-magnitude one-shot",
    "sensitivity": "sensitivity-guided one-shot",
    "gradual": "sensitivity-guided gradual",
}
PLAN_OF = {
    "uniform": "uniform",
    "global": "global",
    "sensitivity": "sensitivity",
    "gradual": "sensitivity",
}
PUBLISHED_LABEL = "published study (full VGG, official data)"


def run_beyond(
    rec: dict[str, Any],
    data_dir: Any,
    out: Path,
    cache: Any = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run a [compare] recipe into `out`; returns results.json's content."""
    return Beyond(rec, data_dir, Path(out), cache, torch.device(device), progress, fresh).run()


class Beyond(Study):
    """The comparison as resumable steps, reusing the study's dense-model and eval steps."""

    def run(self) -> dict[str, Any]:
        rec, out, cmp = self.rec, self.out, self.rec["compare"]
        t0 = time.perf_counter()
        torch.manual_seed(rec["seed"])
        splits = recipe_splits(rec, self.data_dir, self.cache)
        dense_path, dense, dense_ckpt = self.dense_model(splits)
        dense_row = self._evaluated("dense", dense, splits, 0.0)
        scan_path = out / "sensitivity" / "sensitivity.json"
        self.step(
            "sensitivity scan (validation split)",
            scan_path,
            lambda: self._scan(dense, splits),
            {"dense": self.dense_digest, "scan": cmp["scan"], "scope": cmp["scope"]},
        )
        scan = json.loads(scan_path.read_text())
        rows, sizes, plans = [], [], {}
        for s in cmp["sparsities"]:
            for method in cmp["methods"]:
                kind, name = PLAN_OF[method], f"{method}-{tag(s)}"
                plan_path = out / "plans" / f"{kind}-{tag(s)}.json"
                plan_digest = self.step(
                    f"plan {kind} {s:.2f}",
                    plan_path,
                    lambda k=kind, s=s, p=plan_path: self._plan(k, s, dense, scan, p),
                    {"scan": scan.get("seconds"), "kind": kind, "target": s, "plan": cmp["plan"]},
                )
                plan = json.loads(plan_path.read_text())
                plans[f"{kind}-{tag(s)}"] = plan
                before = None
                f_path = out / "finetune" / f"{name}.pth"
                if method == "gradual":
                    self.step(
                        f"gradual {name}",
                        f_path,
                        lambda p=plan, f=f_path, n=name: self._gradual(dense_path, p, f, splits, n),
                        {"plan": plan_digest, "ft": cmp["finetune"], "gradual": cmp["gradual"]},
                    )
                else:
                    p_path = out / "pruned" / f"{name}.pth"
                    p_digest = self.step(
                        f"prune {name}",
                        p_path,
                        lambda p=plan, f=p_path: self._prune_plan(dense_path, p, f),
                        {"dense": self.dense_digest, "plan": plan_digest},
                    )
                    pmodel, _ = self.load(p_path)
                    before = self._evaluated(f"{name}-before", pmodel, splits, s)
                    run = {"name": method, "config": cmp["finetune"]}
                    self.step(
                        f"finetune {name}",
                        f_path,
                        lambda p=p_path, f=f_path, r=run, n=name: self._finetune(
                            p, f, r, splits, n
                        ),
                        {"pruned": p_digest, "ft": cmp["finetune"]},
                    )
                fmodel, fck = self.load(f_path)
                after = self._evaluated(name, fmodel, splits, s)
                e_path = out / "export" / f"{name}.plz"
                t_path = out / "export" / f"{name}.sizes.json"
                self.step(
                    f"export {name}",
                    t_path,
                    lambda m=fmodel, e=e_path, f=f_path, t=t_path: self._export(
                        m, e, dense_path, f, t
                    ),
                    {"model": str(f_path), "digest": _file_digest(f_path)},
                )
                table = json.loads(t_path.read_text())
                measured = sparsity_report(fmodel, scope=cmp["scope"], macs=False)
                nbytes = {r["key"]: r["bytes"] for r in table["rows"]}
                rows.append(
                    {
                        "method": method,
                        "label": METHODS[method],
                        "target": s,
                        "planned_sparsity": plan["achieved_overall"],
                        "sparsity": measured["prunable_sparsity"],
                        "layer_sparsity": {r["param"]: r["sparsity"] for r in measured["layers"]},
                        "summed_scan_drop": plan.get("summed_scan_drop"),
                        "accuracy_before": None if before is None else before["accuracy"],
                        "accuracy_after": after["accuracy"],
                        "f1_after": after["f1"],
                        "history": fck["meta"].get("history"),
                        "export_bytes": e_path.stat().st_size,
                        "export_fp16_bytes": nbytes["export_other"],
                        "plain_state_dict_bytes": nbytes["plain"],
                        "gzip_bytes": nbytes["gzip"],
                        "nonzero_bytes": nbytes["nonzero"],
                        "dense_checkpoint_bytes": nbytes["dense"],
                    }
                )
                sizes.append({"name": name, **table})
        results = {
            "recipe": {"name": rec["name"], "file": rec["file"], "description": rec["description"]},
            "kind": "compare",
            "dense": {
                "source": dense_ckpt["meta"].get("source", "trained by prunelab"),
                "model": self.model_spec,
                "width": getattr(dense, "width", None),
                "accuracy": dense_row["accuracy"],
                "checkpoint_bytes": dense_path.stat().st_size,
                "meta": light(dense_ckpt["meta"]),
            },
            "data": data_record(splits),
            "environment": environment(),
            "compare": json.loads(json.dumps(cmp, default=asdict)),
            "scan": {
                k: scan[k]
                for k in ("dense_accuracy", "sparsities", "split", "images", "seconds")
                if k in scan
            },
            "plans": plans,
            "rows": rows,
            "sizes": sizes,
            "published": {
                "before": {str(k): v for k, v in PUBLISHED["pruned"].items()},
                "sgd_after": {str(k): v for k, v in PUBLISHED["finetune"]["sgd"].items()},
                "label": PUBLISHED_LABEL,
            },
            "timings_seconds": self.timings,
            "seconds_total": time.perf_counter() - t0,
        }
        results["reading"] = _reading(results)
        plot_accuracy_vs_sparsity(results, out / "figures" / "accuracy_vs_sparsity.png")
        write_json(out / "results.json", results)
        write_text(out / "report.md", beyond_report(results))
        return results

    # ----- steps -----
    def _scan(self, model: Any, splits: Splits) -> None:
        """Per-layer scan on the validation split: plans must not be tuned on the test set."""
        sc, cmp = self.rec["compare"]["scan"], self.rec["compare"]
        x, y = scan_images(splits, "val", self.rec["data"].get("scan_subset"), self.rec)
        scan_to_folder(
            model,
            x,
            y,
            self.out / "sensitivity",
            figures=self.out / "figures",
            extra={"split": "val"},
            plots=("sensitivity",),
            sparsities=sc["sparsities"],
            scope=cmp["scope"],
            batch_size=sc["batch_size"],
            device=self.device,
            bf16=sc["bf16"],
            progress=self.progress,
        )

    def _plan(self, kind: str, s: float, model: Any, scan: dict[str, Any], path: Path) -> None:
        scope, p = self.rec["compare"]["scope"], self.rec["compare"]["plan"]
        if kind == "uniform":
            plan = uniform_plan(model, s, scope)
        elif kind == "global":
            plan = global_plan(model, s, scope, scan=scan)
        else:
            plan = sensitivity_plan(
                scan,
                model,
                s,
                scope,
                default_cap=p["default_cap"],
                first_last_cap=p["first_last_cap"],
                max_drop=p["max_drop"],
            )
        write_json(path, plan)

    def _prune_plan(self, dense_path: Path, plan: dict[str, Any], path: Path) -> None:
        spec = self.model_spec["name"]
        prune_checkpoint(
            dense_path,
            path,
            plan["plan"],
            scope=self.rec["compare"]["scope"],
            meta={
                "produced_by": "prunelab compare: prune",
                "method": plan["method"],
                "target_sparsity": plan["target"],
            },
            cache=self.cache,
            model=spec if ":" in spec else None,
        )

    def _export(
        self, model: Any, path: Path, dense_path: Path, ckpt_path: Path, table_path: Path
    ) -> None:
        """Write the compact file, then its size table (the step's 'done' marker)."""
        export_compressed(model, path)
        write_json(table_path, size_table(dense_path, ckpt_path, path, model))

    def _gradual(
        self, dense_path: Path, plan: dict[str, Any], path: Path, splits: Splits, name: str
    ) -> None:
        """Prune while fine-tuning, from the dense model, towards the sensitivity plan."""
        cmp, spec = self.rec["compare"], self.model_spec["name"]
        model, *_ = finetune_checkpoint(
            dense_path,
            path,
            splits,
            cmp["finetune"],
            target=plan["plan"],
            scope=cmp["scope"],
            gradual=dict(cmp["gradual"]),
            resume=self.interrupted(path),
            device=self.device,
            progress=self.progress,
            desc=f"gradual {name}",
            meta={"produced_by": "prunelab compare: gradual"},
            cache=self.cache,
            model=spec if ":" in spec else None,
        )
        _check_layers(model, plan["plan"], name)


def _file_digest(path: Path) -> str | None:
    return file_digest(path)[:16] if path.exists() else None


def _check_layers(model: torch.nn.Module, plan: dict[str, float], name: str) -> None:
    """Every layer has at least the planned zeros (more only through exact ties)."""
    params = dict(model.named_parameters())
    for p, s in plan.items():
        w = params[p]
        zeros = w.numel() - int(torch.count_nonzero(w))
        if zeros < round(w.numel() * s):
            raise PrunelabError(
                f"{name}: {p} has {zeros} zeros, the plan asks for {round(w.numel() * s)}"
            )


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _reading(r: dict[str, Any]) -> list[str]:
    """Which method wins at each sparsity, stated from the numbers."""
    out = []
    dense = r["dense"]["accuracy"]
    for s in r["compare"]["sparsities"]:
        here = [x for x in r["rows"] if x["target"] == s]
        best = max(here, key=lambda x: x["accuracy_after"])
        rest = ", ".join(
            f"{x['label']} {_pct(x['accuracy_after'])}%" for x in here if x is not best
        )
        out.append(
            f"At {s:.0%} overall sparsity, {best['label']} is best after fine-tuning: "
            f"{_pct(best['accuracy_after'])}% ({100 * (best['accuracy_after'] - dense):+.2f}"
            f" points vs dense{'; ' + rest if rest else ''})."
        )
    return out


def plot_accuracy_vs_sparsity(r: dict[str, Any], path: Path) -> None:
    """Test accuracy vs overall sparsity per method (after FT solid, before FT dashed), with
    the published study's points as markers."""
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    ax = fig.subplots()
    colors = dict(zip(METHODS, ["tab:blue", "tab:purple", "tab:orange", "tab:green"], strict=True))
    for method in r["compare"]["methods"]:
        rows = sorted((x for x in r["rows"] if x["method"] == method), key=lambda x: x["target"])
        xs = [x["sparsity"] for x in rows]
        ax.plot(
            xs,
            [100 * x["accuracy_after"] for x in rows],
            marker="o",
            color=colors[method],
            label=f"{METHODS[method]}, fine-tuned",
        )
        if rows and rows[0]["accuracy_before"] is not None:
            ax.plot(
                xs,
                [100 * x["accuracy_before"] for x in rows],
                marker="x",
                linestyle="--",
                color=colors[method],
                alpha=0.7,
                label=f"{METHODS[method]}, before FT",
            )
    ax.axhline(
        100 * r["dense"]["accuracy"],
        color="gray",
        linestyle=":",
        label=f"dense ({model_label(r['dense'])})",
    )
    pub = r["published"]
    ax.scatter(
        [float(k) for k in pub["before"]],
        [100 * v for v in pub["before"].values()],
        marker="^",
        s=60,
        color="black",
        zorder=5,
        label=f"{PUBLISHED_LABEL}, before FT",
    )
    ax.scatter(
        [float(k) for k in pub["sgd_after"]],
        [100 * v for v in pub["sgd_after"].values()],
        marker="*",
        s=120,
        color="black",
        zorder=5,
        label=f"{PUBLISHED_LABEL}, SGD fine-tuned",
    )
    ax.set_xlabel("overall sparsity of the conv weights (measured)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("accuracy vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    write_png(fig, path, dpi=110)


def _kib(b: int) -> str:
    return f"{b / 1024:.1f}"


def beyond_report(r: dict[str, Any]) -> str:
    """report.md from results.json's numbers."""
    cmp = r["compare"]
    ft = cmp["finetune"]
    dense_b = r["dense"]["checkpoint_bytes"]
    lines = [
        f"# prunelab comparison: {r['recipe']['name']}",
        "",
        r["recipe"].get("description", ""),
        "",
        f"- dense model: {r['dense']['source']} ({model_label(r['dense'])}), test accuracy "
        f"{_pct(r['dense']['accuracy'])}% on {r['data']['test_images']} test images",
        f"- data: {r['data']['source']} (fingerprint `{r['data']['fingerprint']}`); "
        f"{r['data']['train_images']} training, {r['data']['val_images']} validation images",
        f"- environment: Python {r['environment']['python']}, torch {r['environment']['torch']}, "
        f"{r['environment']['device']}",
        f"- sensitivity scan on the validation split ({r['scan'].get('images')} images, dense "
        f"{_pct(r['scan']['dense_accuracy'])}%), sparsities {r['scan']['sparsities']}",
        f"- every method: {ft['epochs']} epochs of {ft['optimizer']} (lr {ft['lr']}, "
        f"{ft['schedule']}), the last epoch's weights (no selection on validation)",
        f"- gradual: cubic schedule (Zhu & Gupta) from {cmp['gradual']['initial_sparsity']} to "
        f"the plan over the first {cmp['gradual']['prune_steps_fraction']:.0%} of the steps, "
        f"masks updated every {cmp['gradual']['prune_every']} steps, then frozen; it starts "
        "from the dense model, so it has no 'before FT' accuracy",
        f"- plans: caps {cmp['plan']['default_cap']} per layer, "
        f"{cmp['plan']['first_last_cap']} on the first and last layer"
        + (f", max drop per layer {cmp['plan']['max_drop']}" if cmp["plan"]["max_drop"] else ""),
        "",
        "## Accuracy and size",
        "",
        "| method | target | measured sparsity | before FT % | after FT % | Δ vs dense | "
        "export KiB (fp32) | export KiB (fp16) | x smaller than dense checkpoint |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    dense = r["dense"]["accuracy"]
    for x in r["rows"]:
        lines.append(
            f"| {x['label']} | {x['target']:.2f} | {x['sparsity']:.4f} | "
            f"{_pct(x['accuracy_before'])} | {_pct(x['accuracy_after'])} | "
            f"{100 * (x['accuracy_after'] - dense):+.2f} | {_kib(x['export_bytes'])} | "
            f"{_kib(x['export_fp16_bytes'])} | {dense_b / x['export_bytes']:.2f} |"
        )
    lines += [
        "",
        "![accuracy vs sparsity](figures/accuracy_vs_sparsity.png)",
        "",
        f"Markers: {PUBLISHED_LABEL}, uniform pruning before fine-tuning and after 5 epochs "
        "of SGD, for orientation only (another model and data).",
        "",
        "## Per-layer plans",
        "",
    ]
    kinds = [
        k
        for k in ("uniform", "global", "sensitivity")
        if any(p.startswith(f"{k}-") for p in r["plans"])
    ]
    cols = [(k, s) for s in cmp["sparsities"] for k in kinds if f"{k}-{tag(s)}" in r["plans"]]
    first = r["plans"][f"{cols[0][0]}-{tag(cols[0][1])}"]["plan"]
    lines += [
        "| layer | " + " | ".join(f"{k} {s:.2f}" for k, s in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for p in first:
        lines.append(
            f"| {p.removesuffix('.weight')} | "
            + " | ".join(f"{r['plans'][f'{k}-{tag(s)}']['plan'][p]:.3f}" for k, s in cols)
            + " |"
        )
    lines += [
        "| sum of scan drops alone (points) | "
        + " | ".join(_pct(r["plans"][f"{k}-{tag(s)}"].get("summed_scan_drop")) for k, s in cols)
        + " |",
        "",
        "Sum of scan drops alone: each layer's accuracy drop in the scan with that layer "
        "alone pruned (no fine-tuning), added up. It ranks plans (lower is better) but is no "
        "accuracy prediction: layers interact, and fine-tuning recovers most of it.",
        "",
        "![sensitivity](figures/sensitivity.png)",
        "",
        "## Export sizes",
        "",
        "| model | plain state dict KiB | gzip -9 KiB | non-zeros x 4 B KiB | export fp32 KiB "
        "| export fp16 KiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['method']}-{tag(x['target'])} | {_kib(x['plain_state_dict_bytes'])} "
            f"| {_kib(x['gzip_bytes'])} | {_kib(x['nonzero_bytes'])} | "
            f"{_kib(x['export_bytes'])} | {_kib(x['export_fp16_bytes'])} |"
        )
    last = r["sizes"][-1]
    lines += [
        "",
        f"Dense checkpoint: {_kib(dense_b)} KiB. Every way of storing `{last['name']}`:",
        "",
        format_size_table(last).rstrip(),
        "",
        "The fp32 export reloads with bit-identical outputs; fp16 halves the stored values "
        "(lossy). 'non-zeros x 4 B' is the study's figure: it leaves out where the non-zeros "
        "are, which a real file must store.",
        "",
        "## Reading the results",
        "",
        *[f"- {t}" for t in r["reading"]],
        "",
    ]
    return "\n".join(lines)
