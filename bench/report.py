"""The bench's report: ratios, the targets table, results.{json,md} and the chart.

Everything here reads rows that `bench/harness.py` measured; nothing here measures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DOCUMENTED = {
    "minutes": 26.0,
    "driver_mib": 11500,
    "note": "HF Seq2SeqTrainer baseline recipe, as documented",
}
# The kernel path's targets, checked against the rows of the same run (see `targets`).
TARGETS = dict(
    kernels_ms=15.0,
    kernels_x_hf_trainer=11.0,
    two_epochs_minutes=3.0,
    kernels_8bit_gib=3.0,
    kernels_gib=5.0,
    throughput_samples_s=1500.0,
    score_eval_25k_s=15.0,
)
PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
}  # dense bf16 tensor-core peaks from the data sheets


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


def add_ratios(rows: list[dict], documented: bool = True) -> None:
    """Speed-up over the same-run hf-trainer (samples/s over samples/s); on a GPU, over the documented job."""
    trainer = next((r for r in measured(rows) if r["name"] == "hf-trainer"), None)
    tuned = next((r for r in measured(rows) if r["name"] == "hf-trainer-tuned"), None)
    for r in measured(rows):
        r["ratio_vs_hf_trainer"] = r["samples_per_s"] / trainer["samples_per_s"] if trainer else None
        r["ratio_vs_tuned_trainer"] = r["samples_per_s"] / tuned["samples_per_s"] if tuned else None
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
    add_ratios(result["rows"], documented=gpu)
    # The targets and the documented job are a GPU's; a CPU run is measured, not graded. Off CUDA the
    # two bias lookups also run the same reference attention: no verdict from their difference.
    result["targets"] = targets(result) if gpu else []
    result["bias_lookup"] = bias_lookup_verdict(result["rows"]) if gpu else None
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


def markdown(result: dict) -> str:
    incomplete = [r for r in result["runs"] if not r["complete"]]
    lines = [
        f"**{result['device']}** · {result['weights']} · {result['timed_steps']} timed steps after "
        f"{result['warmup_steps']} warm-up · "
        f"MFU against {fmt(result['peak_tflops'], '.0f')} TFLOP/s",
        "",
        *[
            f"`{r['command']}`"
            + ("" if r["complete"] else f" — **incomplete**: {r['stopped'] or 'still running, or killed'}")
            for r in result["runs"]
        ],
        *(
            ["", "**Incomplete**: the run stopped before every configuration was measured."]
            if incomplete
            else []
        ),
        "",
        "| config | batch | precision | optim | padding | ms/step (p10–p90) | samples/s | tokens/s | MFU "
        "| 2 epochs (projected) | set-up + warm-up s | peak alloc GiB | predicted GiB | driver MiB "
        "| × hf-trainer | × hf-trainer-tuned |",
        "|" + " --- |" * 16,
    ]
    for r in result["rows"]:
        if r.get("running") or "error" in r:
            what = "running, or killed" if r.get("running") else f"failed: {r['error']}"
            got = how_far(r)
            what = f"{what} ({got})" if got else what
            lines.append(f"| {r['name']} | {what.replace('|', '/')} |" + " |" * 14)
            continue
        full = f" (full run {r['full_minutes']:.1f} min)" if r.get("full_minutes") else ""
        variant = f" ({r['variant']})" if r.get("variant", "as configured") != "as configured" else ""
        lines.append(
            f"| {r['name']}{variant} | {r['batch_size']} | {r['precision']} | {r['optim']} | {r['padding']} "
            "| "
            f"{r['ms_per_step']:.1f} ({r['ms_p10']:.1f}–{r['ms_p90']:.1f}) | {r['samples_per_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | "
            f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} | "
            f"{r['projected_minutes']:.1f} min{full} | "
            f"{fmt(r.get('warmup_seconds'), '.0f')} | "
            f"{fmt(r['peak_allocated_gib'], '.2f')} | {fmt(r.get('predicted_peak_gib'), '.2f')} | "
            f"{fmt(r['peak_driver_mib'], 'd')} | "
            f"{fmt(r['ratio_vs_hf_trainer'], '.2f')} | {fmt(r.get('ratio_vs_tuned_trainer'), '.2f')} |"
        )
    timed_compiles = [
        f"{r['name']} {r['compiles_in_timed_window']} compile(s), "
        f"{r.get('cuda_graphs_recorded_in_timed_window') or 0} graph recording(s), "
        f"{r.get('new_shapes_in_timed_window') or 0} new batch shape(s)"
        for r in measured(result["rows"])
        if r.get("compiles_in_timed_window")
        or r.get("cuda_graphs_recorded_in_timed_window")
        or r.get("new_shapes_in_timed_window")
    ]
    if timed_compiles:
        lines += ["", "**Timed windows that compiled or recorded** (their ms/step include it): " +
                  "; ".join(timed_compiles)]  # fmt: skip
    retried = [r for r in measured(result["rows"]) if r.get("errors")]
    lines += [f"\n{r['name']} ran as '{r['variant']}' after: {'; '.join(r['errors'])}" for r in retried]
    doc = result["documented_baseline"]
    lines += [
        "",
        f"Documented baseline: {doc['minutes']:.0f} minutes for 2 epochs, {doc['driver_mib']} MiB "
        f"({doc['note']})."
        if not result["device"].startswith("CPU")
        else "A CPU run: measured, not compared with the documented GPU job or graded against GPU targets.",
    ]
    graphs = [r for r in measured(result["rows"]) if r.get("compiled")]
    if graphs:
        lines += [
            "",
            "CUDA graphs recorded (inductor's graph tree): "
            + ", ".join(f"{r['name']} {fmt(r.get('cuda_graphs_recorded'), 'd', 'unknown')}" for r in graphs),
        ]
    if result.get("bias_lookup"):
        lines += ["", result["bias_lookup"]["summary"]]
    evals = [e for e in result["eval"] if "mode" in e]
    if evals:
        lines += [
            "",
            "| eval mode | batch | kernels | examples (split) | examples/s | 25,000 examples (projected) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for e in evals:
            kernels = "yes" if e["kernels"] else "no"
            head = f"| {e['mode']} | {e['batch_size']} | {kernels} | {e['examples']} ({e['split']}) | "
            lines.append(
                head
                + (
                    f"failed: {e['error'].replace('|', '/')} | |"
                    if "error" in e
                    else f"{e['examples_per_s']:.1f} | {e['projected_25k_seconds']:.0f} s |"
                    + (
                        f" {e['compiles_in_timed_window']} compile(s) timed"
                        if e.get("compiles_in_timed_window")
                        else ""
                    )
                )
            )
        lines += ["", next((e["note"] for e in result["eval"] if "note" in e), "")]
    checks = result.get("targets", [])
    if checks:
        lines += [
            "",
            "Kernel-path targets, from the rows above:",
            "",
            "| target | wanted | measured | met |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {c['target']} | {c['wanted']} | {c['measured']} | {c['verdict']} |" for c in checks]
    return "\n".join(lines)


def bias_lookup_verdict(rows: list[dict]) -> dict | None:
    """With both `kernels` (the bias read from its table) and `kernels-gathered` measured: which is faster."""
    by = {r["name"]: r for r in measured(rows) if r.get("variant", "as configured") == "as configured"}
    table, gathered = by.get("kernels"), by.get("kernels-gathered")
    if not (table and gathered):
        return None
    faster = "table" if table["ms_per_step"] <= gathered["ms_per_step"] else "gathered"
    slow, fast = sorted((table["ms_per_step"], gathered["ms_per_step"]), reverse=True)
    return dict(
        table_ms=table["ms_per_step"],
        gathered_ms=gathered["ms_per_step"],
        faster=faster,
        summary=f"Bias lookup: table {table['ms_per_step']:.2f} ms/step, gathered "
        f"{gathered['ms_per_step']:.2f} ms/step: "
        f"'{faster}' is faster by {100 * (slow - fast) / slow:.1f}% (the `kernels` preset should use it).",
    )


def targets(result: dict) -> list[dict]:
    """Each kernel-path target whose row was measured: wanted, measured, and met or missed by how much."""
    rows = {r["name"]: r for r in measured(result["rows"])}
    score = next(
        (e for e in result["eval"] if e.get("mode") == "score" and e.get("kernels") and "error" not in e),
        None,
    )
    checks = []

    def check(target, value, limit, unit, higher_is_better=False):
        met = value >= limit if higher_is_better else value <= limit
        verdict = "yes" if met else f"no: {value / limit:.2f}x the target"
        checks.append(
            dict(
                target=target,
                wanted=f"{'≥' if higher_is_better else '≤'} {limit:g} {unit}",
                measured=f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}",
                met=met,
                verdict=verdict,
            )
        )

    k = rows.get("kernels")
    if k:
        check(
            "baseline-recipe step (kernels, batch 8; no attention-probability dropout in the encoder)",
            k["ms_per_step"],
            TARGETS["kernels_ms"],
            "ms",
        )
        if k.get("ratio_vs_hf_trainer"):
            check(
                "speed-up over hf-trainer (same run)",
                k["ratio_vs_hf_trainer"],
                TARGETS["kernels_x_hf_trainer"],
                "x",
                True,
            )
        check(
            "2 epochs incl. compilation (projected: set-up and warm-up + the rest at the timed rate)",
            k["projected_minutes_with_warmup"],
            TARGETS["two_epochs_minutes"],
            "min",
        )
        if k["peak_allocated_gib"] is not None:
            check("peak allocated, AdamW (kernels)", k["peak_allocated_gib"], TARGETS["kernels_gib"], "GiB")
    k8 = rows.get("kernels-8bit-ckpt")
    if k8 and k8["peak_allocated_gib"] is not None:
        check(
            "peak allocated, adamw8bit (kernels-8bit-ckpt)",
            k8["peak_allocated_gib"],
            TARGETS["kernels_8bit_gib"],
            "GiB",
        )
    kt = rows.get("kernels-throughput")
    if kt:
        check(
            f"throughput (kernels-throughput, batch {kt['batch_size']})",
            kt["samples_per_s"],
            TARGETS["throughput_samples_s"],
            "samples/s",
            True,
        )
    if score:
        check(
            "score evaluation of 25,000 examples (kernels, projected)",
            score["projected_25k_seconds"],
            TARGETS["score_eval_25k_s"],
            "s",
        )
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
    colors = ["#c0392b" if n.startswith("hf-trainer") else "#2e86c1" for n in names]
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
