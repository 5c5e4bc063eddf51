"""The GPU run's time plan and order (bench/gpu_run.sh), and what its call carries (bench/device_carry.py)."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench import device_carry, rows
from tests.conftest import ROOT

SCRIPT = (ROOT / "bench" / "gpu_run.sh").read_text()
BUDGET, MARGIN = 470, 40


def plan() -> dict[int, list[tuple[str, int | None, int]]]:
    """shot -> [(part, expected seconds or None outside the plan, guard)] from the script's header."""
    shots: dict[int, list] = {}
    for shot, name, expect, guard in re.findall(r"^# plan: (\d)\s+(\w+)\s+(\d+|-)\s+(\d+)\s", SCRIPT, re.M):
        shots.setdefault(int(shot), []).append((name, None if expect == "-" else int(expect), int(guard)))
    return shots


def script_parts(shot: int) -> list[tuple[str, int, list[str]]]:
    """[(part, guard, bench configs it runs)] in the order shot N's function calls them."""
    body = re.search(rf"^shot{shot}\(\) \{{\n(.*?)^\}}", SCRIPT, re.M | re.S).group(1)
    parts = []
    for line in body.splitlines():
        m = re.match(r'\s*(?:part|extra) (\w+) "\$\{LIMIT_\w+:-(\d+)\}"(.*)', line)
        assert m, f"shot {shot}: a line that runs no part: {line!r}"
        configs = re.search(r"--configs (\S+)", m.group(3))
        parts.append((m.group(1), int(m.group(2)), configs.group(1).split(",") if configs else []))
    return parts


def test_every_shot_fits_the_budget_with_a_margin():
    shots = plan()
    assert sorted(shots) == [1, 2, 3] and f"BUDGET=${{BUDGET:-{BUDGET}}}" in SCRIPT
    for shot, parts in shots.items():
        planned = [expect for _, expect, _ in parts if expect is not None]
        assert sum(planned) <= BUDGET - MARGIN, (shot, sum(planned))
        # a part outside the plan comes after every planned one
        outside = [i for i, (_, expect, _) in enumerate(parts) if expect is None]
        assert all(i > max(j for j, p in enumerate(parts) if p[1] is not None) for i in outside)
        for name, expect, guard in parts:
            assert expect is None or expect <= guard, (shot, name)


def test_the_script_runs_the_plan_in_its_order_with_its_guards():
    for shot, parts in plan().items():
        assert [(n, g) for n, _, g in parts] == [(n, g) for n, g, _ in script_parts(shot)], shot


def test_no_compiled_row_comes_before_an_eager_one():
    """Within a shot, and in the bench's own order: one cold compile can take minutes."""
    for shot in plan():
        configs = [c for _, _, cs in script_parts(shot) for c in cs]
        kinds = [rows.compiles(c) for c in configs]
        assert kinds == sorted(kinds), (shot, configs)  # every False (eager) before every True
    kinds = [rows.compiles(n) for n in rows.PLAN]
    assert kinds == sorted(kinds) and kinds.count(False) == 8
    assert {c for shot in plan() for _, _, cs in script_parts(shot) for c in cs} == set(rows.PLAN)


def test_the_compiled_rows_are_the_kernel_path_and_its_evaluation():
    compiled = {n for n in rows.PLAN if rows.compiles(n)}
    assert compiled == {
        "kernels",
        "eval-kernels",
        "kernels-gathered",
        "kernels-8bit-ckpt",
        "kernels-throughput",
    }


class Collected:
    """A pytest plugin that keeps the node ids a session collects."""

    def __init__(self):
        self.ids: list[str] = []

    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]


def test_every_gpu_check_named_by_the_script_exists(monkeypatch):
    """A renamed test would make its part fail at once on the GPU, after the machine had started.
    (Collected in this process: a second one would spend its time importing torch again.)"""
    monkeypatch.chdir(ROOT)
    collected = Collected()
    args = ["-o", "addopts=", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/kernels"]
    assert pytest.main(args, plugins=[collected]) == 0
    listed = collected.ids
    flex = re.search(r"^FLEX=\$NA::(\w+)$", SCRIPT, re.M).group(1)
    flex = f"tests/kernels/test_norm_attention.py::{flex}"
    calls = "\n".join(line for line in SCRIPT.splitlines() if not re.match(r"(KP|NA|FLEX)=", line))
    named = {
        n.replace("$KP", "tests/kernels/test_kernel_path.py")
        .replace("$NA", "tests/kernels/test_norm_attention.py")
        .replace("$FLEX", flex)
        .strip('"')
        for n in re.findall(r'"?\$(?:KP|NA|FLEX)[^\s"]*"?', calls)
    }
    assert len(named) == 10 and named == {n for n in listed if "::" in n}  # every GPU check, once


def fake_wheel(path: Path) -> Path:
    libs = ["cpu", "cuda128", "cuda130", "cuda132", "rocm64", "xpu2026"]
    wheel = path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    files = {"bitsandbytes/__init__.py": b"__version__ = '0.50.2'\n"}
    files |= {f"bitsandbytes/libbitsandbytes_{lib}.so": lib.encode() * 1000 for lib in libs}
    meta = "bitsandbytes-0.50.2.dist-info"
    files[f"{meta}/METADATA"] = b"Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n"
    files[f"{meta}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-any\n"
    )
    record = "".join(f"{name},,\n" for name in files) + f"{meta}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{meta}/RECORD", record)
    return wheel


