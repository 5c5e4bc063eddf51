"""The peer of `scripts/predict.py` in `bench/scale.py versus`: the prediction loop a user writes with plain
transformers, as its docs show it (tokenizer + `model.generate`, batches of 32 in input order, the
generated text mapped back to a class). It uses nothing of this project's code: the prompt, the class
texts and the truncation are read from the model's `flant5_imdb.json` with the json module.

python bench/plain_predict.py --model runs/smoke/final --file texts.txt --output plain.jsonl
"""

import sys
from pathlib import Path

# As in bench/profile.py: this folder must not shadow the standard library's `profile` (torch imports it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import itertools
import json
import time

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer


def parse(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description="The plain transformers prediction loop: generate, in batches.")
    p.add_argument("--model", required=True, help="a folder with the weights, tokenizer and flant5_imdb.json")
    p.add_argument("--file", required=True, help="one text a line")
    p.add_argument("--output", required=True, help="JSON lines: text, label_name")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    settings = json.loads((Path(args.model) / "flant5_imdb.json").read_text())
    names, targets = settings["labels"]["names"], settings["targets"]
    template = {None: "{text}", "none": "{text}"}.get(settings["prompt"], settings["prompt"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model).to(device).eval()
    new_tokens = max(len(tokenizer(t).input_ids) for t in targets)  # a class's text and its end
    started, n = time.perf_counter(), 0
    with open(args.file, encoding="utf-8") as f, open(args.output, "w") as out, torch.inference_mode():
        lines = (line.rstrip("\n") for line in f if line.strip())
        while batch := list(itertools.islice(lines, args.batch_size)):
            prompted = [template.format(text=t) for t in batch]
            inputs = tokenizer(
                prompted,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=settings["max_source_length"],
            ).to(device)
            generated = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, num_beams=1)
            decoded = [s.strip() for s in tokenizer.batch_decode(generated, skip_special_tokens=True)]
            for text, written in zip(batch, decoded, strict=True):
                name = names[targets.index(written)] if written in targets else None
                out.write(json.dumps({"text": text, "label_name": name}) + "\n")
            n += len(batch)
    # The line predict.py ends with, for bench/scale.py to read the loop's own time beside the command's.
    print(f"{n:,} texts predicted in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
