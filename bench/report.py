"""The bench's report: ratios, the targets table, results.{json,md} and the chart.

Everything here reads the fields of rows that `bench/harness.py` measured (what a row is, its peers,
pairs and targets: `bench/rows.py`); nothing here measures, and no row is looked up by its name.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from bench.clocks import versions
from bench.intervals import ratio_interval

DOCUMENTED = {
    "minutes": 26.0,
    "driver_mib": 11500,
    "note": "HF Seq2SeqTrainer baseline recipe, as documented",
}
PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
}  # dense bf16 tensor-core peaks from the data sheets


def start_results(args, out: Path, device: str, peak, seed_job_samples: int) -> dict:
    """The results document: the one in --out with --append, else a new one."""
    weights = f"from {args.model}" if args.model else f"random init of {args.model_config}"
    print(f"device: {device}; weights: {weights}; data: {args.data}; tokenizer: {args.tokenizer}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per configuration", flush=True)  # fmt: skip
    if args.append and (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    if not args.model:
        weights += " (time and memory do not depend on weight values)"
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return dict(device=device, date=now, versions=versions(), weights=weights, data=args.data,
                examples=args.examples, tokenizer=args.tokenizer, model_config=args.model_config,
                warmup_steps=args.warmup, timed_steps=args.steps, rounds=args.rounds, turns=args.turns,
                peak_tflops=peak, seed_job_samples=seed_job_samples, documented_baseline=DOCUMENTED,
                runs=[], rows=[], eval=[])  # fmt: skip


def measured(rows: list[dict]) -> list[dict]:
    """The rows that finished and did not fail."""
    return [r for r in rows if "error" not in r and not r.get("running")]


def how_far(r: dict) -> str:
    """How far a row that failed, or never finished, got: steps, compilation, CUDA graphs."""
    parts = [f"{r['steps_done']} steps done"] if r.get("steps_done") else []
    if r.get("compiled_after_s") is not None:
        parts.append(f"compiled after {r['compiled_after_s']:.0f} s")
    if r.get("cuda_graphs_recorded"):
        parts.append(f"CUDA graphs recorded: {r['cuda_graphs_recorded']}")
    if r.get("timed_steps_begun_after_s") is not None:
        parts.append(f"timed steps begun after {r['timed_steps_begun_after_s']:.0f} s")
    return "; ".join(parts)


def ratio_field(peer: str) -> str:
    """The field of a row's ratio to `peer` (a peer row's name)."""
    return "ratio_vs_" + peer.replace("-", "_")


def rate(r: dict, turns: bool = False) -> float:
    """A row's samples/s for a ratio: the median step's (a step slowed by another process moves a mean);
    the mean in results measured before the median was recorded. With --turns, every timed step's
    examples over their seconds: a slow spell falls on every row's steps alike, and a length-grouped
    row's steps differ in size (the median step of six batches of 450 to 4,100 tokens is no rate)."""
    return r["samples_per_s"] if turns else r.get("samples_per_s_median") or r["samples_per_s"]


def peers(rows: list[dict]) -> list[dict]:
    """The measured peer rows (as configured): every row's samples/s is set beside each of theirs."""
    return [
        r for r in measured(rows) if r.get("peer") and r.get("variant", "as configured") == "as configured"
    ]


def add_ratios(rows: list[dict], documented: bool = True, turns: bool = False) -> None:
    """Speed-up over each peer row of the same run (samples/s over the peer's, as `rate` takes them), with
    how far it moves when the run's steps are drawn again (`bench/intervals.py`); on a GPU, over the
    documented job."""
    for r in measured(rows):
        for p in peers(rows):
            r[ratio_field(p["name"])] = rate(r, turns) / rate(p, turns)
            r[ratio_field(p["name"]) + "_interval"] = ratio_interval(r, p, turns)
        r["ratio_vs_documented_time"] = DOCUMENTED["minutes"] / r["projected_minutes"] if documented else None
        r["driver_vs_documented_memory"] = (
            r["peak_driver_mib"] / DOCUMENTED["driver_mib"]
            if r.get("peak_driver_mib") and documented
            else None
        )


