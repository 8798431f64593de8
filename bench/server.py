"""Calls per second of the `openai` engine through a real OpenAI-compatible server: `transformers
serve` with SmolLM2-135M-Instruct on loopback (fi_resources/model_server.py), the genericizer role
over IFBench queries, at several concurrency limits. Each limit starts from an empty call cache,
so every call goes to the server.

    python -m bench.server --queries 16 --concurrency 1 4 --max-new-tokens 32
    python -m bench.server --base-url http://gpu-box:8000/v1 --model fineinstructions/query_templatizer
"""

from __future__ import annotations

import socket
import tempfile

from bench.common import parser, report, table
from fi_method.ifbench import ifbench_queries
from fi_resources import model_server
from fi_resources.models import SMOLLM2
from fi_resources.roles import Genericizer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--queries", type=int, default=16)
    arguments.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    arguments.add_argument("--max-new-tokens", type=int, default=32)
    arguments.add_argument("--home", default="fi_home", help="where SmolLM2 is converted to")
    arguments.add_argument("--base-url", help="an existing server; default: start one here")
    arguments.add_argument("--model", help="the served model's name (with --base-url)")
    args = arguments.parse_args()
    items = [{"query": row["query"]} for row in ifbench_queries(limit=args.queries)]
    server = None
    if args.base_url:
        url, model = args.base_url, args.model
    else:
        port = free_port()
        server = model_server.start(SMOLLM2, args.home, port)
        url, model = f"http://127.0.0.1:{port}/v1", model_server.served_model(SMOLLM2, args.home)
    rows = []
    try:
        for concurrency in args.concurrency:
            with tempfile.TemporaryDirectory() as cache_home:
                genericizer = Genericizer(
                    engine="openai",
                    model=model,
                    home=cache_home,
                    max_new_tokens=args.max_new_tokens,
                    openai_base_url=url,
                    openai_max_concurrency=concurrency,
                )
                calls = genericizer.call(items)
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
