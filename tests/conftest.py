"""Shared fixtures. Tests never touch the network: the Hub is switched off before anything imports it.

CPU results are bitwise reproducible only at one thread count (reductions split their work by
thread), and many tests compare runs bit for bit, some of them in processes the test starts. So
the whole suite runs single-threaded: set here, before torch is imported, for this process and
(through the environment) for every process a test launches, whatever the machine's core count.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The data cache in a folder of this session's own (set before the workers start, so they share it: the
# cache is built for runs that start at once), never the user's.
if "FLANT5_IMDB_DATA_CACHE" not in os.environ:
    import tempfile

    os.environ["FLANT5_IMDB_DATA_CACHE"] = tempfile.mkdtemp(prefix="flant5-test-data-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
IMDB_DIR = SHARED_DATA / "imdb"
IMDB_TOKENIZER = SHARED_DATA / "tokenizer" / "imdb-unigram-32k"


# A GPU test is marked, never returns early: on a GPU it runs and asserts, elsewhere pytest says it skipped.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
off_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the CPU path; its GPU twin runs there"
)


def signal_on_call(monkeypatch, owner, name: str, sig: str, at_call: int = 1) -> tuple[int, list]:
    """Replace `owner.name` with itself sending `sig` to this process on its `at_call`-th call, as Ctrl-C
    (or a scheduler's SIGTERM) would arrive there; returns (the exit code that signal means, the calls)."""
    import signal
    import time

    real, calls = getattr(owner, name), []

    def signalled(*a, **kw):
        calls.append(1)
        if len(calls) == at_call:
            os.kill(os.getpid(), getattr(signal, sig))
            time.sleep(1)  # the handler runs here
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, signalled)
    return 128 + getattr(signal, sig), calls


def load_script(name: str):
    """scripts/NAME.py as a module, to call its `main(argv)` in this process (no second torch import)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args, timeout: float = 120, **kwargs):
    """`python scripts/NAME.py ARGS...` from this checkout, its output captured as text."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kwargs)  # fmt: skip


def flags(**options) -> list[str]:
    """Command-line flags from keyword arguments: `max_steps=3` -> `--max-steps 3`; True -> the bare flag."""
    out = []
    for name, value in options.items():
        out += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return out


def accelerate_launch(*args: str) -> list[str]:
    """`python -m accelerate.commands.launch` on a free port: a port still held by an earlier test's
    launch would fail this one for a reason that has nothing to do with it."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(port), *args]


def real_data_or_skip() -> tuple[Path, Path]:
    if not (IMDB_DIR / "train.parquet").is_file() or not (IMDB_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(
            f"real IMDB files not found at {IMDB_DIR} and {IMDB_TOKENIZER} (present on the project's CI "
            "machines)"
        )
    return IMDB_DIR, IMDB_TOKENIZER


@pytest.fixture(scope="session")
def synthetic():
    from flant5_imdb.data.synthetic import make_synthetic

    return make_synthetic(n_train=400, n_test=100, seed=0)


@pytest.fixture(scope="session")
def word_tokenizer(synthetic):
    from flant5_imdb.tokenizer import train_word_tokenizer

    # The synthetic reviews' classes, as digits and as words.
    targets = ("0", "1", "negative", "positive")
    return train_word_tokenizer((text for ds in synthetic.values() for text in ds["text"]), targets=targets)


@pytest.fixture(scope="session")
def tokenizer_dir(word_tokenizer, tmp_path_factory):
    """The word tokenizer saved to a folder, as --tokenizer takes it."""
    path = tmp_path_factory.mktemp("tokenizer")
    word_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke preset exactly as the README runs it (its own word-level tokenizer, generated data):
    about 30 s on 2 CPU cores, shared by every test that needs a trained model."""
    from flant5_imdb.config import preset
    from flant5_imdb.train import run

    out = tmp_path_factory.mktemp("smoke")
    summary = run(preset("smoke", output_dir=str(out)))
    return out, summary


class CountingBackend:
    """A torch.compile backend for the CPU: dynamo and AOTAutograd trace as for inductor, the graphs
    run eagerly, and every graph dynamo hands over is kept (more than one: a graph break or a recompile)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.common import aot_autograd

        self.graphs.append(gm)
        return aot_autograd(fw_compiler=lambda g, _: g)(gm, example_inputs)


@pytest.fixture
def counting_backend() -> CountingBackend:
    import torch

    torch._dynamo.reset()  # no graph cached by an earlier test
    return CountingBackend()
