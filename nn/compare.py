"""Train one configuration on every available kernel set and on the PyTorch reference, and
write the comparison: results/compare.md (a table), compare.json (every run's metrics) and
compare.png (speed and accuracy).

    python -m nn.compare --epochs 3                      # every set usable here, CPU
    python -m nn.compare --sets numpy,numba --epochs 1

Takes the training options of nn.train (see ``python -m nn.train --help``). Speed-up is the
reference's seconds per epoch over the set's: above 1 means faster than torch-autograd. What a
run pays once before its first step (compiling the Numba sets' kernels on a first run, loading
them from Numba's cache later) is its own column, ``compile_seconds``, and in no other figure.
"""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import replace
from pathlib import Path

from .errors import TrainingDiverged, UsageError
from .train import REFERENCE, RESULTS, Config, build_parser, config_from_args


def run_all(base: Config, sets: list[str], out_dir: Path, log=print) -> list[dict]:
    """Train ``base`` once per set (each into out_dir/<set>); the rows of the table."""
    import kernels

    available = kernels.available(base.device)
    rows, skipped = [], {}
    for name in sets:
        if name != REFERENCE and available.get(name) is not None:
            skipped[name] = available[name]
            log(f"skipping {name}: {available[name]}")
            continue
        log(f"== {name}")
        cfg = replace(base, kernels=name, out=str(out_dir / name), checkpoint=False, resume=None)
        try:
            m = _train(cfg)
        except TrainingDiverged as exc:
            skipped[name] = f"diverged: {exc}"
            log(f"{name} diverged: {exc}")
            continue
        rows.append({"kernels": name, "test_accuracy": m["test_accuracy"],
                     "seconds_per_epoch": m["seconds_per_epoch"], "samples_per_second": m["samples_per_second"],
                     # None for metrics written before the warm-up was timed apart
                     "compile_seconds": m.get("compile_seconds"),
                     "epochs": m["epochs"], "environment": m["environment"]})
    ref = next((r for r in rows if r["kernels"] == REFERENCE), None)
    for r in rows:
        r["speedup_vs_reference"] = ref["seconds_per_epoch"] / r["seconds_per_epoch"] if ref else None
    return rows, skipped


def _train(cfg):
    from .train import train

    return train(cfg)


def table(rows: list[dict], base: Config, skipped: dict) -> str:
    lines = [
        "# Kernel sets compared on one training run",
        "",
        f"{base.dataset}, hidden {','.join(map(str, base.hidden))} ({base.activation}"
        + (f", dropout {base.dropout:g}" if base.dropout else "") + f"), {base.optimizer} lr {base.lr:g}, "
        f"batch {base.batch_size}, {base.epochs} epoch(s), seed {base.seed}, "
        f"threads {rows[0]['environment']['threads'] if rows else base.threads}, device {base.device}"
        + (f", first {base.limit} samples" if base.limit else ""),
        "",
        "| kernel set | test accuracy | seconds / epoch | samples / s | speed-up vs torch-autograd "
        "| compile, once (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "n/a"
        once = "n/a" if r.get("compile_seconds") is None else f"{r['compile_seconds']:.2f}"
        lines.append(f"| {r['kernels']} | {100 * r['test_accuracy']:.2f}% | {r['seconds_per_epoch']:.3f} | "
                     f"{r['samples_per_second']:,.0f} | {speedup} | {once} |")
    lines += ["", "*compile, once*: what each run paid before its first step, in no other column: "
                  "compiling the Numba sets' kernels (a first run; later runs load them from Numba's cache) "
                  "and torch's one-off set-up."]
    if skipped:
        lines += ["", "Not run:", ""] + [f"- {k}: {v}" for k, v in skipped.items()]
    if rows:
        env = rows[0]["environment"]
        lines += ["", f"CPU: {env['cpu']} ({env['cores']} cores); "
                      + ", ".join(f"{k} {v}" for k, v in env["versions"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import kernels

    parser = build_parser(prog="nn.compare")
    parser.description = "Train one configuration on every kernel set and the PyTorch reference."
    parser.add_argument("--sets", default=None,
                        help=f"comma-separated sets (default: all of {', '.join(kernels.names())}, {REFERENCE})")
    parser.add_argument("--results", default=str(RESULTS), help="folder for compare.md/.json/.png (default results)")
    args = parser.parse_args(argv)
    sets = args.sets.split(",") if args.sets else [*kernels.names(), REFERENCE]
    results = Path(args.results)
    del args.sets, args.results
    base, _ = config_from_args(args)
    try:
        unknown = [s for s in sets if s not in kernels.names() and s != REFERENCE]
        if unknown:
            raise UsageError(f"unknown kernel set(s) {', '.join(unknown)}; use {', '.join(kernels.names())}, {REFERENCE}")
        if base.resume:
            raise UsageError("nn.compare starts every run fresh; --resume is for nn.train")
        base.check()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        rows, skipped = run_all(base, sets, results / "runs" / f"compare-{stamp}", log=(lambda m: None) if base.quiet else print)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print("error: no kernel set could run", file=sys.stderr)
        return 1
    from . import plots

    results.mkdir(parents=True, exist_ok=True)
    md = table(rows, base, skipped)
    (results / "compare.md").write_text(md)
    (results / "compare.json").write_text(json.dumps({"config": {k: v for k, v in vars(base).items()
                                                                  if k != "interrupt_after_steps"},
                                                       "rows": rows, "skipped": skipped}, indent=2) + "\n")
    plots.comparison(rows, results / "compare.png", title=f"{base.dataset}, {base.epochs} epoch(s)")
    print(md)
    print(f"written: {results / 'compare.md'}, compare.json, compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
