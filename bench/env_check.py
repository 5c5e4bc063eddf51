"""The GPU run's first part: import everything the run needs and print the versions, in seconds.

    python3 bench/env_check.py

Its first two lines are the card and the versions that decide what the run can do (torch,
transformers, accelerate, datasets, pyarrow, fsspec, bitsandbytes): the end of a cut-short log may
be lost, its start is not. Every module the bench, the training loop and the GPU checks import is
imported here, so that an environment problem (a missing wheel, a pyarrow too old for datasets)
shows up at once with its own message, before any part spends time, instead of minutes later as a
failed row. Exit status 1 if anything is missing.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # see bench/profile.py
sys.path.insert(0, str(ROOT))

# Third-party first (their versions are the point), then the project's own modules.
MODULES = (
    "torch",
    "transformers",
    "accelerate",
    "tokenizers",
    "safetensors",
    "pyarrow",
    "fsspec",
    "datasets",
    "bitsandbytes",
    "sklearn",
    "numpy",
    "pandas",
    "matplotlib",
    "tqdm",
    "pytest",
    "flant5_imdb.train",
    "flant5_imdb.evaluate",
    "bench.harness",
    "bench.report",
    "bench.step_profile",
)


# The versions on the second line, in this order.
KEY_VERSIONS = ("torch", "transformers", "accelerate", "datasets", "pyarrow", "fsspec", "bitsandbytes")


def card() -> str:
    """The first line: the card, or why there is none."""
    try:
        import torch

        if not torch.cuda.is_available():
            return f"card: none (no CUDA device; the GPU checks will skip), torch {torch.__version__}"
        p = torch.cuda.get_device_properties(0)
        return (
            f"card: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
            f"compute capability {p.major}.{p.minor}, CUDA {torch.version.cuda}"
        )
    except Exception as e:
        return f"card: unknown ({type(e).__name__}: {e})"


def key_versions() -> str:
    """The second line: each key package's installed version, read without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    def one(name):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} MISSING"

    return "versions: " + ", ".join(one(n) for n in KEY_VERSIONS) + f", python {platform.python_version()}"


def sdpa_choice() -> str:
    """The third line: the sdpa kernel this card's torch picks for T5's training attention (bf16, a float
    bias with a gradient, dropout 0.1, head dimension 64), beside what bench/memory.py assumes for it."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "sdpa kernel: no CUDA device"
        from bench.attention_kernel import CARDS, choose

        b, h, n, d = 8, 12, 512, 64
        q, k, v = (torch.empty(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        bias = torch.empty(b, h, n, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        picked = torch._fused_sdp_choice(q, k, v, attn_mask=bias, dropout_p=0.1)
        name = torch.cuda.get_device_name()
        card = next((c for c in CARDS if c in name), None)
        assumed = choose(card).said() if card else f"{name}: not a card bench/attention_kernel.py names"
        names = {int(v): n for n, v in torch.nn.attention.SDPBackend.__members__.items()}
        return f"sdpa kernel: torch picks {names.get(picked, picked)}; bench/memory.py assumes {assumed}"
    except Exception as e:
        return f"sdpa kernel: unknown ({type(e).__name__}: {e})"


def main() -> int:
    started = time.perf_counter()
    print(card(), flush=True)
    print(key_versions(), flush=True)
    print(sdpa_choice(), flush=True)
    print(f"python {platform.python_version()} ({sys.executable})", flush=True)
    failed = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            version = getattr(module, "__version__", "")
            print(f"{name} {version}".rstrip(), flush=True)
        except Exception as e:  # report every missing piece, not just the first
            failed.append(name)
            print(f"{name}: IMPORT FAILED: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=3)
    print(
        f"environment check: {len(MODULES) - len(failed)}/{len(MODULES)} modules in "
        f"{time.perf_counter() - started:.1f} s" + (f"; missing: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
