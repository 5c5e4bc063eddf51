"""Predictions written as they come: to stdout (a table or JSON lines), or to a csv, jsonl or parquet file
chosen by its name.

A file appears under its own name only once the job is complete. Until then the records grow in
`NAME.partial/`, a chunk at a time: the records so far (`records.csv` / `records.jsonl`, or one
parquet part per chunk) and `job.json`, which names the job (model, input, settings) and how far its
last complete chunk goes (records, bytes, parts, and a digest of the texts predicted). A chunk counts
once its bytes are on disk and `job.json` says so, so a job stopped at any moment (Ctrl-C, a kill, a
crash, a full disk) leaves only whole records: the same command continues after the last of them,
re-reading the input up to there and checking that its texts are the ones predicted.

Fields of a record: `text`, `label` (the class's index), `label_name`, and the probabilities: in
JSON lines `probs` (by class name), in a table one `prob_NAME` column per class; beyond 30 classes,
`top_probs`, the 10 most probable (a JSON object in a table's column).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

from flant5_imdb.evaluate import MAX_MATRIX_CLASSES

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
JOB = "job.json"
# A job's settings as a refusal names them (`predict._identity` makes the job).
NAMES = {
    "model": "--model", "weights": "model (its weights were saved again since)", "input": "input",
    "text_column": "--text-column", "skip_bad_rows": "--skip-bad-rows", "classes": "classes",
    "verbalizer": "--verbalizer", "prompt": "--prompt", "max_source_length": "--max-source-length",
}  # fmt: skip


class OutputError(ValueError):
    """An output that cannot be written as asked; the message names it and the option that helps."""


def output_format(path: str | Path) -> str:
    """csv, jsonl or parquet, from the name of `--output`.

    Raises:
        OutputError: any other name, or a folder.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise OutputError(f"--output {path}: name a .csv, .jsonl or .parquet file (its name sets the format)")
    if path.is_dir():
        raise OutputError(f"--output {path}: a folder; name a file")
    return kind


def columns(names: tuple[str, ...]) -> list[str]:
    """A table's columns for a model with classes `names`."""
    probs = [f"prob_{n}" for n in names] if len(names) <= MAX_MATRIX_CLASSES else ["top_probs"]
    return ["text", "label", "label_name", *probs]


def record(text: str, pred, names: tuple[str, ...]) -> dict:
    """One prediction as a JSON line holds it."""
    key = "probs" if len(names) <= MAX_MATRIX_CLASSES else "top_probs"
    return {"text": text, "label": pred.label, "label_name": pred.label_name, key: pred.probs}


def table_row(text: str, pred, names: tuple[str, ...]) -> list:
    """One prediction as a csv row or a parquet row holds it, in the order of `columns(names)`."""
    if len(names) <= MAX_MATRIX_CLASSES:
        return [text, pred.label, pred.label_name, *(pred.probs[n] for n in names)]
    return [text, pred.label, pred.label_name, json.dumps(pred.probs)]


def arrow_schema(names: tuple[str, ...]):
    """A parquet file's columns (`columns`) with their types."""
    import pyarrow as pa

    probs = pa.float64() if len(names) <= MAX_MATRIX_CLASSES else pa.string()
    types = [pa.string(), pa.int64(), pa.string()] + [probs] * (len(columns(names)) - 3)
    return pa.schema(list(zip(columns(names), types, strict=True)))


class TextDigest:
    """A digest of a sequence of texts that does not depend on how the sequence was cut into chunks."""

    def __init__(self, start: str = ""):
        self.value = start

    def update(self, text: str) -> None:
        self.value = hashlib.sha256(
            (self.value + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()).encode()
        ).hexdigest()


class Table:
    """The default on stdout: one line per text (its class, that class's probability, the text on one
    line, cut at 100 characters), under a header."""

    done = 0

    def __init__(self, names: tuple[str, ...], stream):
        self.width = max(len("class"), *(len(n) for n in names))
        self.stream = stream
        print(f"{'class':<{self.width}}  {'prob':>6}  text", file=stream, flush=True)

    def write(self, texts: list[str], preds) -> None:
        lines = []
        for text, pred in zip(texts, preds, strict=True):
            line = " ".join(text.split())
            shown = line if len(line) <= 100 else line[:97] + "..."
            lines.append(f"{pred.label_name:<{self.width}}  {pred.prob:6.4f}  {shown}\n")
        self.stream.write("".join(lines))
        self.stream.flush()

    def finish(self) -> None:
        pass


class JsonLines(Table):
    """`--jsonl` on stdout: one JSON object per text."""

    def __init__(self, names: tuple[str, ...], stream):
        self.names, self.stream = names, stream

    def write(self, texts: list[str], preds) -> None:
        self.stream.write(_json_lines(texts, preds, self.names))
        self.stream.flush()


