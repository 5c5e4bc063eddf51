"""Inference on new text: `Classifier(model_dir).predict(texts)`.

Texts are scored as in `evaluate`'s `score` mode: the class with the highest log-likelihood wins;
`probs` is the softmax over the classes' scores. The classes, verbalizer, prompt and truncation are
those the model was trained with (read from the `flant5_imdb.json` saved beside it) unless given.

Texts of any number stream: they are taken CHUNK at a time, sorted by length within the chunk (little
padding), scored in batches, and given back in input order before the next chunk is read. Under
`accelerate launch` every process reads the same texts and scores its share of each chunk's batches;
the predictions are gathered, so every process gets all of them, the same, bit for bit, as one
process would compute (the batches do not depend on the number of processes).
"""

from __future__ import annotations

import itertools
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object

from flant5_imdb import hub
from flant5_imdb.accel import cpu_threads, main_first, process_state, run_on
from flant5_imdb.data import (
    BadRow,
    Collator,
    DataError,
    check_text_file,
    check_texts,
    prompt_template,
    target_ids,
    text_problem,
    texts_to_predict,
)
from flant5_imdb.evaluate import CHUNK, MAX_MATRIX_CLASSES, TOP_PROBS, deal, score_batch
from flant5_imdb.launch import speaker
from flant5_imdb.modeling import load_trained
from flant5_imdb.output import JsonLines, OutputError, PredictionsFile, Table, TextDigest, output_format
from flant5_imdb.progress import StreamProgress, duration
from flant5_imdb.rundir import WEIGHTS, model_folder


class InputError(ValueError):
    """Input texts that cannot be classified; the message names the file and line."""


@dataclass(frozen=True)
class Prediction:
    label: int  # the class's index
    label_name: str
    probs: dict[str, float]  # every class's probability by name; beyond 30 classes, the 10 most probable

    @property
    def prob(self) -> float:
        """The probability of the predicted class."""
        return self.probs[self.label_name]


class Classifier:
    def __init__(
        self,
        model: str,
        *,
        verbalizer: str | None = None,
        prompt: str | None = None,
        max_source_length: int | None = None,
        batch_size: int = 32,
        device: str | None = None,
        threads: str = "auto",
        chunk_size: int = CHUNK,
    ):
        for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        hub.preflight(hub.needs(model=model))
        self.model, self.tokenizer, settings = load_trained(
            model, verbalizer=verbalizer, prompt=prompt, max_source_length=max_source_length
        )
        self.state = process_state()  # one process, or this one's place in a launch
        self.device = torch.device(device) if device else self.state.device  # under a launch: this process's
        self.threads = cpu_threads(threads, sum(p.numel() for p in self.model.parameters()), self.device)
        self.model.to(self.device).eval()
        self.classes = settings["classes"]
        self.settings = {k: v for k, v in settings.items() if k != "classes"}
        self.targets = target_ids(self.tokenizer, settings["verbalizer"], self.classes)
        self.template = prompt_template(settings["prompt"])
        self.max_source_length = settings["max_source_length"]
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.collate = Collator(pad_token_id=self.tokenizer.pad_token_id)
        self.truncated = 0  # texts cut to max_source_length tokens, of those predicted so far

    @property
    def labels(self):
        """The classes under their former name (`classes` now): code written against it keeps working."""
        warnings.warn("Classifier.labels is now Classifier.classes", DeprecationWarning, stacklevel=2)
        return self.classes

    def predict(self, texts: str | Iterable[str]) -> Prediction | list[Prediction] | Iterator[Prediction]:
        """One prediction per text, in input order: a string gives a Prediction, a list or tuple a list,
        any other iterable (a generator, a file's lines) an iterator that reads it a chunk at a time.

        Raises:
            InputError: a text is empty or not a string (named by its 1-based position).
        """
        if isinstance(texts, str):
            return self.predict([texts])[0]
        stream = (p for chunk in self.predict_chunks(texts) for p in chunk)
        return list(stream) if isinstance(texts, list | tuple) else stream

    @torch.no_grad()
    def predict_chunks(self, texts: Iterable[str]) -> Iterator[list[Prediction]]:
        """The predictions of `chunk_size` texts at a time, in input order, each list given before the
        next chunk is read: memory holds one chunk, whatever the number of texts.

        Raises:
            InputError: a text is empty or not a string (named by its 1-based position).
        """
        it, seen = iter(texts), 0
        while chunk := list(itertools.islice(it, self.chunk_size)):
            for i, t in enumerate(chunk, start=seen + 1):
                problem = text_problem(t)
                if problem:
                    raise InputError(f"text {i}: {problem}")
            seen += len(chunk)
            yield self._chunk(chunk)

    def _chunk(self, texts: list[str]) -> list[Prediction]:
        # Sorted by characters, a length known before tokenizing: each process tokenizes only its batches.
        mine, cut = [], 0
        for idx in deal([len(t) for t in texts], self.batch_size, self.state):
            enc = self.tokenizer(
                [self.template.format(text=texts[i]) for i in idx],
                truncation=True,
                max_length=self.max_source_length,
            )["input_ids"]
            cut += sum(len(ids) >= self.max_source_length for ids in enc)
            batch = self.collate([{"input_ids": ids, "labels": [0]} for ids in enc])
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
            scores, _, _ = score_batch(self.model, batch, self.targets)
            probs = torch.softmax(scores.float(), -1).tolist()
            mine += [(i, y, _kept(p)) for i, y, p in zip(idx, scores.argmax(-1).tolist(), probs, strict=True)]
        out: list[Prediction | None] = [None] * len(texts)
        names = self.classes.names
        for rows, their_cut in gather_object([(mine, cut)]):
            self.truncated += their_cut
            for i, y, p in rows:
                out[i] = Prediction(label=y, label_name=names[y], probs={names[c]: q for c, q in p.items()})
        return out


