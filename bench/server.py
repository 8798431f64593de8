"""Calls per second of the `openai` engine through a real OpenAI-compatible server: `transformers
serve` with SmolLM2-135M-Instruct on loopback (fi_resources/model_server.py), the genericizer role
over IFBench queries, at several concurrency limits. Each limit starts from an empty call cache,
so every call goes to the server.

    python -m bench.server --queries 16 --concurrency 1 4 --max-new-tokens 32
    python -m bench.server --queries 12 --concurrency 2 --kill-after 5   # kill, restart, resume
    python -m bench.server --base-url http://gpu-box:8000/v1 --model fineinstructions/query_templatizer
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

from bench.common import parser, report, table
from fi_method.templating.ifbench import ifbench_queries
from fi_resources import model_server
from fi_resources.engines import ServerError
from fi_resources.model_calls import open_model_call_cache
from fi_resources.models import SMOLLM2
from fi_resources.roles import Genericizer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_server(model: str, url: str, cache_home: str, args, concurrency: int, **extra):
    """The genericizer role on the openai engine, its call cache under `cache_home`."""
    return Genericizer(
        engine="openai",
        model=model,
        home=cache_home,
        max_new_tokens=args.max_new_tokens,
        openai_base_url=url,
        openai_max_concurrency=concurrency,
        **extra,
    )


def kill_and_resume(args, items, port: int, first_server, concurrency: int) -> str:
    """Kill the local server once `args.kill_after` answers are cached, restart it, rerun: the
    calls made before the kill, by the failed step, and by the rerun."""
    model = model_server.served_model(SMOLLM2, args.home)
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as cache_home:
        genericizer = on_server(model, url, cache_home, args, concurrency, openai_max_retries=1)
        cache = open_model_call_cache(cache_home)

        def killer():
            while cache.frame().height < args.kill_after:
                time.sleep(0.1)
            first_server.kill()

        threading.Thread(target=killer, daemon=True).start()
        try:
            genericizer.call(items)
            error = "none"
        except ServerError as failure:
            error = str(failure)
        before = cache.frame().height
        server = model_server.start(SMOLLM2, args.home, port)
        try:
            rerun = genericizer.call(items)
        finally:
            server.terminate()
            server.wait()
    rows = [
        ["step killed with the server", before, "-", error[:90]],
        ["rerun after the restart", rerun.made, rerun.cached, "-"],
    ]
    return table(["run", "calls made", "from the cache", "error"], rows)


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--queries", type=int, default=16)
    arguments.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    arguments.add_argument("--max-new-tokens", type=int, default=32)
    arguments.add_argument(
        "--home", default=os.environ.get("FI_HOME", "fi_home"), help="FI_HOME, holding SmolLM2"
    )
    arguments.add_argument("--base-url", help="an existing server; default: start one here")
    arguments.add_argument("--model", help="the served model's name (with --base-url)")
    arguments.add_argument(
        "--kill-after", type=int, help="kill the local server after this many answers, resume"
    )
    args = arguments.parse_args()
    items = [{"query": row["query"]} for row in ifbench_queries(limit=args.queries)]
    server = None
    if args.base_url:
        url, model = args.base_url, args.model
    else:
        port = free_port()
        server = model_server.start(SMOLLM2, args.home, port)
        url, model = f"http://127.0.0.1:{port}/v1", model_server.served_model(SMOLLM2, args.home)
    if args.kill_after:
        if server is None:
            raise SystemExit("--kill-after needs the local server (leave out --base-url)")
        body = kill_and_resume(args, items, port, server, args.concurrency[0])
        report("server", args.device, "Kill the server mid-step, restart, resume", body, args.save)
        return
    rows = []
    try:
        for concurrency in args.concurrency:
            with tempfile.TemporaryDirectory() as cache_home:
                calls = on_server(model, url, cache_home, args, concurrency).call(items)
            rows.append(
                [
                    concurrency,
                    calls.made,
                    calls.seconds,
                    calls.made / calls.seconds,
                    (calls.completion_tokens or 0) / calls.seconds,
                ]
            )
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    body = table(["concurrency", "calls", "seconds", "calls/s", "output tokens/s"], rows) + (
        f"\n\n{model} at {url}, genericizer role, {args.max_new_tokens} new tokens at most."
    )
    report("server", args.device, "The openai engine through a local server", body, args.save)


if __name__ == "__main__":
    main()
