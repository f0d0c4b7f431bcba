"""The study as resumable steps: dense model -> evaluate -> sensitivity -> prune ->
fine-tune -> report. Each step's output file is its 'done' marker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import PrunelabError
from ..fileio import write_json
from ..models import VGG, load_model, save_checkpoint
from ..pruning import Pruner, sparsity_report
from ..sensitivity import (
    plot_layer_params,
    plot_sensitivity,
    plot_weight_histograms,
    sensitivity_scan,
    write_scan,
)
from ..train import evaluate
from .report import PUBLISHED, plot_confusion_grid, plot_curves, write_report
from .steps import (
    Splits,
    data_record,
    environment,
    finetune,
    recipe_splits,
    state_path_for,
    summarize,
    train_dense,
)


def tag(s: float) -> str:
    return f"s{s:.2f}"


class Study:
    """Runs one recipe into one run folder."""

    def __init__(
        self,
        rec: dict[str, Any],
        data_dir: Any,
        out: Path,
        cache: Any,
        device: torch.device,
        progress: bool = True,
        fresh: bool = False,
    ):
        self.rec, self.data_dir, self.out, self.cache = rec, data_dir, out, cache
        self.device, self.progress, self.fresh = device, progress, fresh
        self.timings: dict[str, float] = {}

    # ----- step machinery -----
    @staticmethod
    def interrupted(output: Path) -> bool:
        """Whether a training step for `output` was stopped and left a state to resume from."""
        return state_path_for(output).exists()

    def step(self, name: str, output: Path, fn: Callable[[], Any]) -> None:
        """Run `fn` unless `output` already exists (a finished step); time it."""
        if output.exists() and not self.fresh:
            tqdm.write(f"[skip] {name}: {output} exists")
            return
        tqdm.write(f"[step] {name}")
        t0 = time.perf_counter()
        fn()
        self.timings[name] = time.perf_counter() - t0
        if not output.exists():
            raise PrunelabError(f"step {name} finished without writing {output}")

    def run(self) -> dict[str, Any]:
        rec, out = self.rec, self.out
        t0 = time.perf_counter()
        torch.manual_seed(rec["seed"])
        splits = recipe_splits(rec, self.data_dir, self.cache)
        dense_path, dense, dense_ckpt = self.dense_model(splits)
        rows = [self._evaluated("dense", dense, splits, 0.0)]
        sens = None
        if "sensitivity" in rec:
            sens_json = out / "sensitivity" / "sensitivity.json"
            self.step("sensitivity scan", sens_json, lambda: self._sensitivity(dense, splits))
            sens = json.loads(sens_json.read_text())
        scope = rec["prune"]["scope"]
        ft_rows, ft_runs, histories, confusions = [], [], {}, [("dense", rows[0]["cm"])]
        for s in rec["prune"]["sparsities"]:
            p_path = out / "pruned" / f"{tag(s)}.pth"
            self.step(f"prune {s:.2f}", p_path, lambda s=s, p=p_path: self._prune(dense_path, s, p))
            model, ck = load_model(p_path)
            row = self._evaluated(tag(s), model, splits, s)
            rows.append(row)
            confusions.append((f"{tag(s)} before fine-tuning", row["cm"]))
            after = {}
            for run in rec["finetune"]:
                name = f"{tag(s)}-{run['name']}"
                f_path = out / "finetune" / f"{name}.pth"
                self.step(
                    f"finetune {name}",
                    f_path,
                    lambda p=p_path, f=f_path, r=run, n=name: self._finetune(p, f, r, splits, n),
                )
                fmodel, fck = load_model(f_path)
                frow = self._evaluated(name, fmodel, splits, s)
                after[run["name"]] = frow["accuracy"]
                histories[name] = fck["meta"]["history"]
                ft_runs.append(
                    {
                        "name": name,
                        "optimizer": run["name"],
                        "target": s,
                        "sparsity_before": fck["meta"]["sparsity_before"],
                        "sparsity_after": fck["meta"]["sparsity_after"],
                        "best_epoch": fck["meta"].get("best_epoch"),
                        "epochs": run["config"].epochs,
                        "lr": run["config"].lr,
                        **{
                            k: frow[k]
                            for k in ("accuracy", "precision", "recall", "specificity", "f1")
                        },
                    }
                )
                if run["name"] == "sgd":
                    confusions.append((f"{name}", frow["cm"]))
            ft_rows.append({"target": s, "before": row["accuracy"], "after": after})
        figs = out / "figures"
        plot_confusion_grid(confusions, splits.classes, figs / "confusion.png")
        if histories:
            plot_curves(histories, figs / "finetune_curves.png")
        plot_weight_histograms(dense, figs / "weights_dense.png", title="dense weights")
        last_pruned = load_model(out / "pruned" / f"{tag(rec['prune']['sparsities'][-1])}.pth")[0]
        plot_weight_histograms(
            last_pruned,
            figs / "weights_pruned.png",
            title=f"non-zero weights at {rec['prune']['sparsities'][-1]:.2f}",
        )
        results = {
            "recipe": {"name": rec["name"], "file": rec["file"], "description": rec["description"]},
            "dense": {
                "source": dense_ckpt["meta"].get("source", "trained by prunelab"),
                "width": dense.width,
                "meta": _light(dense_ckpt["meta"]),
            },
            "data": data_record(splits),
            "environment": environment(),
            "scope": scope,
            "models": [{k: v for k, v in r.items() if k != "cm"} for r in rows],
            "finetune": ft_rows,
            "finetune_optimizers": [r["name"] for r in rec["finetune"]],
            "finetune_runs": ft_runs,
            "sensitivity": _sens_summary(sens),
            "published": {
                "dense": PUBLISHED["dense"],
                "pruned": {str(k): v for k, v in PUBLISHED["pruned"].items()},
                "finetune": {
                    o: {str(k): v for k, v in d.items()} for o, d in PUBLISHED["finetune"].items()
                },
            },
            "timings_seconds": self.timings,
            "seconds_total": time.perf_counter() - t0,
        }
        results["reading"] = reading(results)
        results["differences"] = differences(results, rec)
        write_json(out / "results.json", results)
        write_report(out, results)
        return results

    # ----- steps -----
    def dense_model(self, splits: Splits) -> tuple[Path, VGG, dict[str, Any]]:
        """The dense model: trained (or fetched) by the first run, read back by later ones."""
        path = self.out / "dense" / "model.pth"
        self.step("dense model", path, lambda: self._dense(splits, path))
        return (path, *load_model(path))

    def _dense(self, splits: Splits, path: Path) -> None:
        d = self.rec["dense"]
        if d["checkpoint"]:
            try:
                model, ck = load_model(d["checkpoint"], self.cache)
            except PrunelabError as e:
                if not d["checkpoint"].startswith(("http://", "https://")):
                    raise
                tqdm.write(f"dense checkpoint unreachable ({e}); training one instead")
            else:
                meta = dict(ck.get("meta", {}))
                meta["source"] = f"checkpoint {d['checkpoint']}"
                save_checkpoint(path, model, meta)
                return
        train_dense(
            splits,
            d["width"],
            d["train"],
            path,
            device=self.device,
            resume=self.interrupted(path),
            progress=self.progress,
        )

    def _sensitivity(self, model: VGG, splits: Splits) -> None:
        s = self.rec["sensitivity"]
        x, y = splits.split(s["split"])
        res = sensitivity_scan(
            model,
            x,
            y,
            sparsities=s["sparsities"],
            scope=self.rec["prune"]["scope"],
            device=self.device,
            bf16=s["bf16"],
            progress=self.progress,
        )
        res["split"], res["images"] = s["split"], len(y)
        figs = self.out / "figures"
        plot_sensitivity(res, figs / "sensitivity.png")
        plot_layer_params(model, figs / "layer_params.png")
        write_scan(
            res,
            self.out / "sensitivity" / "sensitivity.json",
            self.out / "sensitivity" / "sensitivity.csv",
        )

    def _prune(self, dense_path: Path, s: float, path: Path) -> None:
        model, ck = load_model(dense_path)
        pruner = Pruner(model, s, scope=self.rec["prune"]["scope"])
        pruner.apply()
        meta = dict(ck["meta"])
        meta.update(
            {
                "produced_by": "prunelab run: prune",
                "target_sparsity": s,
                "sparsity": sparsity_report(model)["prunable_sparsity"],
                "layers": pruner.report(),
            }
        )
        save_checkpoint(path, model, _light(meta), masks=pruner.masks)

    def _finetune(
        self, pruned: Path, path: Path, run: dict[str, Any], splits: Splits, name: str
    ) -> None:
        model, ck = load_model(pruned)
        pruner = Pruner.from_masks(model, ck["masks"])
        res, sp = finetune(
            model,
            pruner,
            splits,
            run["config"],
            out=path,
            resume=self.interrupted(path),
            device=self.device,
            progress=self.progress,
            desc=f"finetune {name}",
        )
        meta = dict(_light(ck["meta"]))
        meta.update(
            {
                "produced_by": "prunelab run: finetune",
                "history": res.history,
                "best_epoch": res.best_epoch,
                **sp,
                "seconds": res.seconds,
            }
        )
        save_checkpoint(path, model, meta, masks=pruner.masks)
        state_path_for(path).unlink(missing_ok=True)

    def _evaluated(self, name: str, model: VGG, splits: Splits, target: float) -> dict[str, Any]:
        """Test metrics of a model, cached with its predictions in eval/<name>.json."""
        path = self.out / "eval" / f"{name}.json"
        if path.exists() and not self.fresh:
            m = json.loads(path.read_text())
        else:
            ev = self.rec["evaluate"]
            m = evaluate(
                model,
                splits.test_x,
                splits.test_y,
                len(splits.classes),
                batch_size=ev["batch_size"],
                device=self.device,
                bf16=ev["bf16"],
                progress=self.progress,
                desc=f"evaluate {name}",
            )
            rep = sparsity_report(model)
            m["predictions"] = m["predictions"].tolist()
            m["sparsity"] = rep["prunable_sparsity"]
            nonzero = rep["model_params"] * (1 - rep["model_sparsity_all_params"])
            m["nonzero_mib"] = nonzero * 4 / 2**20  # every parameter, non-zeros at fp32
            write_json(path, m)
        row = {
            "name": name,
            "target": target,
            **summarize(m),
            "sparsity": m["sparsity"],
            "nonzero_mib": m["nonzero_mib"],
            "predictions_file": str(path.relative_to(self.out)),
            "cm": m["confusion_matrix"],
        }
        return row


def _light(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata without bulky entries (histories of parents), for copying into children."""
    return {k: v for k, v in meta.items() if k not in ("history",)}


