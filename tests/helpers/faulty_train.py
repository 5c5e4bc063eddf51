"""scripts/train.py with a fault injected, for the checkpoint tests.

python tests/helpers/faulty_train.py crash-after-step N  [train.py options]   # exit 3 after step N
python tests/helpers/faulty_train.py kill-in-save N      [train.py options]   # SIGKILL while saving step-N
"""

import functools
import importlib.util
import os
import signal
import sys
from pathlib import Path

from flant5_imdb import checkpoint, train

ROOT = Path(__file__).resolve().parents[2]
mode, n, *argv = sys.argv[1:]
n = int(n)

if mode == "crash-after-step":

    def crash(state, step, model):
        if state.step == n:
            os._exit(3)  # like a crash: no cleanup, nothing flushed beyond what is on disk

    train.run = functools.partial(train.run, on_step=crash)
elif mode == "kill-in-save":
    commit = checkpoint._commit

    def killing_commit(tmp, final):
        if final.name == f"step-{n}":
            (tmp / "model.safetensors").write_bytes(b"torn")  # a half-written file, then the power goes
            os.kill(os.getpid(), signal.SIGKILL)
        commit(tmp, final)

    checkpoint._commit = killing_commit
else:
    raise SystemExit(f"unknown mode {mode}")

spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
sys.exit(script.main(argv))
