"""`prunelab bench`: prunelab's evaluation, training, sensitivity scan (and optionally the quick
study) timed against a straightforward PyTorch baseline in one run, with the machine's peak.

    baseline  the plain-PyTorch way of doing each task (the 1.00x rows)
    measure   timing, peak GEMM, FLOP counts, profiles
    paths     each task timed both ways, as table rows
    verdict   the performance goals and the printed table
    command   options, the whole run, and the entry point of benchmarks/run.py
"""

from .baseline import PerSampleDataset, baseline_study
from .command import add_arguments, main, run
from .measure import calibrate, finish, flops_per_image, scan_work, speedup, suffix_flops
from .paths import bench_eval, bench_scan, bench_study, bench_train
from .verdict import GOALS, format_table, goals

__all__ = [
    "GOALS",
    "PerSampleDataset",
    "add_arguments",
    "baseline_study",
    "bench_eval",
    "bench_scan",
    "bench_study",
    "bench_train",
    "calibrate",
    "finish",
    "flops_per_image",
    "format_table",
    "goals",
    "main",
    "run",
    "scan_work",
    "speedup",
    "suffix_flops",
]
