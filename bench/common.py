"""What every benchmark shares: the machine it ran on, a seeded clock, a measured matmul peak to
compare with, and one Markdown table printed (and, with --save, kept under bench/results/ with the
machine, date and command)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import pkgutil
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

RESULTS = Path(__file__).resolve().parent / "results"
REPOSITORY = RESULTS.parent.parent


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: device, repeats, and --save."""
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    arguments.add_argument("--repeats", type=int, default=3, help="timed repeats (median kept)")
    arguments.add_argument(
        "--save", action="store_true", help="also write the output to bench/results/"
    )
    return arguments


def machine(device: str) -> str:
    """One line naming the hardware: the GPU when the device is one, else the CPU."""
    import torch

    cores = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    host = f"{cpu}, {cores} cores, {memory:.0f} GiB"
    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_properties(0)
        return f"{gpu.name} ({gpu.total_memory / 2**30:.0f} GiB); host {host}"
    return host


def synchronise() -> None:
    """Wait for queued GPU work, so that a timer counts it (nothing to wait for on the CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(work: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call, the device synchronised at both ends."""
    synchronise()
    started = time.perf_counter()
    result = work()
    synchronise()
    return time.perf_counter() - started, result


def median_seconds(work: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """The median wall time of `work` over `repeats` runs after `warmup` untimed ones, with the
    device synchronised so queued GPU work is counted."""
    for _ in range(warmup):
        work()
    return statistics.median(timed(work)[0] for _ in range(repeats))


def interleaved(
    works: dict[str, Callable[[], object]], repeats: int, warmup: int = 0
) -> dict[str, tuple[float, object]]:
    """Median seconds and last result of each work over `repeats` rounds in which they take
    turns (so that a shared machine's changing load falls on all of them alike), after `warmup`
    untimed rounds."""
    for _ in range(warmup):
        for work in works.values():
            work()
    seconds: dict[str, list[float]] = {name: [] for name in works}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, work in works.items():
            elapsed, results[name] = timed(work)
            seconds[name].append(elapsed)
    return {name: (statistics.median(seconds[name]), results[name]) for name in works}


def alias_flat_fi_method() -> None:
    """Let `fi_method.<module>` name each module now under a stage folder
    (`fi_method.<stage>.<module>`), as it did before fi_method was grouped by stage: the
    baselines are files of earlier commits, and import the flat names."""
    import fi_method

    for stage in pkgutil.iter_modules(fi_method.__path__):
        if not stage.ispkg or stage.name == "data":
            continue
        package = importlib.import_module(f"fi_method.{stage.name}")
        for module in pkgutil.iter_modules(package.__path__):
            flat = f"fi_method.{module.name}"
            if flat not in sys.modules:
                sys.modules[flat] = importlib.import_module(f"{package.__name__}.{module.name}")


def load_module(path: str, name: str) -> ModuleType:
    """An earlier copy of a module, loaded from its file under `name` (registered first:
    dataclasses look their module up by name), its imports of fi_method's flat names resolved
    by alias_flat_fi_method."""
    alias_flat_fi_method()
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def matmul_peak(device: str, dtype_name: str = "auto", size: int = 4096) -> float:
    """FLOP/s of a square matmul on `device`: the practical limit the MFU columns compare with
    when no published peak is known (the CPU). bf16 on a GPU, float32 on the CPU by default."""
    import torch

    dtype = {
        "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
    }[dtype_name]
    size = size if device.startswith("cuda") else min(size, 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, repeats=5, warmup=2)
    return 2 * size**3 / seconds


_MAX_RSS = "Maximum resident set size (kbytes): "


def fi_peak_rss(home: Path, *arguments: str, environment: dict | None = None):
    """Run `fi ARGUMENTS` on the data root `home` in a fresh process under /usr/bin/time -v:
    (seconds, peak RSS in MB of the largest process it ran, its stdout). Exits naming the
    command and its output when it fails."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "fi_assets.cli", *arguments]
    started = time.perf_counter()
    run = subprocess.run(
        command,
        env=os.environ | {"FI_HOME": str(home)} | (environment or {}),
        cwd=home,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(
            f"fi {' '.join(arguments)} failed ({run.returncode}):\n{run.stdout}\n{run.stderr[-3000:]}"
        )
    line = next(line for line in run.stderr.splitlines() if _MAX_RSS in line)
    return seconds, int(line.split(_MAX_RSS)[1]) // 1024, run.stdout


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats get three significant figures, large ones thousands separators."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, device: str, title: str, body: str, save: bool) -> None:
    """Print the benchmark's output under a header (machine, date, command); with `save`, also
    write it to bench/results/<date>T<time>_<cpu|gpu>_<name>.md (UTC)."""
    now = datetime.now(UTC)
    command = "python -m bench." + name + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = (
        f"## {title}\n\n"
        f"- machine: {machine(device)}\n"
        f"- date: {now.isoformat(timespec='seconds')}\n"
        f"- command: `{command.strip()}`\n\n"
        f"{body}\n"
    )
    print(text)
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        kind = "gpu" if device.startswith("cuda") else "cpu"
        path = RESULTS / f"{now:%Y-%m-%dT%H%M}_{kind}_{name}.md"
        path.write_text(text)
        print(f"saved {path.relative_to(RESULTS.parent.parent)}", file=sys.stderr)


def source_at(revision: str, path: str) -> str | None:
    """A file of the repository as it was at a git revision; None where it had no such file."""
    shown = subprocess.run(
        ["git", "show", f"{revision}:{path}"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=False,
    )
    return shown.stdout if shown.returncode == 0 else None


def load_source(source: str, name: str) -> ModuleType:
    """`source` (an earlier copy of a module) loaded as module `name` (see load_module)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        return load_module(str(path), name)
