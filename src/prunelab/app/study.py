"""The study as resumable steps: dense model -> evaluate -> sensitivity -> prune ->
fine-tune -> report. Each step's output file is its 'done' marker."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..channels import channel_scan
from ..data import subset
from ..errors import PrunelabError
from ..export import export_compressed
from ..fileio import write_json
from ..latency import TIMING, measure_latency
from ..models import load_model, save_checkpoint
from ..pruning import sparsity_report
from ..safeload import load_tensors
from ..sensitivity import plot_weight_histograms
from .recipes import step_tag
from .report import PUBLISHED, model_label, plot_confusion_grid, plot_curves, write_report
from .steps import (
    Splits,
    calibration_images,
    data_record,
    environment,
    evaluate_on,
    finetune_checkpoint,
    light,
    norm,
    prune_checkpoint,
    recipe_splits,
    recovery,
    recovery_config,
    scan_to_folder,
    state_path_for,
    summarize,
    train_dense,
)
from .validation_check import seen_validation, seen_warning


def tag(s: float) -> str:
    """A sparsity in file names: s0.40 (more digits only where two decimals are not exact)."""
    return step_tag(s)


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
        self.dense_source = ""  # where the dense model came from: its record, once read
        self.timings: dict[str, float] = {}

    # ----- step machinery -----
    @staticmethod
    def interrupted(output: Path) -> bool:
        """Whether a training step for `output` was stopped and left a state to resume from."""
        return state_path_for(output).exists()

    def step(
        self,
        name: str,
        output: Path,
        fn: Callable[[], Any],
        settings: dict[str, Any],
        older: dict[str, Any] | None = None,
    ) -> str:
        """Run `fn` unless `output` exists and was made with the same `settings`; time it.

        Each output has a `<output>.settings.json` beside it; a step whose settings changed
        is redone, saying so. Returns the settings' digest, which child steps include in
        theirs, so editing a parent step redoes everything made from it. `older`: the
        settings an earlier prunelab keyed this step by, still accepted, so that changing
        a step's key does not redo the run folders made before."""
        accepted = {settings_digest(settings)}
        if older is not None:
            accepted |= {settings_digest(older), settings_digest(run_relative(older, self.out))}
        settings = run_relative(settings, self.out)
        digest = settings_digest(settings)
        record = output.with_name(output.name + ".settings.json")
        old = json.loads(record.read_text()) if record.exists() else None
        # records made before settings named paths relative to the run folder still match
        same = old is not None and old.get("digest") in accepted | {digest}
        if output.exists() and not self.fresh:
            if same:
                tqdm.write(f"[skip] {name}: {output} exists, same settings")
                return old["digest"]  # the digest its child steps were made with
            why = changed_setting(old.get("settings") if old else None, settings)
            tqdm.write(f"[redo] {name}: {why}")
            output.unlink()
        state = state_path_for(output)
        if state.exists() and not same:
            # a stopped step's state is only resumed under the settings it was started with
            # (recorded below before the step runs): other settings start it again
            tqdm.write(f"[redo] {name}: its stopped state was made with other settings")
            state.unlink()
        # written once, before the step: outputs are written atomically, so an output that
        # exists is complete, and this record names the settings it was made with
        write_json(record, {"digest": digest, "settings": plain(settings)})
        if state.exists() and not self.fresh:
            try:
                saved = load_tensors(state, "training state")
                where = f"epoch {saved['epoch'] + 1}, batch {saved['batch']}"
            except (PrunelabError, KeyError, TypeError):
                where = "its saved state"
            tqdm.write(f"[resume] {name}: from {state} ({where})")
        else:
            tqdm.write(f"[step] {name}")
        t0 = time.perf_counter()
        fn()
        self.timings[name] = time.perf_counter() - t0
        if not output.exists():
            raise PrunelabError(f"step {name} finished without writing {output}")
        return digest

    def export_bytes(self, model: Any, path: Path) -> int:
        """The size of `model` in prunelab's compact export, written to `path` every time: a
        model remade under the same name must not be reported at its old size."""
        return export_compressed(model, path, arch=getattr(model, "prunelab_arch", None))["bytes"]

    def load(self, path: Path | str) -> tuple[Any, dict[str, Any]]:
        """Read back a model this run wrote (a user's module:factory is named by the recipe)."""
        m = self.model_spec
        return load_model(path, self.cache, model=m["name"] if ":" in m["name"] else None)

    @property
    def model_spec(self) -> dict[str, Any]:
        return self.rec["model"]

    @property
    def user_spec(self) -> str | None:
        """The recipe's module:factory, which checkpoints of a user's model are loaded with."""
        name = self.model_spec["name"]
        return name if ":" in name else None

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
            self.step(
                "sensitivity scan",
                sens_json,
                lambda: self._sensitivity(dense, splits),
                {"dense": self.dense_digest, "scan": rec["sensitivity"], "data": rec["data"]},
            )
            sens = json.loads(sens_json.read_text())
        scope = rec["prune"]["scope"]
        ft_rows, ft_runs, histories, confusions = [], [], {}, [("dense", rows[0]["cm"])]
        pruned: dict[str, tuple[Path, str]] = {}
        for s in rec["prune"]["sparsities"]:
            p_path = out / "pruned" / f"{tag(s)}.pth"
            p_digest = self.step(
                f"prune {s:.2f}",
                p_path,
                lambda s=s, p=p_path: self._prune(dense_path, s, p),
                {"dense": self.dense_digest, "sparsity": s, "scope": scope},
            )
            pruned[tag(s)] = (p_path, p_digest)
            model, ck = self.load(p_path)
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
                    {"pruned": p_digest, "config": run["config"], "data": rec["data"]},
                )
                fmodel, fck = self.load(f_path)
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
        latency = self._pruned_latency(dense_path, pruned)
        figs = out / "figures"
        plot_confusion_grid(confusions, splits.classes, figs / "confusion.png")
        if histories:
            plot_curves(histories, figs / "finetune_curves.png")
        plot_weight_histograms(dense, figs / "weights_dense.png", title="dense weights")
        last_pruned = self.load(out / "pruned" / f"{tag(rec['prune']['sparsities'][-1])}.pth")[0]
        plot_weight_histograms(
            last_pruned,
            figs / "weights_pruned.png",
            title=f"non-zero weights at {rec['prune']['sparsities'][-1]:.2f}",
        )
        results = {
            **self.results_head(dense, dense_ckpt, splits),
            "scope": scope,
            "models": [{k: v for k, v in r.items() if k != "cm"} for r in rows],
            "finetune": ft_rows,
            "finetune_optimizers": [r["name"] for r in rec["finetune"]],
            "finetune_runs": ft_runs,
            "sensitivity": _sens_summary(sens),
            "latency": latency,
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
    def dense_model(self, splits: Splits) -> tuple[Path, Any, dict[str, Any]]:
        """The dense model: trained (or read from a checkpoint) by the first run, read back by
        later ones."""
        path = self.out / "dense" / "model.pth"
        d = self.rec["dense"]
        settings = {"model": self.model_spec, "train": d["train"], "data": self.rec["data"]}
        self.dense_digest = self.step(
            "dense model", path, lambda: self._dense(splits, path), settings
        )
        model, ck = self.load(path)
        self.dense_source = str(ck["meta"].get("source", ""))
        return path, model, ck

    def _dense(self, splits: Splits, path: Path) -> None:
        m = self.model_spec
        if m["checkpoint"]:
            spec = m["name"] if ":" in m["name"] else None
            try:
                model, ck = load_model(m["checkpoint"], self.cache, model=spec)
            except PrunelabError as e:
                if not m["checkpoint"].startswith(("http://", "https://")):
                    raise
                tqdm.write(f"dense checkpoint unreachable ({e}); training one instead")
            else:
                meta = dict(ck.get("meta", {}))
                meta["source"] = f"checkpoint {m['checkpoint']}"
                save_checkpoint(path, model, meta)
                return
        train_dense(
            splits,
            m["name"],
            self.rec["dense"]["train"],
            path,
            device=self.device,
            resume=self.interrupted(path),
            progress=self.progress,
            model_args=m["kwargs"],
            normalize=self.rec["data"].get("normalize"),
        )

    def _sensitivity(self, model: Any, splits: Splits) -> None:
        s = self.rec["sensitivity"]
        x, y = scan_images(splits, s["split"], self.rec["data"].get("scan_subset"), self.rec)
        res = scan_to_folder(
            model,
            x,
            y,
            self.out / "sensitivity",
            figures=self.out / "figures",
            extra={"split": s["split"]},
            sparsities=s["sparsities"],
            scope=self.rec["prune"]["scope"],
            device=self.device,
            bf16=s["bf16"],
            progress=self.progress,
        )
        self.validation_check(
            model, splits, s["split"], res["dense_accuracy"], len(y), "sensitivity scan"
        )

    def _prune(self, dense_path: Path, s: float, path: Path) -> None:
        spec = self.model_spec["name"]
        prune_checkpoint(
            dense_path,
            path,
            s,
            scope=self.rec["prune"]["scope"],
            meta={"produced_by": "prunelab run: prune", "target_sparsity": s},
            cache=self.cache,
            model=spec if ":" in spec else None,
        )

    def _finetune(
        self, pruned: Path, path: Path, run: dict[str, Any], splits: Splits, name: str
    ) -> None:
        spec = self.model_spec["name"]
        finetune_checkpoint(
            pruned,
            path,
            splits,
            run["config"],
            resume=self.interrupted(path),
            device=self.device,
            progress=self.progress,
            desc=f"finetune {name}",
            meta={"produced_by": "prunelab run: finetune"},
            cache=self.cache,
            model=spec if ":" in spec else None,
        )

    def _pruned_latency(
        self, dense_path: Path, pruned: dict[str, tuple[Path, str]]
    ) -> dict[str, Any]:
        """Dense and every pruned model timed (batch 1 and 64): what fine-grained masks do to
        speed, measured rather than said."""
        return self.timed(dense_path, pruned, {}, key="pruned", batch_sizes=(1, 64))

    def timed(
        self,
        dense_path: Path,
        models: dict[str, tuple[Path, str]],
        settings: dict[str, Any],
        key: str = "models",
        **kw: Any,
    ) -> dict[str, Any]:
        """The step writing latency.json: the dense model and `models` {name: (checkpoint
        this run wrote, digest of the step that wrote it)} timed interleaved in one run by
        prunelab.latency.measure_latency(**kw). The step's settings name the models by
        their digests (under `key`), not their paths: a model remade at the same path is
        timed again."""
        path = self.out / "latency.json"
        settings = {
            **settings,
            "dense": self.dense_digest,
            key: {k: d for k, (_, d) in models.items()},
            "timing": TIMING,  # a run timed cold before is timed again
        }
        self.step(
            "latency (interleaved, eager fp32)",
            path,
            lambda: write_json(
                path,
                measure_latency(
                    {"dense": self.load(dense_path)[0]}
                    | {k: self.load(p)[0] for k, (p, _) in models.items()},
                    **kw,
                ),
            ),
            settings,
        )
        return json.loads(path.read_text())

    def results_head(self, dense: Any, dense_ckpt: dict[str, Any], splits: Splits) -> dict:
        """What every results.json starts with: the recipe, the dense model, data, machine."""
        rec = self.rec
        return {
            "recipe": {"name": rec["name"], "file": rec["file"], "description": rec["description"]},
            "dense": {
                "source": dense_ckpt["meta"].get("source", "trained by prunelab"),
                "model": self.model_spec,
                "width": getattr(dense, "width", None),
                "meta": light(dense_ckpt["meta"]),
            },
            "data": data_record(splits),
            "environment": environment(),
        }

    def channel_scan_to(self, model: Any, splits: Splits, path: Path, cfg: dict) -> None:
        """The channel scan of a [channels] or [goals] table (cfg: its "scan" and
        "importance") on the validation split, BatchNorm re-estimated per probe, to `path`."""
        x, y = scan_images(splits, "val", self.rec["data"].get("scan_subset"), self.rec)
        res = channel_scan(
            model,
            x,
            y,
            ratios=cfg["scan"]["ratios"],
            importance=cfg["importance"],
            normalize=norm(model),
            progress=self.progress,
            calibrate=calibration_images(splits, cfg["scan"]["calibrate"], self.rec["seed"]),
            recover=recovery(
                splits,
                cfg["scan"].get("recover", 0),
                scan_recovery(cfg),
                norm(model),
                self.device,
            ),
        )
        res["images"] = len(y)
        check = self.validation_check(
            model, splits, "val", res["dense_accuracy"], len(y), "channel scan"
        )
        if check is not None:
            res["validation_check"] = check
        write_json(path, res)

    def validation_check(
        self, model: Any, splits: Splits, split: str, accuracy: float, images: int, scan: str
    ) -> dict[str, Any] | None:
        """For a scan on validation images with a dense model read from a checkpoint (which
        may have trained on them: app.validation_check), its test accuracy beside the scan's,
        with a warning in the log when the gap says so; None when there is nothing to check."""
        # _dense records a checkpoint it read so; one it trained (the checkpoint's URL could
        # not be reached) never saw the validation images
        if split not in ("val", "validation") or not self.dense_source.startswith("checkpoint "):
            return None
        test = scan_images(splits, "test", images, self.rec)
        check = seen_validation(model, test, len(splits.classes), accuracy, images, norm(model))
        line = seen_warning(check, scan)
        if line:
            tqdm.write(f"prunelab: {line}")
        return check

    def _evaluated(self, name: str, model: Any, splits: Splits, target: float) -> dict[str, Any]:
        """Test metrics of a model, cached with its predictions in eval/<name>.json under a
        digest of its weights and the evaluation settings: a model remade under the same
        name (an edited fine-tune, say) is evaluated again, never reported at its old score."""
        path = self.out / "eval" / f"{name}.json"
        ev = self.rec["evaluate"]

        def measure() -> None:
            m = evaluate_on(
                model,
                splits,
                batch_size=ev["batch_size"],
                device=self.device,
                bf16=ev["bf16"],
                progress=self.progress,
                desc=f"evaluate {name}",
            )
            rep = sparsity_report(model, macs=False)
            m["predictions"] = m["predictions"].tolist()
            m["sparsity"] = rep["prunable_sparsity"]
            nonzero = rep["model_params"] * (1 - rep["model_sparsity_all_params"])
            m["nonzero_mib"] = nonzero * 4 / 2**20  # every parameter, non-zeros at fp32
            write_json(path, m)

        key = {"weights": weights_digest(model), "evaluate": ev, "data": splits.fingerprint}
        self.step(f"evaluate {name}", path, measure, key)
        m = json.loads(path.read_text())
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


def scan_images(
    splits: Splits, split: str, n: int | None, rec: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images a scan runs on: a split, or a seeded class-balanced subset of it."""
    x, y = splits.split(split)
    if n and n < len(y):
        x, y = subset(x, y, n, seed=rec["seed"])
    return x, y


def run_relative(settings: Any, run: Path) -> Any:
    """Settings with paths inside the run folder written as "{run}/...", so a run folder
    that is copied or moved elsewhere still matches its records (plain JSON types out)."""
    prefix = os.path.join(str(run), "")

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str) and v.startswith(prefix):
            return "{run}/" + v[len(prefix) :]
        return v

    return walk(plain(settings))


def scan_recovery(cfg: dict[str, Any]) -> Any:
    """The recovery fine-tune of a [channels] or [goals] table's scan (None when its scan
    has no `recover`): part of the scan step's settings only then, so older runs match."""
    scan = cfg["scan"]
    if not scan.get("recover"):
        return None
    return recovery_config(cfg["finetune"], scan.get("recover_lr", 0.01))


def recovery_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a scan step's settings add for its recovery: nothing without one."""
    rc = scan_recovery(cfg)
    return {} if rc is None else {"recover": cfg["scan"]["recover"], "recover_ft": rc}


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plain(settings), sort_keys=True).encode()).hexdigest()[:16]