def _sens_summary(sens: dict[str, Any] | None) -> dict[str, Any] | None:
    if sens is None:
        return None
    return {
        k: sens[k]
        for k in ("dense_accuracy", "sparsities", "layers", "split", "images", "seconds")
        if k in sens
    }


def reading(r: dict[str, Any]) -> list[str]:
    """A few plain sentences computed from the numbers."""
    dense = r["models"][0]["accuracy"]
    out = [f"The dense model scores {100 * dense:.2f}% on {r['data']['test_images']} test images."]
    for m in r["models"][1:]:
        out.append(
            f"Pruning every convolution to {m['target']:.0%} (measured "
            f"{m['sparsity']:.4f}) costs {100 * (dense - m['accuracy']):.2f} points before "
            f"fine-tuning ({100 * m['accuracy']:.2f}%)."
        )
    for f in r["finetune"]:
        for opt, acc in f["after"].items():
            out.append(
                f"At {f['target']:.0%}, fine-tuning with {opt} gives {100 * acc:.2f}% "
                f"({100 * (acc - dense):+.2f} points vs dense, "
                f"{100 * (acc - f['before']):+.2f} vs before fine-tuning)."
            )
    s = r.get("sensitivity")
    if s and s.get("layers"):
        last = {n: v["accuracy"][-1] for n, v in s["layers"].items()}
        worst = min(last, key=last.get)
        best = max(last, key=last.get)
        top = s["sparsities"][-1]
        out.append(
            f"Pruned alone to {top:.0%}, {worst} is the most sensitive layer "
            f"({100 * last[worst]:.2f}%) and {best} the least ({100 * last[best]:.2f}%)."
        )
    return out


