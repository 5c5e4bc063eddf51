"""scripts/train.py with a fault injected, for the checkpoint tests.

python tests/helpers/faulty_train.py crash-after-step N  [train.py options]   # exit 3 after step N
python tests/helpers/faulty_train.py kill-in-save N      [train.py options]   # SIGKILL while saving step-N
python tests/helpers/faulty_train.py sigterm-in-eval R   [train.py options]   # rank R alone gets SIGTERM in
    the first evaluation, while it predicts its first chunk (chunks of 8 examples: an evaluation has several)
"""

import functools
import importlib.util
import os
import signal
import sys
from pathlib import Path

from flant5_imdb import checkpoint, train
from flant5_imdb import evaluate as evaluate_module

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
elif mode == "sigterm-in-eval":
    predict_chunk, evaluate_module.CHUNK = evaluate_module.predict_chunk, 8

    def signalled_predict_chunk(*args, **kwargs):
        if int(os.environ.get("RANK", 0)) == n and not getattr(signalled_predict_chunk, "sent", False):
            signalled_predict_chunk.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return predict_chunk(*args, **kwargs)

    evaluate_module.predict_chunk = signalled_predict_chunk
else:
    raise SystemExit(f"unknown mode {mode}")

spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
sys.exit(script.main(argv))