def _kept(probs: list[float]) -> dict[int, float]:
    """A text's class probabilities as kept: every class's, or beyond MAX_MATRIX_CLASSES classes the TOP_PROBS
    most probable (10,000 classes' probabilities for each of 4,096 texts would be hundreds of MB a chunk)."""
    if len(probs) <= MAX_MATRIX_CLASSES:
        return dict(enumerate(probs))
    return {c: probs[c] for c in sorted(range(len(probs)), key=lambda c: -probs[c])[:TOP_PROBS]}


# ---------------------------------------------------------------------------------------------------
# A prediction job: scripts/predict.py


@dataclass(frozen=True)
class PredictJob:
    """What `scripts/predict.py` is asked: the texts (given, a file, or stdin), the model, the output."""

    model: str
    texts: tuple[str, ...] = ()
    file: str | None = None
    text_column: str = "text"
    output: str | None = None  # a .csv, .jsonl or .parquet file; None: stdout
    overwrite: bool = False
    jsonl: bool = False  # on stdout: JSON lines instead of a table
    batch_size: int = 32
    chunk_size: int = CHUNK
    skip_bad_rows: bool = False
    verbalizer: str | None = None
    prompt: str | None = None
    threads: str = "auto"


class Interrupted(Exception):
    """Ctrl-C (exit 130) or SIGTERM (143) during a job; the message says what was kept."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def run_job(job: PredictJob, *, stdout=None, say=None) -> str:
    """Predict `job`'s texts a chunk at a time, each chunk written before the next is read; returns the
    closing line (how many, how long, where). Under a launch, every process reads the same input and
    predicts its share; the main process writes, and `say`s what the job does (`say`: one line to the
    user, on stderr by default).

    A --file is read through once first, every record checked, so that a bad one stops the job before
    anything is predicted (and the progress bar knows the total); stdin is read once, as it comes.

    Raises:
        DataError, InputError, OutputError: the input, an option or the output, in one line.
        Interrupted: Ctrl-C or SIGTERM; what is written stays written (see `flant5_imdb.output`).
        MainFailed: on the other processes of a launch, where the main process failed first.
    """
    return _Job(job, stdout or sys.stdout, say or _to_stderr).run()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Job:
    def __init__(self, job: PredictJob, stdout, say):
        self.job, self.stdout, self.state, self.out = job, stdout, None, None
        self.skipped = 0  # records left out by --skip-bad-rows
        self.speaks = speaker()  # before the processes meet: every process checks the options alike
        self.say = say if self.speaks else (lambda line: None)
        if job.texts and job.file:
            raise InputError("give texts as arguments or --file, not both")
        if job.output:
            output_format(job.output)
            if job.jsonl:
                raise InputError("--jsonl is for stdout; --output's name sets its format (e.g. out.jsonl)")
            if Path(job.output).exists() and not job.overwrite:  # now, not after reading and loading
                raise OutputError(f"{job.output} exists; pass --overwrite to replace it")
        if job.file:
            check_text_file(job.file)

    def run(self) -> str:
        job = self.job
        self.state = process_state()
        if not job.texts and not job.file and self.state.num_processes > 1:
            raise InputError("several processes cannot share stdin; give the texts with --file")
        # SIGTERM stops the job as Ctrl-C does (a handler can be set from the main thread only).
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
        try:
            return self._run()
        except KeyboardInterrupt:
            raise Interrupted(self._kept(), 130) from None
        except _Terminated:
            raise Interrupted(self._kept(), 143) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            if isinstance(self.out, PredictionsFile):
                self.out.close()  # a no-op once finished

    def _run(self) -> str:
        job = self.job
        total = self._check_input()
        clf = Classifier(model_folder(job.model), verbalizer=job.verbalizer, prompt=job.prompt,
                         batch_size=job.batch_size, chunk_size=job.chunk_size,
                         threads=job.threads)  # fmt: skip
        done = self._open_output(clf)
        texts = self._texts()
        if done:
            self._skip(texts, done)
        progress = StreamProgress("predict", total, done=done, enabled=self.speaks and bool(job.output))
        started = time.perf_counter()
        while chunk := list(itertools.islice(texts, job.chunk_size)):
            preds = clf.predict(chunk)
            with main_first(self.state):  # a write that fails stops every process, not the main one alone
                if self.out is not None:
                    self.out.write(chunk, preds)
            progress.update(len(chunk))
        if job.output:
            progress.close()
        where = self.out.finish() if self.out is not None and job.output else None
        took = duration(time.perf_counter() - started, tenths=True)
        line = f"{progress.done - done:,} texts predicted in {took}"
        line += f" on {run_on(clf.device, clf.threads, 'fp32', self.state.num_processes)}"
        if clf.truncated:
            n, cut = clf.truncated, clf.max_source_length
            line += f"; {n:,} cut to their first {cut} tokens (the model's --max-source-length)"
        if self.skipped:  # the output's rows are then not the input's, one for one
            line += f"; {self.skipped:,} record(s) skipped (each named above): the output holds the others"
        return line + (f"; written: {where}" if where else "")

    def _kept(self) -> str:
        out = self.out
        if isinstance(out, PredictionsFile):
            return (f"stopped: {out.progress['records']:,} predictions kept in {out.folder}; the same "
                    "command continues after them")  # fmt: skip
        return "stopped"

    def _check_input(self) -> int | None:
        """The number of usable texts (None for stdin); a --file is read through and checked first."""
        job = self.job
        if job.texts:
            problems = [f"text {i + 1}: {p}" for i, t in enumerate(job.texts) if (p := text_problem(t))]
            if problems:
                raise InputError(problems[0])
            return len(job.texts)
        if not job.file:
            return None
        progress = StreamProgress(f"reading {job.file}", unit="records", enabled=self.speaks, every=10.0)

        def counted(records):
            for r in records:
                progress.update(1)
                yield r

        records = counted(texts_to_predict(job.file, text_column=job.text_column))
        usable = check_texts(records, skip_bad_rows=job.skip_bad_rows, on_skip=self._skipped)
        if not usable:
            raise InputError(f"no texts in {job.file} (all {progress.done:,} records were skipped)")
        return usable

    def _skipped(self, row: BadRow) -> None:
        self.skipped += 1
        self.say(f"skipped {row}")

    def _texts(self) -> Iterator[str]:
        """The usable texts, one at a time, in input order."""
        job = self.job
        if job.texts:
            yield from job.texts
            return
        for r in texts_to_predict(job.file, text_column=job.text_column):
            if isinstance(r, str):
                yield r
            elif not job.file:  # stdin is read once: its bad records are said as they come
                if not job.skip_bad_rows:
                    raise DataError(f"{r}; pass --skip-bad-rows to leave such records out")
                self._skipped(r)

    def _open_output(self, clf: Classifier) -> int:
        """The output, opened by the main process (the others write nothing); returns how many texts an
        earlier run of this job predicted already, the same on every process."""
        job, names = self.job, clf.classes.names
        with main_first(self.state):
            if self.speaks and job.output:
                self.out = PredictionsFile(job.output, _identity(job, clf), names, overwrite=job.overwrite)
            elif self.speaks:
                self.out = (JsonLines if job.jsonl else Table)(names, self.stdout)
        done = [self.out.done if self.speaks else 0]
        if self.state.num_processes > 1:
            broadcast_object_list(done)
        if done[0]:
            self.say(
                f"{job.output}: an earlier run of this job predicted {done[0]:,} texts; going on after them"
            )
        return done[0]

    def _skip(self, texts: Iterator[str], n: int) -> None:
        """The first `n` texts passed over, checked against those the output's records were written for."""
        digest = TextDigest()
        for t in itertools.islice(texts, n):
            digest.update(t)
        with main_first(self.state):  # the others stop too where the main process refuses
            if self.speaks:
                self.out.check_skipped(digest)


class _Terminated(Exception):
    pass


def _terminated(signum, frame):
    raise _Terminated


def _identity(job: PredictJob, clf: Classifier) -> dict:
    """What an unfinished output must have been written by for a run to continue it: the model (and its
    weights' sizes and times: a model trained again into the same folder is another), the input, the
    settings."""
    model = Path(job.model).expanduser()
    folder = Path(model_folder(job.model))
    weights = [[w, (folder / w).stat().st_size, (folder / w).stat().st_mtime_ns]
               for w in WEIGHTS if (folder / w).is_file()]  # fmt: skip
    return {
        "model": str(model.resolve()) if model.exists() else job.model,
        "weights": weights,
        "input": str(Path(job.file).resolve()) if job.file else ("<arguments>" if job.texts else "<stdin>"),
        "text_column": job.text_column,
        "skip_bad_rows": job.skip_bad_rows,
        "classes": list(clf.classes.names),
        **clf.settings,
    }
