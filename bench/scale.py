"""How prediction and evaluation cost grows with the work: whole commands, timed and their peak memory read
from the operating system (the largest process's resident set), every row under the same threads.

    python bench/scale.py predict --texts 3000,60000          our predict.py at each size
    python bench/scale.py versus --texts 10000,100000         ours beside the plain transformers loop
    python bench/scale.py classes --classes 5000              train + evaluate a model of N classes
    python bench/scale.py data --texts 20000,150000 --tokenizer DIR
                                    training's data stage, cold and warm, beside datasets' csv + map
    python bench/scale.py read --texts 25000,250000,2500000
                                    our reader alone (a CSV, a texts file) beside Python's csv module
                                    and a plain loop over lines

The texts are IMDB reviews (`--reviews`: a folder with train.parquet / test.parquet), one a line,
repeated to the size asked. The model is `--model`, or the offline walkthrough's (`--preset smoke`,
trained once into `--work`), or with `--model-config NAME --tokenizer DIR` that architecture with
random weights (for a GPU's timing: its predictions mean nothing). The peer of `versus` is
bench/plain_predict.py; of `data`, bench/plain_data.py (`data` times `train.py --max-steps 1`, the data
read, checked, tokenized and one step: each side's first run with an empty cache, then its second).
Rows go to `--out` as results.json and results.md, rewritten after each row.

The inputs are made in a process of their own: the reviews they load would make this process's peak
memory 360 MiB, and every command's peak starts at it (`bench/commands.py`).
"""

import sys
from pathlib import Path

# As in bench/profile.py: this folder must not shadow the standard library's `profile` (torch imports it).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor

from bench.commands import SAY_PEAK, measure
from bench.scale_inputs import csv_file, make_classes, random_model, texts_file


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    conditions = dict(
        command=args.command,
        threads=args.threads,
        batch_size=args.batch_size,
        machine=machine(),
        started=time.strftime("%Y-%m-%d %H:%M"),
    )
    rows: list[dict] = []
    if args.command == "classes":
        for n in args.classes:
            rows.append(classes_row(args, n, work, env))
            save(args.out, conditions, rows)
        return 0
    if args.command == "read":
        for n in args.texts:
            for row in read_rows(args, n, work, env):
                rows.append(row)
                save(args.out, conditions, rows)
        return 0
    if args.command == "data":
        if not args.tokenizer:
            raise SystemExit("data: --tokenizer DIR, the tokenizer both sides use (e.g. flan-t5's)")
        conditions.update(tokenizer=args.tokenizer, workers=args.workers)
        for n in args.texts:
            for row in data_rows(args, n, work, env):
                rows.append(row)
                save(args.out, conditions, rows)
        return 0
    conditions["model"] = model = model_under_test(args, work, env)
    for n in args.texts:
        prediction_rows(args, n, model, work, env, rows, lambda: save(args.out, conditions, rows))
    return 0


def prediction_rows(args, n: int, model: str, work: Path, env: dict, rows: list[dict], save) -> None:
    """`predict` (and `versus`) at `n` texts: our predict.py, then the plain transformers loop on the same
    texts with the same threads and batch, and how far they agree; `save()` after each."""
    texts = made(texts_file, args.reviews, n, work)
    same = ["--model", model, "--file", str(texts), "--threads", str(args.threads), "--batch-size",
            str(args.batch_size)]  # fmt: skip
    ours = [sys.executable, str(ROOT / "scripts" / "predict.py"), *same, "--output", str(work / "ours.jsonl"),
            "--overwrite"]  # fmt: skip
    rows.append(measure("ours", ours, n, env))
    save()
    if args.command != "versus":
        return
    plain = [
        sys.executable,
        str(ROOT / "bench" / "plain_predict.py"),
        *same,
        "--output",
        str(work / "plain.jsonl"),
    ]
    rows.append(measure("plain transformers", plain, n, env))
    rows[-1]["agreement"] = agreement(work / "ours.jsonl", work / "plain.jsonl")
    rows[-1]["ours_speedup"] = rows[-2]["texts_per_s"] / rows[-1]["texts_per_s"]
    if "loop_texts_per_s" in rows[-1] and "loop_texts_per_s" in rows[-2]:
        rows[-1]["ours_loop_speedup"] = rows[-2]["loop_texts_per_s"] / rows[-1]["loop_texts_per_s"]
    save()


