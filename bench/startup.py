"""How fast `fi` commands start: the median wall time of each command as a user runs it (a fresh
process each time), and the imports that cost the most in `fi sql "select 1"`
(`python -X importtime`), so that a slow start can be traced to the library behind it.

    python -m bench.startup
    FI_HOME=fi_home python -m bench.startup --repeats 5 --save   # over a demo's data root
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import parser, report, table

FI = [sys.executable, "-m", "fi_assets.cli"]
COMMANDS = {
    "fi --help": ["--help"],
    'fi sql "select 1"': ["sql", "select 1"],
    'fi sql "select count(*) from judged_pairs"': ["sql", "select count(*) from judged_pairs"],
}
TOP_IMPORTS = 8
# `-X importtime` lines: "import time: <self us> | <cumulative us> | <indented module>".
_IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)")


def wall_seconds(arguments: list[str], environment: dict, repeats: int) -> tuple[float, int]:
    """The median wall time of a fresh `fi` process with `arguments`, and its exit code."""
    seconds, code = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        code = subprocess.run(
            FI + arguments, env=environment, capture_output=True, check=False
        ).returncode
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), code


def costliest_imports(environment: dict) -> list[tuple[str, float]]:
    """The top-level imports of `fi sql "select 1"` that took longest, with their cumulative
    seconds."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fi_assets.cli", "sql", "select 1"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    found = []
    for line in run.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        # One space of indent: imported by the program itself, not by another module.
        if match and len(match.group(2)) == 1:
            found.append((match.group(3), int(match.group(1)) / 1e6))
    return sorted(found, key=lambda item: -item[1])[:TOP_IMPORTS]


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    args = arguments.parse_args()
    with tempfile.TemporaryDirectory() as empty:
        environment = os.environ | {"FI_HOME": os.environ.get("FI_HOME", empty)}
        home = Path(environment["FI_HOME"]).resolve()
        rows = []
        for name, command in COMMANDS.items():
            seconds, code = wall_seconds(command, environment, args.repeats)
            rows.append([name, seconds, "ok" if code == 0 else f"exit {code}"])
        imports = costliest_imports(environment)
    body = (
        f"Data root: {'an empty one' if home.name.startswith('tmp') else home}. Median of "
        f"{args.repeats} fresh processes each.\n\n"
        + table(["command", "seconds", "result"], rows)
        + '\n\nCostliest top-level imports of `fi sql "select 1"` (cumulative):\n\n'
        + table(["module", "seconds"], imports)
    )
    report("startup", "cpu", "fi start-up", body, args.save)


if __name__ == "__main__":
    main()
