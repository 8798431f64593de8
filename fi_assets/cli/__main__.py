"""`python -m fi_assets.cli`: the `fi` command, where the console script is not on the PATH."""

from fi_assets.cli import app

app()