def weights_digest(model: torch.nn.Module) -> str:
    """A short sha256 over every parameter and buffer (names, shapes, dtypes and bytes): what
    identifies a model whose evaluation is cached, whatever step or file it came from."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def plain(obj: Any) -> Any:
    """Settings as JSON types (dataclasses become dicts)."""
    return json.loads(json.dumps(obj, default=lambda o: asdict(o) if is_dataclass(o) else str(o)))


def changed_setting(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Say which setting differs between two runs of a step (first difference found)."""
    if old is None:
        return "no settings record beside its output (made by an older prunelab)"
    old, new = _flat(old), _flat(plain(new))
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return f"settings changed ({k}: {old.get(k)!r} -> {new.get(k)!r})"
    return "settings changed"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


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
    if r["dense"].get("model", {}).get("name", "vgg") != "vgg":
        out.append(f"Model: {model_label(r['dense'])}, not the study's VGG.")
    elif r["dense"]["width"] != 1.0:
        out.append(
            f"Model: a VGG of width {r['dense']['width']} "
            f"(channel counts x{r['dense']['width']}), not the full-width VGG."
        )
    if not r["dense"]["source"].startswith("checkpoint"):
        out.append(
            "Checkpoint: the dense model was trained by prunelab, not the study's pretrained file."
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
