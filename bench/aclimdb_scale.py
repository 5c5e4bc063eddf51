"""Reading an aclImdb/ folder at N times IMDB's size: time and peak memory of the read and of its cache key.

    python bench/aclimdb_scale.py --reviews IMDB --times 1,10,100

Writes IMDB's 25,000 training reviews N times over as `train/neg/*.txt` and `train/pos/*.txt` under
`--work` (100 times: 2.5 million files, 3.3 GB), then, each in a fresh process, reads the folder as
training does (`load_labelled`, rows staged on disk) and computes its data-cache key (`content_key`);
prints each one's seconds and peak resident memory. Memory that grows with N is memory held per file.
"""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

READ = """
import sys, tempfile, time
from pathlib import Path
from flant5_imdb.data import load_labelled
from flant5_imdb.data.source import content_key, parse_source
from bench.commands import own_peak_kib
t, rows = time.perf_counter(), ""
if sys.argv[2] == "read":
    with tempfile.TemporaryDirectory() as d:
        rows = f", {len(load_labelled(sys.argv[1], folder=Path(d)).splits['train'])} rows"
else:
    content_key(parse_source(sys.argv[1]), None)
# This process's own peak: ru_maxrss would start at the peak of the process that started it, which held
# IMDB's reviews while it wrote the folder.
rss = own_peak_kib() / 1024
print(f"{sys.argv[2]}: {time.perf_counter() - t:.1f} s, peak RSS {rss:.0f} MiB{rows}")
"""


def make(reviews: Path, folder: Path, times: int) -> None:
    import pyarrow.parquet as pq

    if (folder / "done").is_file():
        return
    table = pq.read_table(reviews / "train.parquet", columns=["text", "label"]).to_pydict()
    for sub in ("neg", "pos"):
        (folder / "train" / sub).mkdir(parents=True, exist_ok=True)
    n = 0
    for _ in range(times):
        for text, label in zip(table["text"], table["label"], strict=True):
            (folder / "train" / ("pos" if label else "neg") / f"{n}_{7 if label else 2}.txt").write_text(text)
            n += 1
    (folder / "done").write_text("")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reviews", required=True, help="a folder with IMDB's train.parquet")
    p.add_argument("--times", default="1,10", help="sizes, in multiples of IMDB's training split")
    p.add_argument("--work", default="/tmp/flant5-aclimdb-scale", help="the folders are written here")
    args = p.parse_args(argv)
    for times in (int(t) for t in args.times.split(",")):
        folder = Path(args.work) / f"x{times}"
        make(Path(args.reviews), folder, times)
        for what in ("read", "key"):
            got = subprocess.run([sys.executable, "-c", READ, str(folder), what], cwd=ROOT, text=True,
                                 capture_output=True, check=True)  # fmt: skip
            print(f"{times}x {got.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
