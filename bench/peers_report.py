"""The report's lead section and charts from bench.peers_run's peers.json: the compiled sets
against the strongest peer (JAX, torch.compile, torch eager) at each batch size and across
network sizes, and Adam against torch.optim.Adam's three implementations.

Every figure is computed from peers.json, each ratio says what it is against, and every chart
names the CPU and the instruction-set paths it ran on. Charts are written atomically.
"""

from __future__ import annotations

import math
import os
import textwrap
import statistics
from pathlib import Path

from bench.peers import PEERS, REFERENCE, SETS, WHAT
from bench.peers_run import SEEDS_SIZES

# The targets for the best compiled set against the strongest peer, 784-128-64-10.
TARGETS = {128: 1.2, 32: 1.5, 1: 2.5}
ADAM_TARGET = 1.5  # best set's adam_step against torch.optim.Adam(fused=True)


def _net(sizes):
    return "-".join(str(s) for s in sizes)


def _spread(values):
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "–"
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.2f}–{q[2]:.2f}"


def where(peers: dict) -> str:
    """'CPU, N threads; numba: avx512, cython: avx512, numpy: openblas:SkylakeX' from peers.json."""
    m = peers.get("machine", {})
    isas = {}
    for cell in peers.get("cells", []):
        for name, info in cell.get("trainers", {}).items():
            if info.get("isa"):
                isas.setdefault(name, info["isa"])
    paths = [f"{n}: {isas.get(n, 'path not reported')}" for n in SETS if n in peers.get("what", {}) or n in isas]
    if peers.get("isa_paths"):
        paths.append(f"the CPU's best path {peers['isa_paths'][0]}"
                     + (f" (KERNELS_ISA={peers['isa_forced']})" if peers.get("isa_forced") else ""))
    return f"{m.get('cpu', 'unknown CPU')}, {peers.get('threads', '?')} threads; " + ("; ".join(paths) or "ISA path not reported")


def busy_note(peers) -> str:
    """A warning when the load average exceeded the cores during the measurement."""
    cores = peers.get("machine", {}).get("cores") or peers.get("threads")
    parts = [c for c in peers.get("cells", []) + ([peers["adam"]] if peers.get("adam") else [])]
    loads = [x for c in parts for x in (c.get("load") or []) if x is not None]
    if not cores or not loads or max(loads) <= cores + 0.5:
        return ""
    over = sum(1 for c in parts if max((x for x in c.get("load") or [] if x is not None), default=0) > cores + 0.5)
    return (f"**The machine was busy:** the 1-minute load average reached {max(loads):.1f} on {cores} cores "
            f"({over} of {len(parts)} measurements above {cores + 0.5:g}): other processes ran beside these "
            "turns, and a runtime whose threads wait for each other at every op (OpenMP under torch and the "
            "cython set, OpenBLAS) loses most when one of its cores is taken. Rerun on a quiet machine before "
            "quoting these figures.")


def against(cell, other):
    """The median over a cell's rounds of the best compiled set's samples/s over ``other``'s, or None."""
    rates = cell.get("rates", {})
    sets = [s for s in SETS if s in rates and s != "numpy"]
    if other not in rates or not sets:
        return None
    return statistics.median(max(rates[s][r] for s in sets) / rates[other][r] for r in range(len(rates[other])))


def headline_cells(peers):
    return {c["batch"]: c for c in peers.get("cells", []) if tuple(c["sizes"]) == SEEDS_SIZES}