def test_the_bitsandbytes_wheel_keeps_one_cuda_build_and_still_installs(tmp_path):
    wheel = fake_wheel(tmp_path)
    assert device_carry.main(["slim", str(tmp_path), "--cuda", "130"]) == 0
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    libs = sorted(n.rsplit("/", 1)[1] for n in names if n.endswith(".so"))
    assert libs == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]
    assert {line.split(",")[0] for line in record.splitlines()} == names  # RECORD lists what is there
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
         str(wheel)], check=True, capture_output=True,
    )  # fmt: skip
    assert sorted(p.name for p in (target / "bitsandbytes").glob("*.so")) == libs
    assert device_carry.main(["slim", str(tmp_path), "--cuda", "130"]) == 0  # once cut, again is a no-op


def test_a_cuda_build_the_wheel_lacks_is_named(tmp_path):
    fake_wheel(tmp_path)
    with pytest.raises(SystemExit, match=r"no libbitsandbytes_cuda999.so; its builds: cpu|cuda128, cuda130"):
        device_carry.main(["slim", str(tmp_path), "--cuda", "999"])


def test_a_carry_over_64_mib_stops_with_one_line(tmp_path, capsys):
    device, mib = tmp_path / ".device", 2**20
    device.mkdir()
    room = 64 * mib - device_carry.tree_bytes(ROOT)  # what the working tree leaves of the limit
    with open(device / "data.parquet", "wb") as f:
        f.truncate(room - mib // 2)  # sparse: what counts is what the call sends, the file's size
    assert device_carry.main(["check", str(device), "--root", str(ROOT)]) == 0
    assert capsys.readouterr().out.startswith("carry: 6")
    with open(device / "test.parquet", "wb") as f:
        f.truncate(mib)
    assert device_carry.main(["check", str(device), "--root", str(ROOT)]) == 1
    err = capsys.readouterr().err
    sent = f".device {(room + mib // 2) / mib:.1f} MiB"
    assert len(err.strip().splitlines()) == 1 and "over its 64 MiB limit" in err and sent in err


def script_arrays(rehearse: bool, data: Path) -> dict[str, list[str]]:
    """The script's src, timing and profile arguments, as bash builds them (the GPU's or the rehearsal's),
    with `data` for the GPU's IMDB folder (.device/, which only a prepared checkout has)."""
    block = SCRIPT[SCRIPT.index('if [ "$REHEARSE" = 1 ]; then') :]
    block = block[: block.index("\nfi\n") + 4]
    arrays = "src timing profile scale"
    show = f'for a in {arrays}; do declare -n r=$a; echo "== $a"; printf "%s\\n" "${{r[@]}}"; done'
    out = subprocess.run(["bash", "-c", f"REHEARSE={int(rehearse)} DATA={data}\n{block}{show}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    arrays: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("== "):
            name = line[3:]
            arrays[name] = []
        else:
            arrays[name].append(line)
    return arrays


@pytest.mark.parametrize("rehearse", [False, True], ids=["gpu", "rehearsal"])
def test_every_bench_command_of_the_script_parses(rehearse, tmp_path):
    """Each bench call of the run, with the arguments it gets on the GPU: an option renamed in the bench
    and not in the script would otherwise cost the one GPU call an argparse error."""
    from bench import profile, scale, step_profile

    (tmp_path / "imdb").mkdir()
    (tmp_path / "imdb" / "train.csv").write_text("text,label\na film,1\n")
    arrays = script_arrays(rehearse, tmp_path / "imdb")
    assert arrays["src"] and arrays["timing"] and arrays["profile"]
    calls = re.findall(r'"\$\{BENCH\[@\]\}"([^\n]*)', SCRIPT)
    assert len(calls) >= 5
    for rest in calls:
        args = profile.parse([*arrays["src"], *arrays["timing"], "--out", "o", *rest.split()])
        assert args.configs and set(args.configs) <= set(profile.PLAN), rest
    (rest,) = re.findall(r"bench/step_profile\.py (--config \w+) ", SCRIPT)
    step_profile.parse([*rest.split(), *arrays["src"], *arrays["profile"], "--out", "o"])
    assert '"${scale[@]}"' in SCRIPT
    scaled = scale.parse(arrays["scale"])
    assert scaled.command == "versus" and scaled.model_config in ("flan-t5-base", "tiny")
    if not rehearse:
        assert arrays["src"][arrays["src"].index("--examples") + 1] == "6000"
        assert arrays["src"][arrays["src"].index("--data") + 1] == str(tmp_path / "imdb")
        assert '--data "${DATA:-.device/data/imdb}"' in SCRIPT  # the folder prepare_device.sh fills


def test_gpu_tests_skip_by_their_marker_and_never_return_early():
    """A test that returns early when CUDA is (or is not) there passes without checking anything: on the
    GPU run, a GPU test that asserts nothing would read as a check made. Every `*_on_gpu` test carries
    `needs_cuda`; no test body tests for CUDA to return or skip."""
    import ast

    on_gpu = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        for fn in (
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
        ):
            where = f"{path.name}::{fn.name}"
            for node in ast.walk(fn):
                if isinstance(node, ast.If) and "cuda.is_available" in ast.unparse(node.test):
                    first = ast.unparse(node.body[0])
                    assert first != "return" and not first.startswith("pytest.skip"), where
            if "on_gpu" in fn.name:
                on_gpu.append(where)
                assert "needs_cuda" in [ast.unparse(d) for d in fn.decorator_list], where
    assert len(on_gpu) >= 6  # the kernel path's GPU checks were found, not an empty walk