def parse(argv):
    p = argparse.ArgumentParser(description="Prediction and evaluation at scale: time and peak memory.")
    p.add_argument("command", choices=("predict", "versus", "classes", "data", "read"))
    p.add_argument("--texts", type=counts, default=[10_000], help="sizes, e.g. 3000,60000 (default: 10000)")
    p.add_argument("--classes", type=counts, default=[5000], help="classes: how many (default: 5000)")
    p.add_argument(
        "--shared-first-word",
        action="store_true",
        help="classes: targets 'topic kN' that share their first word (scored whole)",
    )
    p.add_argument("--eval-samples", type=int, default=None, help="classes: this many test examples")
    p.add_argument("--reviews", default="imdb", help="a folder with IMDB's train.parquet and test.parquet")
    p.add_argument("--model", default=None, help="a trained model folder (default: the smoke model)")
    p.add_argument("--model-config", default=None, help="random weights of this architecture instead")
    p.add_argument("--tokenizer", default=None, help="with --model-config: its tokenizer folder")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of every command (default: 1)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument(
        "--workers", type=int, default=1, help="data: processes that tokenize, both sides (default: 1)"
    )
    p.add_argument("--work", default="/tmp/flant5-scale", help="inputs, outputs and models are made here")
    p.add_argument("--out", default="bench/results/scale", help="results.json and results.md go here")
    return p.parse_args(argv)


