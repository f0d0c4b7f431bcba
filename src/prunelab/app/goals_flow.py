"""Speed-up goals, measured: a faster model within an accuracy bound, against two references.

For each target {batch_size, speedup, max_drop}: a sensitivity-guided channel plan whose
pruned model is timed at least `speedup` x faster than the dense one (latency_target_plan,
aiming `margin` higher so the final run's noise does not decide the verdict), and
Torch-Pruning's own uniform pruner at the same MACs (app.peer). All models are timed in one
interleaved run before any fine-tuning (fine-tuning changes weights, not shapes; a quiet CPU
matters more than anything else for timing). Then every pruned model is fine-tuned with the
same budget for each seed, and so is the dense model itself (the control: extra epochs alone
may raise it, so the bound is checked against it as well as against dense).

A recipe with a [goals] table runs this instead of the study; steps resume and are redone
when their settings change, as in `Study`.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from ..accounting import count_macs, count_params
from ..channels import prune_channels
from ..channels.latency_plan import latency_target_plan
from ..channels.timing_log import stored_timings
from ..errors import StoredTimingsError
from ..fileio import write_json, write_png, write_text
from ..latency import TIMING
from ..latency_report import format_latency_table, p_text, paired_rounds
from ..models import read_checkpoint, save_checkpoint
from .peer import peer_at_macs, peer_meta
from .report import data_and_machine, model_label
from .steps import (
    evaluate_on,
    finetune_checkpoint,
    light,
    recipe_splits,
)
from .study import Study, recovery_settings

# the [goals] settings a latency plan is made with: passed to latency_target_plan by these
# names and recorded in the plan step's settings, so the two can never disagree
PLAN_KEYS = ("importance", "round_to", "max_ratio", "threads", "band", "step")


def plan_options(g: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The PLAN_KEYS settings for one target: [goals]'s, with the target's own round_to and
    widen. widen and rank_energy only when on: a plan made before the option keeps its
    settings (and step)."""
    opts = {**{k: g[k] for k in PLAN_KEYS}, "round_to": target.get("round_to", g["round_to"])}
    widen = target.get("widen", g.get("widen", 0))
    if widen:
        opts["widen"] = widen
    if g.get("rank_energy") is not None:
        opts["rank_energy"] = g["rank_energy"]
    return opts


def earlier_timings(plan_path: Path) -> dict[str, Any] | None:
    """The timing log of the plan a rerun is about to remake, if it has a readable one."""
    try:
        return dict(stored_timings(json.loads(plan_path.read_text())))
    except (OSError, ValueError, StoredTimingsError):
        return None


