"""How messages name the `fi` command: by its path, on the PATH or not, since a shell reads a bare
`fi` as the keyword that closes an `if`."""

from __future__ import annotations

import sys
from pathlib import Path


def fi_command() -> str:
    """The `fi` of this environment as a user can type it here: relative to the working directory
    when it is under it (`.venv/bin/fi`), else its absolute path."""
    executable = Path(sys.executable).with_name("fi")
    try:
        return str(executable.relative_to(Path.cwd()))
    except ValueError:
        return str(executable)