def section(peers: dict | None, reference: dict | None = None, peak: dict | None = None, charts=None) -> str:
    """Markdown: the lead table, the grid, Adam. ``reference``: {batch: samples/s} of the seeds'
    DataLoader trainer from the suite, shown for context only."""
    if not peers or not peers.get("cells"):
        return ("## Against the strongest peers\n\nNot measured in this run: run `python -m bench.peers_run` "
                "(JAX needs `pip install -e .[peers]`).\n")
    lines = ["## Against the strongest peers", ""]
    if peers.get("quick") or peers.get("provisional"):
        lines += ["**Provisional:** " + (peers.get("provisional") or "a `--quick` smoke run (short turns, few "
                                         "rounds), not a measurement to quote."), ""]
    trainers = [t for t in SETS + PEERS if t in peers.get("what", {})]
    lines += [
        f"Measured on {where(peers)}. The same training on every side: ReLU MLP, float32, the same initial "
        f"weights and order of samples, SGD at lr {peers.get('lr', 0.05)}, the batch gathered inside each "
        "trainer (`bench/peers.py`; tests/test_peers.py checks that every trainer ends where the numpy set's "
        "`train_steps` does). Each framework ran in a process of its own, in alternating turns (A B C, C B A, "
        f"…; a pause of {peers.get('settle_s', 0.2):g} s before each turn, a few untimed steps, then whole "
        f"chunks of {peers.get('samples_per_call', 4096)} samples, or whole steps where a chunk is slower, for "
        f"about {peers.get('turn_s', 0.5):g} s), so "
        "no runtime's idle thread pool shares the cores with another's; medians over the rounds "
        "(`python -m bench.peers_run`). *Ratio*: the best compiled set's samples/s over the strongest peer's, "
        "per round, median (spread: the middle half of the rounds).", "",
        "The trainers: " + "; ".join(f"`{t}`: {WHAT[t]}" for t in trainers) + ".", ""]
    busy = busy_note(peers)
    if busy:
        lines += [busy, ""]
    if peers.get("skipped"):
        lines += ["Not measured: " + "; ".join(f"`{t}` ({why})" for t, why in peers["skipped"].items()) + ".", ""]
    head = headline_cells(peers)
    if head:
        rows = []
        for b in sorted(head):
            c = head[b]
            med = c["median"]
            row = [b]
            if "value" in c:
                bp, bs = c["best_peer"], c["best_set"]
                target = TARGETS.get(b)
                verdict = f"≥ {target:g}: {'met' if c['value'] >= target else 'not met'}" if target else "–"
                row += [f"`{bp}` {med[bp]:,.0f}", f"`{bs}` {med[bs]:,.0f}", f"**{c['value']:.2f}×**",
                        _spread(c["values"]), verdict]
            else:
                row += ["–"] * 5
            row += [f"{med[t]:,.0f}" if t in med else "–" for t in trainers]
            if REFERENCE in med:  # measured here, in alternating turns
                row.append(f"{med[REFERENCE]:,.0f} (sets {against(c, REFERENCE):.0f}×)")
            else:
                row.append(f"{reference[b]:,.0f} (suite)" if reference and b in reference else "–")
            rows.append(row)
        lines += [f"Samples per second, {_net(SEEDS_SIZES)}, one SGD epoch's chunks:", "",
                  _table(["batch", "strongest peer", "best compiled set", "ratio", "spread", "target"]
                         + [f"`{t}`" for t in trainers] + ["seeds' reference"], rows), "",
                  "*Seeds' reference*: the idiomatic PyTorch trainer (an `nn.Module` fed by a `DataLoader`, "
                  "nn/torch_reference.py), what the seeds compare against and no peer to beat: timed here in "
                  "alternating turns with the best compiled set's lead over it in brackets, or else *(suite)*, "
                  "from the suite's `test_epoch` in a turn of its own.", ""]
    lines += _grid(peers, peak)
    lines += _adam(peers.get("adam"))
    for key, title in (("peers_heatmap", "best compiled set / strongest peer across network sizes"),
                       ("peers_time_vs_flops", "time per sample against FLOPs per sample")):
        if charts and key in charts:
            lines += [f"![{title}](charts/{Path(charts[key]).name})", ""]
    return "\n".join(lines)


