"""The code stays readable in pieces: no function in the package or the bench runs over 60 lines, no bench
module over 400, and the bench's entry point, `bench/profile.py`, within 200 (what it runs lives in
modules of their own)."""

import ast

from tests.conftest import ROOT

LONGEST = 60


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for folder in ("flant5_imdb", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LONGEST:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 60 lines: " + "; ".join(long)


def test_no_bench_module_is_longer_than_four_hundred_lines():
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in (ROOT / "bench").glob("*.py")
    }
    assert not {p: n for p, n in sizes.items() if n > 400}, sizes
    assert sizes["bench/profile.py"] <= 200, sizes["bench/profile.py"]