def differences(r: dict[str, Any], rec: dict[str, Any]) -> list[str]:
    """Where this run's setting differs from the published study's, stated plainly."""
    out = []
    if "cifar10-jpeg" in r["data"]["source"] or "image-folder" in r["data"]["source"]:
        out.append(
            "Data: CIFAR-10 re-encoded as JPEG (quality 75), not the official lossless "
            "images; accuracies are a little lower for the same model."
        )
    if r["dense"]["width"] != 1.0:
        out.append(
            f"Model: a VGG of width {r['dense']['width']} "
            f"(channel counts x{r['dense']['width']}), not the full-width VGG."
        )
    if not r["dense"]["source"].startswith("checkpoint"):
        out.append(
            "Checkpoint: the dense model was trained by prunelab, not the study's "
            "pretrained file (which cannot be downloaded here)."
        )
    for run in rec["finetune"]:
        if run["config"].epochs != 5:
            out.append(
                f"Fine-tuning {run['name']}: {run['config'].epochs} epochs instead of the "
                "study's 5, to fit the time budget."
            )
    out.append(
        "Evaluation: each model with its BatchNorm folded into the convolutions "
        f"({'bf16' if rec['evaluate']['bf16'] else 'fp32'}); the same model to fp32 rounding, "
        "so a prediction can flip only on a near-exact tie (`prunelab evaluate --no-fold-bn` "
        "runs it unfolded)."
    )
    out.append(
        "The published table repeats the 0.5 row's precision, recall and specificity for "
        "0.6; here every row is computed from its own predictions."
    )
    return out