def write_results(result: dict, out: Path, with_chart: bool = True) -> str:
    """results.json and results.md (and chart.png), each replaced atomically: a run killed at any
    moment leaves the previous complete file, never half of one."""
    gpu = not result["device"].startswith("CPU")
    add_ratios(result["rows"], documented=gpu, turns=bool(result.get("turns")))
    # The GPU targets and the documented job are a GPU's; a CPU run is measured, and held only to the
    # targets that hold anywhere. Off CUDA the rows of a pair (the two bias lookups) also run the same
    # reference attention: no verdict from their difference.
    result["targets"] = targets(result, gpu)
    result["pairs"] = pair_verdicts(result["rows"]) if gpu else []
    _replace(out / "results.json", json.dumps(result, indent=2))
    table = markdown(result)
    _replace(out / "results.md", table + "\n")
    if with_chart and measured(result["rows"]):
        tmp = out / "chart.tmp.png"
        chart(result, tmp)
        os.replace(tmp, out / "chart.png")
    return table


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fmt(x, spec=".1f", none="–"):
    return none if x is None else format(x, spec)


def threads_said(result: dict) -> str:
    """The CPU threads the rows ran on, in the header: one count, or each row's where they differ."""
    counts = {r["name"]: r["cpu_threads"] for r in measured(result["rows"]) if r.get("cpu_threads")}
    if not counts:
        return ""
    if len(set(counts.values())) == 1:
        return f" · {next(iter(counts.values()))} CPU threads, every row"
    return " · **CPU threads differ between rows**: " + ", ".join(f"{n} {t}" for n, t in counts.items())


def rounds_said(result: dict) -> str:
    if result.get("turns"):
        peaks = [r["process_peak_rss_gib"] for r in result["rows"] if r.get("process_peak_rss_gib")]
        held = f" ({sum(peaks):.1f} GiB of memory at the most: their peaks summed)" if peaks else ""
        return f"every row in a process of its own{held}, a step each in turn (A B, B A, ...), "
    rounds = result.get("rounds", 1)
    return f"{rounds} interleaved rounds of " if rounds > 1 else ""


def markdown(result: dict) -> str:
    incomplete = [r for r in result["runs"] if not r["complete"]]
    lines = [
        f"**{result['device']}** · {result['weights']} · {rounds_said(result)}{result['timed_steps']} timed "
        f"steps after {result['warmup_steps']} warm-up"
        f" · MFU against {fmt(result['peak_tflops'], '.0f')} TFLOP/s" + threads_said(result),
        "",
        *[
            f"`{r['command']}`"
            + (f" ({r['cpu_threads']} CPU threads, every row)" if r.get("cpu_threads") else "")
            + ("" if r["complete"] else f" — **incomplete**: {r['stopped'] or 'still running, or killed'}")
            for r in result["runs"]
        ],
        *(["", "**Incomplete**: the run stopped before every row was measured."] if incomplete else []),
        "",
        *row_table(result),
        *notes(result),
        *eval_table(result),
        *targets_table(result),
    ]
    return "\n".join(lines)


def row_table(result: dict) -> list[str]:
    """One line per training row; a ratio column per peer row (× its name: the median step's samples/s
    over the peer's, same run, same threads)."""
    names = [p["name"] for p in peers(result["rows"])]
    head = (
        "| config | batch | precision | optim | padding | ms/step (p10–p90) | samples/s | tokens/s | MFU "
        "| 2 epochs (projected) | set-up + warm-up s | peak alloc GiB | predicted GiB | driver MiB |"
    )
    lines = [head + "".join(f" × {n} |" for n in names), "|" + " --- |" * (14 + len(names))]
    for r in result["rows"]:
        if r.get("running") or "error" in r:
            what = "running, or killed" if r.get("running") else f"failed: {r['error']}"
            got = how_far(r)
            what = f"{what} ({got})" if got else what
            lines.append(f"| {r['name']} | {what.replace('|', '/')} |" + " |" * (12 + len(names)))
            continue
        full = f" (full run {r['full_minutes']:.1f} min)" if r.get("full_minutes") else ""
        variant = "" if r.get("variant", "as configured") == "as configured" else f" ({r['variant']})"
        lines.append(
            f"| {r['name']}{variant} | {r['batch_size']} | {r['precision']} | {r['optim']} | {r['padding']} "
            f"| {r['ms_per_step']:.1f} ({r['ms_p10']:.1f}–{r['ms_p90']:.1f}) | {r['samples_per_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} | "
            f"{r['projected_minutes']:.1f} min{full} | {fmt(r.get('warmup_seconds'), '.0f')} | "
            f"{fmt(r['peak_allocated_gib'], '.2f')} | {fmt(r.get('predicted_peak_gib'), '.2f')} | "
            f"{fmt(r['peak_driver_mib'], 'd')} |"
            + "".join(f" {fmt(r.get(ratio_field(n)), '.2f')} |" for n in names)
        )
    return lines


