"""The peer of our data stage in `bench/scale.py data`: what a Trainer user writes to read a CSV and tokenize
it (`datasets.load_dataset("csv")`, then a batched tokenizer `map`), cached by `datasets` under
`--cache-dir`: a second run with the same folder reads its Arrow cache. It checks nothing: no label rules,
no bad rows named. It uses nothing of this project's code.

python bench/plain_data.py --file train.csv --tokenizer TOKENIZER --cache-dir /tmp/hf-cache
"""

import argparse
import time

import datasets
from transformers import AutoTokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="datasets' csv loader and a batched tokenizer map")
    p.add_argument("--file", required=True, help="a CSV with text and label columns")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--cache-dir", required=True, help="datasets' cache: the same folder again is a warm run")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--num-proc", type=int, default=None, help="map's worker processes (default: none)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    ds = datasets.load_dataset("csv", data_files={"train": args.file}, cache_dir=args.cache_dir)["train"]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=args.max_length)

    ds = ds.map(encode, batched=True, num_proc=args.num_proc)
    print(f"{len(ds)} rows prepared in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