def counts(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not whole numbers: {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"each must be at least 1: {text!r}")
    return values


def agreement(a: Path, b: Path) -> float:
    """The fraction of texts given the same class by the two outputs (in input order)."""
    with open(a) as fa, open(b) as fb:
        same = [
            json.loads(x)["label_name"] == json.loads(y)["label_name"] for x, y in zip(fa, fb, strict=True)
        ]
    return round(sum(same) / len(same), 4)


def made(maker, *args):
    """`maker(*args)`, an input of bench/scale_inputs.py, made in a process of its own (see the module's
    doc: the bench's own peak memory would be every command's)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(maker, *args).result()


# `read`: what each row runs on a file of n reviews (sys.argv[1]), counting what it reads into `n`.
READS = {
    "ours, csv": ("csv", "from flant5_imdb.data.reader import read_table\n"
                         "n = sum(1 for _ in read_table(sys.argv[1], 'text', 'label').rows())"),
    "csv module, csv": ("csv", "import csv\ncsv.field_size_limit(sys.maxsize)\n"
                               "with open(sys.argv[1], newline='', encoding='utf-8') as f:\n"
                               "    n = sum(1 for _ in csv.DictReader(f))"),
    "ours, texts": ("txt", "from flant5_imdb.data.reader import texts_to_predict\n"
                           "n = sum(1 for t in texts_to_predict(sys.argv[1]) if isinstance(t, str))"),
    "plain lines, texts": ("txt", "with open(sys.argv[1], encoding='utf-8') as f:\n"
                                  "    n = sum(1 for line in f if line.strip())"),
}  # fmt: skip


def read_rows(args, n: int, work: Path, env: dict) -> list[dict]:
    """Our reader beside the standard library's, on `n` reviews: a CSV (text and label) read by
    `read_table` and by `csv.DictReader`; a texts file (one review a line) by `texts_to_predict` and by a
    loop over its lines. Each command checks that it read every record."""
    files = {"csv": made(csv_file, args.reviews, n, work), "txt": made(texts_file, args.reviews, n, work)}
    env = {**env, "PYTHONPATH": str(ROOT)}
    rows = []
    for name, (kind, code) in READS.items():
        check = f"\nif n != {n}: sys.exit(f'{{n:,}} records read of {n:,}')"
        code = f"import sys\n{code}{check}\n{SAY_PEAK}"
        rows.append(measure(name, [sys.executable, "-c", code, str(files[kind])], n, env))
    return rows


def data_rows(args, n: int, work: Path, env: dict) -> list[dict]:
    """Ours (train.py's data stage and one step) and the datasets csv + map pipeline on the same CSV and
    tokenizer: each first with an empty cache (cold), then again (warm)."""
    table = made(csv_file, args.reviews, n, work)
    cache, hf, out = work / f"data-cache-{n}", work / f"hf-cache-{n}", work / "data-run"
    for folder in (cache, hf):
        shutil.rmtree(folder, ignore_errors=True)
    ours = [sys.executable, str(ROOT / "scripts" / "train.py"), "--preset", "smoke", "--tokenizer",
            args.tokenizer, "--data", str(table), "--max-source-length", "512", "--max-steps", "1",
            "--eval-split", "none", "--threads", str(args.threads), "--data-cache", str(cache),
            "--preprocess-workers", str(args.workers), "--output-dir", str(out)]  # fmt: skip
    peer = [sys.executable, str(ROOT / "bench" / "plain_data.py"), "--file", str(table), "--tokenizer",
            args.tokenizer, "--cache-dir", str(hf), "--max-length", "512"]  # fmt: skip
    if args.workers > 1:
        peer += ["--num-proc", str(args.workers)]
    rows = []
    for when in ("cold", "warm"):
        shutil.rmtree(out, ignore_errors=True)
        rows.append(measure(f"ours, {when}", ours, n, env))
        rows.append(measure(f"datasets + map, {when}", peer, n, env))
    return rows


def model_under_test(args, work: Path, env: dict) -> str:
    if args.model:
        return args.model
    if args.model_config:
        return made(random_model, args.model_config, args.tokenizer, work)
    smoke = work / "smoke"
    if not (smoke / "final" / "model.safetensors").is_file():
        train = [sys.executable, str(ROOT / "scripts" / "train.py"), "--preset", "smoke"]
        subprocess.run([*train, "--output-dir", str(smoke), "--overwrite-output-dir"], env=env, check=True)
    return str(smoke / "final")


def classes_row(args, n: int, work: Path, env: dict) -> dict:
    """Train the smoke model on `n` classes (3 examples each, 30 steps) and evaluate it on the test split."""
    data = work / f"classes-{n}{'-shared' if args.shared_first_word else ''}"
    if not (data / "test.jsonl").is_file():
        make_classes(data, n, args.shared_first_word)
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--preset",
        "smoke",
        "--data",
        str(data),
        "--output-dir",
        str(work / "classes-run"),
        "--overwrite-output-dir",
        "--max-steps",
        "30",
        "--threads",
        str(args.threads),
    ]
    if args.eval_samples:
        command += ["--max-eval-samples", str(args.eval_samples)]
    row = measure(f"train + evaluate, {n:,} classes", command, args.eval_samples or n, env)
    row["texts_per_s"] = None  # the command trains too: its texts/s would say nothing
    summary = json.loads((work / "classes-run" / "summary.json").read_text())
    evaluated = summary["eval"]
    row.update(
        classes=n,
        shared_first_word=args.shared_first_word,
        eval_examples=evaluated["n"],
        eval_seconds=round(evaluated["eval_seconds"], 1),
        accuracy=evaluated["accuracy"],
    )
    return row


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return f"{os.cpu_count()} cores, {cpu}".strip(", ")


def save(out: str, conditions: dict, rows: list[dict]) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"conditions": conditions, "rows": rows}, indent=2))
    c = conditions
    batches = "smoke's batches, 30 steps" if c["command"] == "classes" else f"batch {c['batch_size']}"
    if c["command"] == "data":
        batches = f"tokenizer {Path(c['tokenizer']).name}, {c['workers']} tokenizing process(es) a side"
    if c["command"] == "read":
        batches = "reading only, no model"
    unit = {"data": "rows", "read": "records"}.get(c["command"], "texts")
    predicting = c["command"] in ("predict", "versus")  # the commands that say how long their loop took
    lines = [
        f"{c['command']}: {c['machine']}; {c['threads']} CPU thread(s) per process, {batches}; "
        + ("" if c["command"] == "read" else f"{c.get('model', 'the smoke model')}; ")
        + c["started"]
        + (f" ({c['note']})" if c.get("note") else ""),
        "",
        f"| run | {unit} | seconds | {unit}/s |"
        + (" predicting: texts/s |" if predicting else "")
        + " peak RSS (MiB) | of it anonymous (MiB) | notes |",
        "| --- " * (7 + predicting) + "|",
    ]
    for r in rows:
        notes = []
        if "agreement" in r:
            notes.append(f"ours: {r['ours_speedup']:.2f}x its texts/s")
            if "ours_loop_speedup" in r:
                notes.append(f"{r['ours_loop_speedup']:.2f}x predicting")
            notes.append(f"the same class: {r['agreement']:.2%}")
        if "classes" in r:
            notes.append(
                f"{r['eval_examples']:,} examples evaluated in {r['eval_seconds']} s, accuracy "
                f"{r['accuracy']:.3f}"
            )
        cells = [r["name"], f"{r['texts']:,}", r["seconds"], r["texts_per_s"] or ""]
        if predicting:
            cells.append(r.get("loop_texts_per_s", ""))
        cells.append(r["peak_rss_mib"])
        cells.append(r.get("peak_anon_mib", ""))
        cells.append("; ".join(notes))
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    (folder / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