class GoalsStudy(Study):
    """The [goals] benchmark as resumable steps on the recipe's dense model."""

    def run(self) -> dict[str, Any]:
        rec, out, g = self.rec, self.out, self.rec["goals"]
        t0 = time.perf_counter()
        torch.manual_seed(rec["seed"])
        splits = recipe_splits(rec, self.data_dir, self.cache)
        dense_path, dense, dense_ckpt = self.dense_model(splits)
        scan_path = out / "goals" / "scan.json"
        scan_digest = self.step(
            "channel sensitivity scan",
            scan_path,
            lambda: self.channel_scan_to(dense, splits, scan_path, g),
            {
                "dense": self.dense_digest,
                "scan": {"ratios": g["scan"]["ratios"]},
                "imp": g["importance"],
                "calibrate": g["scan"]["calibrate"],
                **recovery_settings(g),
            },
        )
        scan = json.loads(scan_path.read_text())
        # name -> (checkpoint, digest of the step that made it: what its children depend on)
        pruned: dict[str, tuple[Path, str]] = {}
        plans: dict[str, Any] = {}
        for t in g["targets"]:
            b = t["batch_size"]
            plan_path = out / "goals" / f"plan-b{b}.json"
            settings = {
                "scan": scan_digest,
                "speedup": t["speedup"] * g["margin"],
                "b": b,
                **plan_options(g, t),
                "timing": TIMING,  # the search's timings (prunelab.latency); cold before
            }
            earlier = None if self.fresh else earlier_timings(plan_path)
            digest = self.step(
                f"latency plan batch {b}",
                plan_path,
                lambda t=t, p=plan_path, e=earlier: write_json(p, self._plan(dense, scan, t, e)),
                settings,
            )
            plans[f"guided-b{b}"] = json.loads(plan_path.read_text())
            p_path = out / "pruned" / f"guided-b{b}.pth"
            # the pruned models are keyed by what the plan says, not by how it was made: a
            # plan remade with other settings but the same ratios (a widening that found no
            # room) leaves them, and the hours of fine-tuning below them, as they are
            plan = plans[f"guided-b{b}"]
            pruned[f"guided-b{b}"] = (
                p_path,
                self.step(
                    f"prune guided batch {b}",
                    p_path,
                    lambda p=p_path, pl=plan: self._prune(dense_path, pl, p),
                    {
                        "dense": self.dense_digest,
                        "plan": plan["plan"],
                        "round_to": plan["round_to"],
                        "imp": g["importance"],
                    },
                    older={"plan": digest},
                ),
            )
            if g["peer"]:
                peer_path = out / "pruned" / f"peer-b{b}.pth"
                macs = plan["macs"]
                pruned[f"peer-b{b}"] = (
                    peer_path,
                    self.step(
                        f"Torch-Pruning uniform at {macs:,} MACs",
                        peer_path,
                        lambda p=peer_path, m=macs: self._peer(dense_path, m, p),
                        {"dense": self.dense_digest, "macs": macs},
                        older={"plan": digest, "macs": macs},
                    ),
                )
        latency = self._latency(dense_path, pruned)
        # every model, the control too, for every seed: the verdicts compare means over the
        # same seeds, since a seed fixes the data order and augmentation every model sees
        # (docs/goals/findings.md: how far apart seeds 0 and 1 came out). Seed by seed, the
        # control first: a stopped run has whole seeds to compare.
        jobs = {"control": (dense_path, self.dense_digest, None)} if g["control"] else {}
        jobs.update({name: (p, digest, dense_path) for name, (p, digest) in pruned.items()})
        runs: dict[str, dict[int, Path]] = {}
        for seed in g["seeds"]:
            for name, (src, parent, teacher) in jobs.items():
                runs.setdefault(name, {})[seed] = self._finetune_seed(
                    name, src, parent, seed, splits, teacher
                )
        rows = [self._row("dense", dense_path, {}, splits, latency)]
        for name in runs:
            src = dense_path if name == "control" else pruned[name][0]
            rows.append(self._row(name, src, runs[name], splits, latency))
        results = {
            **self.results_head(dense, dense_ckpt, splits),
            "kind": "goals",
            "goals": json.loads(json.dumps(g, default=lambda o: o.__dict__)),
            "plans": plans,
            "validation_check": scan.get("validation_check"),
            "rows": rows,
            "latency": latency,
            "timings_seconds": self.timings,
            "seconds_total": time.perf_counter() - t0,
        }
        results["verdicts"] = verdicts(results)
        plot_goals(results, out / "figures" / "goals_accuracy_vs_latency.png")
        write_json(out / "results.json", results)
        write_text(out / "report.md", goals_report(results))
        return results

    # ----- steps -----
    def _plan(
        self, dense: Any, scan: Any, t: dict[str, Any], earlier: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The target's latency plan; a plan remade after a settings change reads what the
        earlier plan timed (its timing log) where the two share a model, rather than letting
        timing noise alone move the plan. Deleting the plan file times everything afresh."""
        g, b = self.rec["goals"], t["batch_size"]
        opts = {"batch_size": b, **plan_options(g, t)}
        goal = t["speedup"] * g["margin"]
        if earlier is not None:
            try:
                res = latency_target_plan(dense, scan, goal, timings=earlier, **opts)
            except StoredTimingsError as e:
                tqdm.write(f"[plan] batch {b}: the earlier plan's timings do not fit ({e})")
            else:
                log = res["timing_log"]
                tqdm.write(
                    f"[plan] batch {b}: {log['reused']} timings read from the earlier plan, "
                    f"{log['timed']} measured"
                )
                return res
        return latency_target_plan(dense, scan, goal, **opts)

    def _prune(self, dense_path: Path, plan: dict[str, Any], path: Path) -> None:
        g = self.rec["goals"]
        model, ck = self.load(dense_path)
        kept = prune_channels(
            model, plan["plan"], importance=g["importance"], round_to=plan["round_to"]
        )
        meta = {
            **light(ck["meta"]),
            "produced_by": "prunelab goals: guided",
            "channel_plan": plan["plan"],
            "kept_channels": kept,
        }
        save_checkpoint(path, model, meta)

    def _peer(self, dense_path: Path, macs: int, path: Path) -> None:
        model, ck = self.load(dense_path)
        peer, ratio = peer_at_macs(model, macs)
        save_checkpoint(path, peer, {**light(ck["meta"]), **peer_meta(peer, ratio)})

    def _latency(self, dense_path: Path, models: dict[str, tuple[Path, str]]) -> dict[str, Any]:
        """Dense and every pruned model {name: (checkpoint, step digest)} timed interleaved
        in one run (eager fp32)."""
        g = self.rec["goals"]
        sizes = sorted({t["batch_size"] for t in g["targets"]})
        settings = {
            "b": sizes,
            "reps": g["reps"],
            "threads": g["threads"],
        }
        return self.timed(
            dense_path, models, settings, batch_sizes=sizes, threads=g["threads"], reps=g["reps"]
        )

    def _finetune_seed(
        self, name: str, src: Path, parent: str, seed: int, splits: Any, teacher: Path | None
    ) -> Path:
        """One model, one seed. With finetune.distill > 0 every pruned model distils from
        the dense one (teacher); the control is the dense model itself, trained on labels.
        The teacher's logits are saved the first time and read back by the other pruned
        models of the seed (they see the same batches), identical and without its forward.
        parent: the digest of the step that made `src`, so a model remade at the same path
        (another plan, another dense model) is fine-tuned again."""
        cfg = copy.deepcopy(self.rec["goals"]["finetune"])
        cfg.seed = seed
        if teacher is None or not cfg.distill:
            cfg.distill, teacher = 0.0, None
        out = self.out / "finetune" / f"{name}-seed{seed}.pth"
        self.step(
            f"finetune {name} seed {seed}",
            out,
            lambda: finetune_checkpoint(
                src,
                out,
                splits,
                cfg,
                dense=name == "control",
                teacher=teacher,
                teacher_cache=self.out / "finetune" / "teacher-logits",
                resume=self.interrupted(out),
                device=self.device,
                progress=self.progress,
                desc=f"finetune {name} s{seed}",
                cache=self.cache,
                model=self.user_spec,
            ),
            {
                "src": str(src),
                "parent": parent,
                "dense": self.dense_digest,
                "ft": cfg,
                "data": self.rec["data"],
            },
        )
        return out

    def _row(
        self, name: str, src: Path, runs: dict[int, Path], splits: Any, latency: dict[str, Any]
    ) -> dict[str, Any]:
        model = self.load(src)[0]
        row: dict[str, Any] = {
            "name": name,
            "params": count_params(model),
            "macs": count_macs(model)["total"],
            "file_bytes": self.export_bytes(model, self.out / "export" / f"{name}.plz"),
            "accuracy_before": self._accuracy(name + "-before", src, splits),
            "accuracy_after": {  # recorded by finetune_checkpoint: no model to rebuild
                s: read_checkpoint(p, self.cache)["meta"]["test_accuracy"] for s, p in runs.items()
            },
        }
        after = list(row["accuracy_after"].values())
        row["accuracy_mean"] = statistics.fmean(after) if after else row["accuracy_before"]
        lat_name = "dense" if name == "control" else name
        for r in latency["rows"]:
            if r["model"] == lat_name:
                row[f"latency_ms_b{r['batch_size']}"] = r["median_ms"]
                row[f"speedup_b{r['batch_size']}"] = r.get("speedup") or 1.0
        return row

    def _accuracy(self, name: str, src: Path, splits: Any) -> float:
        path = self.out / "eval" / f"goals-{name}.json"
        self.step(
            f"evaluate {name}",
            path,
            lambda: write_json(
                path, {"accuracy": evaluate_on(self.load(src)[0], splits)["accuracy"]}
            ),
            {"model": str(src), "mtime": src.stat().st_mtime_ns},
        )
        return json.loads(path.read_text())["accuracy"]


def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal checked: the speed-up at its batch size, the accuracy bound against dense and
    against the control, and (with the peer) accuracy and speed against Torch-Pruning's."""
    rows = {x["name"]: x for x in r["rows"]}
    dense = rows["dense"]["accuracy_mean"]
    control = rows["control"]["accuracy_mean"] if "control" in rows else None
    out = []
    for t in r["goals"]["targets"]:
        b = t["batch_size"]
        ours = rows.get(f"guided-b{b}")
        if ours is None:
            continue
        v = {
            "batch_size": b,
            "speedup_goal": t["speedup"],
            "speedup": ours[f"speedup_b{b}"],
            "accuracy_mean": ours["accuracy_mean"],
            "max_drop_points": t["max_drop"],
            "delta_dense_points": 100 * (ours["accuracy_mean"] - dense),
            "delta_control_points": None
            if control is None
            else 100 * (ours["accuracy_mean"] - control),
        }
        ref = v["delta_control_points"] if control is not None else v["delta_dense_points"]
        v["met"] = v["speedup"] >= t["speedup"] and ref >= -t["max_drop"]
        peer = rows.get(f"peer-b{b}")
        if peer is not None:
            v["peer_accuracy_mean"] = peer["accuracy_mean"]
            v["peer_speedup"] = peer[f"speedup_b{b}"]
            # a uniform ratio cannot hit every MACs target (coarse counts on thin layers):
            # the verdict states how close "the same MACs" came
            v["peer_macs_ratio"] = peer["macs"] / ours["macs"]
            v["beats_peer"] = (
                ours["accuracy_mean"] >= peer["accuracy_mean"] and v["speedup"] >= v["peer_speedup"]
            )
            # the medians decide, strictly; the paired rounds say whether that was noise
            v["peer_rounds"] = paired_rounds(r["latency"], f"guided-b{b}", f"peer-b{b}", b)
        out.append(v)
    return out


def peer_words(v: dict[str, Any]) -> str:
    """The peer verdict in words: which side is ahead on accuracy and on speed."""
    if v["beats_peer"]:
        return "prunelab at least as accurate and as fast"
    acc = v["accuracy_mean"] >= v["peer_accuracy_mean"]
    fast = v["speedup"] >= v["peer_speedup"]
    if acc:
        return "prunelab at least as accurate, the peer faster"
    return "the peer more accurate, prunelab faster" if fast else "peer ahead on both"


def rounds_words(p: dict[str, Any] | None) -> str:
    """The paired-round comparison of the two speeds, in words ("" where it was not kept)."""
    if p is None:
        return ""
    said = {
        "tied": "a speed difference within noise",
        "faster": "faster beyond noise",
        "slower": "slower beyond noise",
    }[p["verdict"]]
    return (
        f"; in the same {p['rounds']} timed rounds prunelab was faster in {p['a_faster']}: "
        f"{said} (sign test {p_text(p['p_value'])})"
    )


LABELS = {"dense": "dense", "control": "dense control (fine-tuned as long)"}


def label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    kind, b = name.split("-b")
    if kind == "guided":
        return f"prunelab guided (batch-{b} latency plan)"
    return f"Torch-Pruning uniform (MACs of the batch-{b} plan)"


def plot_goals(r: dict[str, Any], path: Path) -> None:
    """Mean accuracy after fine-tuning against latency, one panel per batch size."""
    sizes = sorted({t["batch_size"] for t in r["goals"]["targets"]})
    fig = Figure(figsize=(5.5 * len(sizes), 4.2))
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    style = {"dense": ("*", 12), "control": ("P", 10), "guided": ("^", 8), "peer": ("s", 7)}
    for ax, b in zip(axes, sizes, strict=True):
        for x in r["rows"]:
            kind = x["name"].split("-b")[0]
            marker, size = style[kind]
            ax.plot(
                x[f"latency_ms_b{b}"],
                100 * x["accuracy_mean"],
                marker=marker,
                markersize=size,
                linestyle="none",
                label=label(x["name"]),
            )
        goal = next(t for t in r["goals"]["targets"] if t["batch_size"] == b)
        ref = next((x for x in r["rows"] if x["name"] == "control"), r["rows"][0])
        ax.axvline(
            r["rows"][0][f"latency_ms_b{b}"] / goal["speedup"],
            color="grey",
            ls="--",
            lw=0.8,
            label=f"goal: {goal['speedup']}x faster than dense",
        )
        ax.axhline(
            100 * ref["accuracy_mean"] - goal["max_drop"],
            color="grey",
            ls=":",
            lw=0.8,
            label=f"goal: within {goal['max_drop']} points of the {ref['name']}",
        )
        ax.set_xlabel(f"median latency, batch {b} (ms, eager fp32)")
        ax.set_ylabel("test accuracy after fine-tuning (%, mean of seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(
        f"{model_label(r['dense'])}: speed-up goals (goal met: left of the dashed line, above "
        "the dotted one)",
        fontsize=10,
    )
    fig.tight_layout()
    write_png(fig, path)


def goals_report(r: dict[str, Any]) -> str:
    """report.md: models, goal verdicts, the latency table and the figure."""
    g = r["goals"]
    sizes = sorted({t["batch_size"] for t in g["targets"]})
    ft = g["finetune"]
    lines = [
        f"# prunelab goals report: {r['recipe']['name']}",
        "",
        r["recipe"].get("description", ""),
        "",
        f"- dense model: {r['dense']['source']} ({model_label(r['dense'])})",
        *data_and_machine(r),
        f"- fine-tuning for every model, the control included: {ft['epochs']} epochs of "
        f"{ft['optimizer']} (lr {ft['lr']}, {ft['schedule']}), seeds {g['seeds']}"
        + (
            f"; every pruned model (the peer too) distils from the dense one (weight "
            f"{ft['distill']}, temperature {ft['temperature']}; its logits computed once per seed "
            "and shared, in finetune/teacher-logits), the control learns from labels"
            if ft.get("distill")
            else ""
        ),
        f"- prunelab's plans: the channel scan ({g['importance']} importance) and per-layer "
        f"timings reach {g['margin']}x each speed-up goal, measured"
        + (
            f"; every group within {g['band']} of the uniform ratio reaching the same time "
            f"(rounded out to the plan's {g['step']} steps)"
            if g.get("band") is not None
            else ""
        )
        + _rounding(g)
        + _widening(g)
        + (
            f"; layers with more filters than inputs cut first to the rank holding "
            f"{g['rank_energy']} of their weights' energy"
            if g.get("rank_energy") is not None
            else ""
        ),
        "- latency: every model timed in one interleaved run before fine-tuning (shapes, not "
        "weights, set the time), eager PyTorch fp32, BatchNorm folded",
        "",
        "| model | params | MACs | export KiB | "
        + " | ".join(f"batch-{b} ms | speed-up b{b}" for b in sizes)
        + " | before FT % | after FT % (per seed) | mean % |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(sizes) + "---:|---|---:|",
    ]
    for x in r["rows"]:
        lat = " | ".join(f"{x[f'latency_ms_b{b}']:.2f} | {x[f'speedup_b{b}']:.2f}x" for b in sizes)
        per_seed = ", ".join(f"{100 * a:.2f}" for a in x["accuracy_after"].values()) or "-"
        lines.append(
            f"| {label(x['name'])} | {x['params']:,} | {x['macs']:,} | "
            f"{x['file_bytes'] / 1024:.1f} | {lat} | "
            f"{100 * x['accuracy_before']:.2f} | {per_seed} | {100 * x['accuracy_mean']:.2f} |"
        )
    lines += ["", "## Goals", ""]
    for v in r["verdicts"]:
        ctrl = v["delta_control_points"]
        lines.append(
            f"- batch {v['batch_size']}: {v['speedup']:.2f}x faster (goal {v['speedup_goal']}x), "
            f"{v['delta_dense_points']:+.2f} points to dense"
            + ("" if ctrl is None else f", {ctrl:+.2f} to the control")
            + f" (bound -{v['max_drop_points']}): **{'met' if v['met'] else 'not met'}**"
        )
        if "peer_accuracy_mean" in v:
            lines.append(
                f"  - Torch-Pruning uniform at {v['peer_macs_ratio']:.3f}x prunelab's MACs: "
                f"{100 * v['peer_accuracy_mean']:.2f}% and {v['peer_speedup']:.2f}x, prunelab "
                f"{100 * v['accuracy_mean']:.2f}% and {v['speedup']:.2f}x: **{peer_words(v)}**"
                + rounds_words(v.get("peer_rounds"))
            )
    lines += [
        "",
        "![accuracy against latency](figures/goals_accuracy_vs_latency.png)",
        "",
        "## Latency",
        "",
        format_latency_table(r["latency"]),
        "",
    ]
    return "\n".join(lines)


def _widening(g: dict[str, Any]) -> str:
    """The report's words for the measured widening, where a target has it."""
    on = [t["batch_size"] for t in g["targets"] if t.get("widen", g.get("widen", 0))]
    if not on:
        return ""
    where = "" if len(on) == len(g["targets"]) else " at batch " + ", ".join(map(str, on))
    return (
        f"; then{where} groups widened again, one at a time, while the measured speed-up held "
        "(channels that cost no time)"
    )


def _rounding(g: dict[str, Any]) -> str:
    """The report's words for the channel rounding, per target where they differ."""
    per = {t["batch_size"]: t.get("round_to", g.get("round_to")) for t in g["targets"]}
    if len(set(per.values())) == 1:
        n = next(iter(per.values()))
        return f"; channel counts in multiples of {n}" if n else ""
    return "; channel counts rounded per batch size: " + ", ".join(
        (f"multiples of {n}" if n else "not rounded") + f" at batch {b}" for b, n in per.items()
    )