def _grid(peers, peak):
    cells = [c for c in peers["cells"] if "value" in c]
    nets = sorted({tuple(c["sizes"]) for c in cells}, key=lambda s: (len(s), s[1:]))
    batches = sorted({c["batch"] for c in cells})
    if len(nets) < 2:
        return []
    by = {(tuple(c["sizes"]), c["batch"]): c for c in cells}
    rows = [[_net(n)] + [f"{by[(n, b)]['value']:.2f} (`{by[(n, b)]['best_peer']}`)" if (n, b) in by else "–"
                         for b in batches] for n in nets]
    lines = ["Across network sizes: the best compiled set's samples/s over the strongest peer's (which peer "
             "in brackets), SGD, each cell in alternating turns:", "",
             _table(["network"] + [f"batch {b}" for b in batches], rows), ""]
    won = [c for c in cells if c["value"] >= 1.0]
    lost = [c for c in cells if c["value"] < 1.0]
    text = f"The compiled sets lead in {len(won)} of {len(cells)} cells."
    if lost:
        text += " The strongest peer leads at " + ", ".join(f"{_net(c['sizes'])} batch {c['batch']} "
                                                            f"({c['value']:.2f})" for c in lost) + "."
    gflops = (peak or {}).get("sgemm_gflops")
    if gflops and lost:
        peer_frac = [c["flops_per_sample"] * c["median"][c["best_peer"]] / 1e9 / gflops for c in lost]
        set_frac = [c["flops_per_sample"] * c["median"][c["best_set"]] / 1e9 / gflops for c in lost]
        text += (f" In those cells the strongest peer runs the step's dense flops at {min(peer_frac):.0%}–"
                 f"{max(peer_frac):.0%} of the measured sgemm peak ({gflops:.0f} GFLOP/s) and the best compiled "
                 f"set at {min(set_frac):.0%}–{max(set_frac):.0%}: there the step is large matrix products, and "
                 "what decides is how close each gets to the machine's dense-FLOP limit.")
    if gflops and won:
        small = [c for c in won if c["batch"] <= 8]
        if small:
            over = [1 / c["median"][c["best_peer"]] / (c["flops_per_sample"] / (gflops * 1e9)) for c in small]
            text += (f" Where the sets lead at batch 8 or less, the strongest peer takes {min(over):.0f}–"
                     f"{max(over):.0f}× the time its flops need at that peak: at these batches a step is a few "
                     "microseconds of arithmetic, and what costs is what surrounds it (a framework's dispatch of "
                     "each op or step, small-matrix kernels), which the fused `train_steps` loops do not pay.")
    return lines + [text, ""]


def _adam(adam):
    if not adam or not adam.get("rows"):
        return []
    rows = adam["rows"]
    sets = [v for v in ("numba", "cython") if v in rows]
    best = min(sets, key=lambda v: rows[v]["us"]) if sets else None
    table_rows = []
    for v, r in rows.items():
        vs = f"{r['us'] / rows[best]['us']:.2f}×" if best else "–"
        table_rows.append([f"`{v}`", r["what"], f"{r['us']:.1f} µs", _spread(r["us_rounds"]), vs, r.get("isa") or "–"])
    lines = [f"Adam over {_net(adam['sizes'])}'s parameters, one step, each variant in its own process in "
             f"alternating turns ({adam['rounds']} rounds)"
             + (f"; measured at {adam['measured_at']}, {adam['note']}" if adam.get("note") else "") + ":", "",
             _table(["variant", "what", "median", "spread", f"time / `{best}`'s" if best else "ratio", "ISA path"],
                    table_rows), ""]
    if best and "torch-fused" in rows:
        r = rows["torch-fused"]["us"] / rows[best]["us"]
        lines += [f"`{best}`'s `adam_step` against `torch.optim.Adam(fused=True)`: **{r:.2f}×** (target ≥ "
                  f"{ADAM_TARGET:g}: {'met' if r >= ADAM_TARGET else 'not met'}).", ""]
    return lines


def _table(headers, rows):
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# ---------------------------------------------------------------- charts