def notes(result: dict) -> list[str]:
    """What the table alone does not say: timed windows that compiled, retries, the documented job,
    CUDA graphs, the pairs' verdicts."""
    rows = measured(result["rows"])
    timed_compiles = [
        f"{r['name']} {r['compiles_in_timed_window']} compile(s), "
        f"{r.get('cuda_graphs_recorded_in_timed_window') or 0} graph recording(s), "
        f"{r.get('new_shapes_in_timed_window') or 0} new batch shape(s)"
        for r in rows
        if r.get("compiles_in_timed_window")
        or r.get("cuda_graphs_recorded_in_timed_window")
        or r.get("new_shapes_in_timed_window")
    ]
    lines = []
    if timed_compiles:
        lines += ["", "**Timed windows that compiled or recorded** (their ms/step include it): " +
                  "; ".join(timed_compiles)]  # fmt: skip
    lines += [
        f"\n{r['name']} ran as '{r['variant']}' after: {'; '.join(r['errors'])}"
        for r in rows
        if r.get("errors")
    ]
    lines += [
        f"\n{r['name']}: pooled without {'; '.join(r['round_errors'])}" for r in rows if r.get("round_errors")
    ]
    if rounds := [r for r in rows if len(r.get("rounds") or ()) > 1]:
        each = "; ".join(
            f"{r['name']} " + ", ".join(fmt(x["samples_per_s_median"], ".3g") for x in r["rounds"])
            for r in rounds
        )
        lines += ["", f"**Each round's median samples/s** (the table pools every round's steps): {each}"]
    doc = result["documented_baseline"]
    lines += [
        "",
        f"Documented baseline: {doc['minutes']:.0f} minutes for 2 epochs, {doc['driver_mib']} MiB "
        f"({doc['note']})."
        if not result["device"].startswith("CPU")
        else "A CPU run: measured, not compared with the documented GPU job, and held only to the targets "
        "that hold on any machine.",
    ]
    graphs = [r for r in rows if r.get("compiled")]
    if graphs:
        counts = ", ".join(
            f"{r['name']} {fmt(r.get('cuda_graphs_recorded'), 'd', 'unknown')}" for r in graphs
        )
        lines += ["", f"CUDA graphs recorded (inductor's graph tree): {counts}"]
    lines += ["\n" + v["summary"] for v in result.get("pairs") or []]
    return lines


def eval_table(result: dict) -> list[str]:
    evals = [e for e in result["eval"] if "mode" in e]
    if not evals:
        return []
    lines = [
        "",
        "| eval mode | batch | kernels | examples (split) | examples/s | 25,000 examples (projected) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in evals:
        kernels = "yes" if e["kernels"] else "no"
        head = f"| {e['mode']} | {e['batch_size']} | {kernels} | {e['examples']} ({e['split']}) | "
        if "error" in e:
            lines.append(head + f"failed: {e['error'].replace('|', '/')} | |")
            continue
        timed = (
            f" {e['compiles_in_timed_window']} compile(s) timed" if e.get("compiles_in_timed_window") else ""
        )
        lines.append(head + f"{e['examples_per_s']:.1f} | {e['projected_25k_seconds']:.0f} s |" + timed)
    return lines + ["", next((e["note"] for e in result["eval"] if "note" in e), "")]


def targets_table(result: dict) -> list[str]:
    checks = result.get("targets", [])
    if not checks:
        return []
    return [
        "",
        "Targets, from the rows above:",
        "",
        "| target | wanted | measured | met |",
        "| --- | --- | --- | --- |",
        *[f"| {c['target']} | {c['wanted']} | {c['measured']} | {c['verdict']} |" for c in checks],
    ]


def pair_verdicts(rows: list[dict]) -> list[dict]:
    """For each pair of rows (as configured) both measured: which is faster, named by the pair's field (the
    bias lookup: `table` or `gathered`)."""
    pairs: dict[str, list[dict]] = {}
    for r in measured(rows):
        if r.get("pair") and r.get("variant", "as configured") == "as configured":
            pairs.setdefault(r["pair"], []).append(r)
    verdicts = []
    for pair, members in pairs.items():
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda r: r["ms_per_step"])
        fast, slow, by = ranked[0], ranked[-1], ranked[0]["pair_field"]
        gain = 100 * (slow["ms_per_step"] - fast["ms_per_step"]) / slow["ms_per_step"]
        times = ", ".join(f"{m[by]} {m['ms_per_step']:.2f} ms/step" for m in members)
        summary = (
            f"{pair.capitalize()}: {times}: '{fast[by]}' is faster by {gain:.1f}% (the preset should use it)."
        )
        ms = {m[by]: m["ms_per_step"] for m in members}
        verdicts.append(dict(pair=pair, faster=fast[by], ms_per_step=ms, summary=summary))
    return verdicts