class PredictionsFile:
    """`--output FILE`, written a chunk at a time under `FILE.partial/` and resumed there (see the module).

    `done` is the number of records already written by an earlier run of the same job (0 for a new
    one); the caller skips that many texts, checking them with `check_skipped`.

    Raises:
        OutputError: FILE exists (without `overwrite`), `FILE.partial/` is another job's (without
            `overwrite`) or in use by a running one, or it cannot be written.
    """

    def __init__(self, path: str | Path, job: dict, names: tuple[str, ...], *, overwrite: bool = False):
        self.path, self.kind, self.names = Path(path), output_format(path), names
        self.file, self._lock_fd = None, None
        self.folder = Path(f"{path}.partial")
        if self.path.exists() and not overwrite:
            raise OutputError(f"{self.path} exists; pass --overwrite to replace it")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--output {self.path}: cannot write beside it ({e.strerror or e})") from None
        self._lock()
        try:
            self._open(job, overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, job: dict, overwrite: bool) -> None:
        self.job = job
        saved = self._saved()
        if saved is not None and saved["job"] != job and not overwrite:
            differs = next(k for k in sorted({*job, *saved["job"]}) if job.get(k) != saved["job"].get(k))
            was, now = saved["job"].get(differs), job.get(differs)
            what = NAMES.get(differs, differs) + ("" if differs == "weights" else f" ({was!r}, not {now!r})")
            raise OutputError(
                f"{self.folder} holds an unfinished job with another {what}; pass --overwrite to start over, "
                "or another --output"
            )
        if saved is None or saved["job"] != job or overwrite:
            self._start()
        else:
            self.progress = saved["progress"]
            self._reopen()
        self.done = self.progress["records"]
        self.digest = TextDigest(self.progress["digest"])

    # ------------------------------------------------------------------ the partial folder

    def _lock(self) -> None:
        """One job at a time in a partial folder: an OS lock, dropped however the holder ends."""
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"--output {self.path} is being written by another job (pid {holder}); wait for it, or "
                "choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _saved(self) -> dict | None:
        try:
            saved = json.loads((self.folder / JOB).read_text())
            return saved if {"job", "progress"} <= set(saved) else None
        except (OSError, ValueError):
            return None  # nothing committed yet: the job starts from the beginning

    def _data(self) -> Path:
        return self.folder / f"records.{self.kind}"

    def _part(self, n: int) -> Path:
        return self.folder / f"part-{n:06d}.parquet"

    def _start(self) -> None:
        for p in self.folder.iterdir():
            if p.name != "lock":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.progress = {"records": 0, "bytes": 0, "parts": 0, "digest": ""}
        if self.kind != "parquet":
            self.file = open(self._data(), "wb")  # noqa: SIM115 - closed by finish()
            if self.kind == "csv":
                self._append(_csv_lines([columns(self.names)]))
        self._commit()

    def _reopen(self) -> None:
        """Back to the last complete chunk: what a stopped run wrote after it is dropped."""
        parts = [self._part(n) for n in range(self.progress["parts"])]
        data = self._data()
        if self.kind == "parquet":
            lost = not all(p.is_file() for p in parts)
        else:
            lost = (data.stat().st_size if data.is_file() else -1) < self.progress["bytes"]
        if lost:
            raise OutputError(
                f"{self.folder}: its records are not all there (a file removed or cut short); pass "
                "--overwrite to start over"
            )
        if self.kind == "parquet":
            for p in self.folder.glob("part-*.parquet*"):
                if p.name.endswith(".tmp") or int(p.stem.split("-")[1]) >= self.progress["parts"]:
                    p.unlink()
            return
        self.file = open(self._data(), "r+b")  # noqa: SIM115 - closed by finish()
        self.file.truncate(self.progress["bytes"])
        self.file.seek(self.progress["bytes"])

    def _append(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.progress["bytes"] += len(data)

    def _commit(self) -> None:
        """`job.json` replaced in one step: it names the last chunk whose bytes are all on disk."""
        tmp = self.folder / f"{JOB}.tmp"
        with open(tmp, "w") as f:
            json.dump({"job": self.job, "progress": self.progress}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.folder / JOB)

    # ------------------------------------------------------------------ writing

    def check_skipped(self, digest: TextDigest) -> None:
        """Raise unless `digest` (of the texts skipped) is that of the texts the records were written for.

        Raises:
            OutputError: the input's first texts are not those predicted.
        """
        if digest.value != self.progress["digest"]:
            raise OutputError(
                f"{self.folder}: the input's first {self.done:,} texts are not the ones predicted there (the "
                "input changed); pass --overwrite to start over"
            )

    def write(self, texts: list[str], preds) -> None:
        """One chunk's records, committed: on disk before `job.json` counts them."""
        if self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = [table_row(t, p, self.names) for t, p in zip(texts, preds, strict=True)]
            schema = arrow_schema(self.names)
            table = pa.Table.from_arrays(
                [pa.array(list(c), f.type) for c, f in zip(zip(*rows, strict=True), schema, strict=True)],
                schema=schema,
            )
            part = self._part(self.progress["parts"])
            tmp = part.with_name(part.name + ".tmp")
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            tmp.replace(part)
            self.progress["parts"] += 1
        elif self.kind == "csv":
            self._append(_csv_lines(table_row(t, p, self.names) for t, p in zip(texts, preds, strict=True)))
        else:
            self._append(_json_lines(texts, preds, self.names).encode())
        for t in texts:
            self.digest.update(t)
        self.progress["records"] += len(texts)
        self.progress["digest"] = self.digest.value
        self._commit()

    def finish(self) -> Path:
        """The records under the file's own name (replacing it, with `overwrite`); the partial folder gone."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            tmp = self.folder / "merged.parquet"
            with pq.ParquetWriter(tmp, arrow_schema(self.names)) as writer:
                for n in range(self.progress["parts"]):  # a part at a time: memory holds one chunk
                    writer.write_table(pq.read_table(self._part(n)))
            tmp.replace(self.path)
        else:
            self.file.close()
            self._data().replace(self.path)
        shutil.rmtree(self.folder)
        self.close()
        return self.path

    def close(self) -> None:
        """Let go of the output (its lock, its file): what is committed stays for the next run."""
        if getattr(self, "file", None) is not None and not self.file.closed:
            self.file.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the lock
            self._lock_fd = None


def _csv_lines(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _json_lines(texts: list[str], preds, names: tuple[str, ...]) -> str:
    return "".join(json.dumps(record(t, p, names)) + "\n" for t, p in zip(texts, preds, strict=True))