def save_atomic(fig, path: Path):
    """Save a figure to path through a temporary file and a rename: no reader sees half a PNG."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    os.replace(tmp, path)
    plt.close(fig)
    return path


def charts(peers: dict | None, peak: dict | None, out_dir: Path) -> dict:
    """The heatmap of the grid's ratios and time per sample against FLOPs per sample."""
    if not peers or not peers.get("cells"):
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    subtitle = "\n".join(textwrap.wrap(where(peers), 110))
    cells = [c for c in peers["cells"] if "value" in c]
    nets = sorted({tuple(c["sizes"]) for c in cells}, key=lambda s: (len(s), s[1:]))
    batches = sorted({c["batch"] for c in cells})
    if nets and batches:
        by = {(tuple(c["sizes"]), c["batch"]): c for c in cells}
        grid = [[by[(n, b)]["value"] if (n, b) in by else math.nan for b in batches] for n in nets]
        vals = [v for row in grid for v in row if not math.isnan(v)]
        span = max(2.0, max(max(vals), 1 / min(vals)))
        fig, ax = plt.subplots(figsize=(1.4 * len(batches) + 3, 0.55 * len(nets) + 2))
        im = ax.imshow(grid, cmap="RdBu", norm=LogNorm(1 / span, span), aspect="auto")
        for i, n in enumerate(nets):
            for j, b in enumerate(batches):
                if (n, b) in by:
                    c = by[(n, b)]
                    dark = abs(math.log(c["value"])) > 0.6 * math.log(span)  # white on the deep colours
                    ax.text(j, i, f"{c['value']:.2f}\n{c['best_set']}/{c['best_peer']}", ha="center",
                            va="center", fontsize=6.5, color="white" if dark else "black")
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_yticks(range(len(nets)), [_net(n) for n in nets])
        ax.set(xlabel="batch size", title=f"best compiled set / strongest peer (samples/s, >1: the set leads)\n{subtitle}")
        ax.title.set_fontsize(8)
        ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8) if 1 / span <= t <= span]
        bar = fig.colorbar(im, ax=ax, shrink=0.8, ticks=ticks)
        bar.ax.minorticks_off()
        bar.ax.set_yticklabels([f"{t:g}×" for t in ticks])
        made["peers_heatmap"] = save_atomic(fig, out_dir / "peers_heatmap.png")

    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    names = [t for t in SETS + PEERS if any(t in c["median"] for c in peers["cells"])]
    markers = {b: m for b, m in zip(sorted({c["batch"] for c in peers["cells"]}), "o s D ^ v P X *".split())}
    for k, name in enumerate(names):
        for b, m in markers.items():
            pts = sorted((c["flops_per_sample"], 1 / c["median"][name]) for c in peers["cells"]
                         if c["batch"] == b and name in c["median"])
            if pts:
                ax.plot(*zip(*pts), marker=m, color=f"C{k}", lw=0.8, ms=5, alpha=0.8)
        ax.plot([], [], color=f"C{k}", label=name)
    for b, m in markers.items():
        ax.plot([], [], ls="", marker=m, color="gray", label=f"batch {b}")
    gflops = (peak or {}).get("sgemm_gflops")
    if gflops:
        xs = [c["flops_per_sample"] for c in peers["cells"]]
        lo, hi = min(xs) / 1.5, max(xs) * 1.5
        ax.plot([lo, hi], [lo / (gflops * 1e9), hi / (gflops * 1e9)], "k--", lw=1.2,
                label=f"dense-FLOP limit ({gflops:.0f} GFLOP/s, sgemm)")
    ax.set(xscale="log", yscale="log", xlabel="dense FLOPs per sample (forward + backward)",
           ylabel="seconds per sample", title=f"time per sample against FLOPs per sample (SGD)\n{subtitle}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    made["peers_time_vs_flops"] = save_atomic(fig, out_dir / "peers_time_vs_flops.png")
    return made


def reference_rates(records) -> dict:
    """{batch: samples/s} of the seeds' DataLoader trainer (torch-reference) in the suite's records."""
    return {r["batch"]: r["samples"] / r["median"] for r in records
            if r.get("op") == "epoch" and r.get("set") == "torch-reference" and r.get("median")}