def targets(result: dict, gpu: bool = True) -> list[dict]:
    """Each target of each measured row (and evaluation timing): wanted, measured, and met or missed by how
    much. Off a GPU, only the targets that hold on any machine."""
    from bench.rows import Target

    checks = []
    for r in measured(result["rows"]) + [e for e in result["eval"] if "mode" in e and "error" not in e]:
        for t in (Target(**t) for t in r.get("targets") or []):
            if (gpu or not t.gpu_only) and (check := t.check(r)) is not None:
                checks.append(check)
    return checks


NOISY = 1.5  # p90 / p10 of a row's step times above this: its median is not to be read alone


def noisy(r: dict) -> bool:
    return bool(r.get("ms_p10")) and r["ms_p90"] / r["ms_p10"] > NOISY


def chart_title(result: dict, gpu: bool) -> str:
    """What ran, in the picture: device, model, data; a CPU run said to be one."""
    data = f"{result.get('examples') or 'all'} examples of {Path(str(result.get('data', '?'))).name}"
    cpu = "" if gpu else " - a CPU run: timings of the CPU, not of a GPU"
    weights = result.get("weights", "?").split(" (")[0]
    return (f"flant5_imdb bench on {result.get('device', '?')}: {weights}, {data}{cpu}\n"
            "(red: the HF Trainer, measured in the same run; hatched: noisy, p90/p10 over 1.5)")  # fmt: skip


def chart(result: dict, path: Path) -> None:
    """What ran (device, model, data) said in the picture; a noisy row hatched and named so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = measured(result["rows"])
    names = [
        r["name"] + (f" (noisy: p90/p10 {r['ms_p90'] / r['ms_p10']:.0f}x)" if noisy(r) else "") for r in rows
    ]
    colors = ["#c0392b" if r.get("measures") == "trainer" else "#2e86c1" for r in rows]
    mem = [r.get("peak_allocated_gib") for r in rows]
    gpu = any(m is not None for m in mem)  # a CPU run has no memory panel and no documented GPU job
    fig, axes = plt.subplots(
        1, 2 if gpu else 1, figsize=(11 if gpu else 6.5, 0.6 * len(rows) + 1.8), squeeze=False
    )
    a = axes[0][0]
    bars = a.barh(names, [r["projected_minutes"] for r in rows], color=colors)
    for bar, r in zip(bars, rows, strict=True):
        if noisy(r):
            bar.set_hatch("//")
    a.set_xlabel(f"{result.get('seed_job_samples', 50_000):,} examples (the 2-epoch job), minutes, projected")
    if gpu:
        a.axvline(DOCUMENTED["minutes"], ls="--", color="gray", label="documented baseline: 26 min")
        a.legend(loc="lower right", fontsize=8)
        b = axes[0][1]
        b.barh(names, [m or 0 for m in mem], color=colors)
        b.axvline(
            DOCUMENTED["driver_mib"] / 1024, ls="--", color="gray", label="documented baseline: 11500 MiB"
        )
        b.set_xlabel("peak GPU memory allocated (GiB)")
        b.legend(loc="lower right", fontsize=8)
    for ax in axes[0]:
        ax.invert_yaxis()
    fig.suptitle(chart_title(result, gpu), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
