"""What the GPU call carries: the bitsandbytes wheel cut to one CUDA build, and the 64 MiB check.

    python3 bench/device_carry.py slim .device/whl --cuda 130   # keep libbitsandbytes_cuda130.so only
    python3 bench/device_carry.py check .device                 # .device + the working tree <= 64 MiB?

Standard library only: it runs before anything is installed. `bench/prepare_device.sh` calls both.

The bitsandbytes wheel holds a native library for every CUDA, ROCm and XPU release it supports
(43 MB of the 55 MB a prepared .device held); the GPU image's torch loads exactly one of them
(torch 2.11+cu130: `libbitsandbytes_cuda130.so`). The others are dropped from the wheel and from
its RECORD, so that pip installs what is left as it would the whole wheel.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

CARRY_LIMIT = 64 * 2**20  # bytes a device call carries: the working tree and the carried paths together
NATIVE = re.compile(r"(^|/)libbitsandbytes_(cuda\d+|rocm\d+|xpu\d+)\.so$")


def slim_wheel(wheel: Path, cuda: str) -> tuple[int, int]:
    """Rewrite `wheel` without the native libraries of other CUDA/ROCm/XPU builds; (bytes before, after).

    Raises:
        SystemExit: the wheel has no build for `cuda` (naming the builds it has).
    """
    keep = f"cuda{cuda}"
    before = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        builds = sorted(m.group(2) for n in names if (m := NATIVE.search(n)))
        if keep not in builds:
            raise SystemExit(f"{wheel.name}: no libbitsandbytes_{keep}.so; its builds: {', '.join(builds)}")
        dropped = {n for n in names if (m := NATIVE.search(n)) and m.group(2) != keep}
        if not dropped:
            return before, before
        tmp = wheel.with_name(wheel.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for info in z.infolist():
                if info.filename in dropped:
                    continue
                data = z.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if line.split(",", 1)[0] not in dropped).encode()
                out.writestr(info, data)
    os.replace(tmp, wheel)
    return before, wheel.stat().st_size


def tree_bytes(root: Path) -> int:
    """Bytes the call sends of the working tree: tracked files, and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    return sum(
        (root / os.fsdecode(n)).stat().st_size for n in listed if n and (root / os.fsdecode(n)).is_file()
    )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("slim", help="cut every bitsandbytes wheel in FOLDER to one CUDA build")
    s.add_argument("folder", type=Path)
    s.add_argument("--cuda", default="130", help="the CUDA build to keep, as in libbitsandbytes_cuda130.so")
    c = sub.add_parser("check", help="stop if FOLDER plus the working tree passes the carry limit")
    c.add_argument("folder", type=Path)
    c.add_argument("--root", type=Path, default=Path.cwd(), help="the working tree (default: here)")
    args = p.parse_args(argv)
    mib = 2**20
    if args.command == "slim":
        for wheel in sorted(args.folder.glob("bitsandbytes-*.whl")):
            before, after = slim_wheel(wheel, args.cuda)
            print(
                f"{wheel.name}: {before / mib:.1f} MiB -> {after / mib:.1f} MiB (CUDA build {args.cuda} kept)"
            )
        return 0
    device, tree = folder_bytes(args.folder), tree_bytes(args.root)
    total = device + tree
    if total > CARRY_LIMIT:
        print(
            f"the GPU call's carry would be {total / mib:.1f} MiB ({args.folder} {device / mib:.1f} MiB "
            f"+ the working tree {tree / mib:.1f} MiB), over its {CARRY_LIMIT // mib} MiB limit: prepare "
            "without --with-test, or remove what the GPU run does not read",
            file=sys.stderr,
        )
        return 1
    print(f"carry: {total / mib:.1f} MiB of {CARRY_LIMIT // mib} MiB ({args.folder} {device / mib:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
