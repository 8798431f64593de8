import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from fi_resources.settings import get_settings


@pytest.fixture
def fi_home(tmp_path, monkeypatch):
    """A fresh data root for one test, seen by the settings, the CLI and the definitions."""
    home = tmp_path / "fi_home"
    monkeypatch.setenv("FI_HOME", str(home))
    monkeypatch.delenv("FI_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A TCP port on loopback that nothing listens on."""
    return _free_port()


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on loopback for the session, as (bin folder, port, run
    as); stopped (by its pid file) afterwards. Skips without Debian's postgresql package."""
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    bin_dir = initdb[-1].parent
    # PostgreSQL refuses to run as root: then the cluster belongs to the `postgres` user.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="fi-pg-"))
    if as_owner:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_owner, *command], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "fi", "--auth=trust")
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(folder / "log"),
        "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
        "-w",
        "start",
    )
    try:
        yield bin_dir, port, run
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's PostgreSQL, as a SQLAlchemy URL."""
    bin_dir, port, run = postgres_server
    name = f"fi_{uuid.uuid4().hex[:12]}"
    run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "fi", name)
    return f"postgresql+psycopg2://fi@127.0.0.1:{port}/{name}"


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory) -> Path:
    """A data root holding SmolLM2-135M-Instruct converted once from its offline GGUF, shared
    by the tests that serve it."""
    from fi_resources.model_server import served_model
    from fi_resources.models import SMOLLM2

    home = tmp_path_factory.mktemp("smollm2_home")
    served_model(SMOLLM2, home)
    return home


class ModelServer:
    """A real `transformers serve` process serving SmolLM2 on loopback; restartable on its
    port."""

    def __init__(self, home: Path, log: Path):
        from fi_resources.model_server import served_model
        from fi_resources.models import SMOLLM2

        self.home, self.log, self.port = home, log, _free_port()
        self.model = served_model(SMOLLM2, home)
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        from fi_resources import model_server
        from fi_resources.models import SMOLLM2

        self.process = model_server.start(SMOLLM2, self.home, self.port, self.log)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def model_server(smollm2_home, tmp_path_factory):
    """SmolLM2 behind a real OpenAI-compatible server for the tests of one module (an idle
    server still takes CPU from the tests after it)."""
    server = ModelServer(smollm2_home, tmp_path_factory.mktemp("server") / "serve.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_model_server(smollm2_home, tmp_path):
    """A server of the test's own, which the test may kill and restart."""
    server = ModelServer(smollm2_home, tmp_path / "serve.log")
    server.start()
    yield server
    server.kill()


# llama.cpp's window for the tests: a short query's genericizer prompt and answer fit, a
# 3,500-character one does not.
LLAMA_CPP_CONTEXT_TOKENS = 1024


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory):
    """SmolLM2's GGUF behind llama.cpp's OpenAI-compatible server, whose context window
    (LLAMA_CPP_CONTEXT_TOKENS) it enforces as vLLM does: its URL and model name."""
    from fi_resources import model_server
    from fi_resources.models import SMOLLM2_GGUF

    port = _free_port()
    log = tmp_path_factory.mktemp("llama_cpp") / "serve.log"
    process = model_server.start_llama_cpp(port, LLAMA_CPP_CONTEXT_TOKENS, log)
    yield f"http://127.0.0.1:{port}/v1", SMOLLM2_GGUF
    process.kill()
    process.wait(timeout=30)
