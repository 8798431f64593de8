"""What constrained decoding buys a small model: the genericizer role on the `transformers` engine
with SmolLM2-135M-Instruct (shipped offline) over the demo's IFBench queries, once decoding
freely and once constrained to the role's JSON schema by xgrammar. Prints the share of queries
that became a valid template, the reasons of the rest, and the first templates of each.

    python -m bench.structured                  # the demo's 98 queries
    python -m bench.structured --queries 20 --max-new-tokens 128

Calls go through the call cache under --home (default FI_HOME), so a rerun pays only for what
changed (a new schema, another budget).
"""

from __future__ import annotations

import os
from collections import Counter

from bench.common import parser, report, table
from fi_method.corpus.decontamination import default_index
from fi_method.samples import DEMO_QUERIES
from fi_method.templating.ifbench import ifbench_queries
from fi_method.templating.instruction_templates import collect_templates
from fi_method.templating.queries import filter_queries
from fi_resources.embedder import torch_device
from fi_resources.models import SMOLLM2
from fi_resources.roles import Genericizer


def run(structured: bool, queries: list[dict], args, home: str):
    genericizer = Genericizer(
        engine="transformers",
        model=SMOLLM2,
        home=home,
        device=args.device,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        structured_outputs=structured,
    )
    calls = genericizer.call([{"query": q["query"]} for q in queries])
    kept, rejects = collect_templates(queries, calls.outputs, "transformers", SMOLLM2)
    return kept, rejects, calls


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--queries", type=int, default=DEMO_QUERIES)
    arguments.add_argument("--batch-size", type=int, default=8)
    arguments.add_argument("--max-new-tokens", type=int, default=256)
    arguments.add_argument("--examples", type=int, default=5)
    arguments.add_argument("--home", default=os.environ.get("FI_HOME", "fi_home"))
    args = arguments.parse_args()
    device = torch_device(args.device)
    # The demo's queries as raw_queries keeps them (cleaned, deduplicated, decontaminated).
    ingested = [
        {"text": row["query"], "source": "ifbench", "line": i + 1, "turn": 0}
        for i, row in enumerate(ifbench_queries(limit=args.queries))
    ]
    queries, _ = filter_queries(ingested, default_index().match)
    rows, examples = [], []
    for structured in (False, True):
        kept, rejects, calls = run(structured, queries, args, args.home)
        mode = "xgrammar JSON schema" if structured else "free"
        reasons = Counter(r["reason"] for r in rejects).most_common(3)
        rows.append(
            [
                mode,
                len(queries),
                f"{len(kept) / len(queries):.1%}",
                ", ".join(f"{reason} {n}" for reason, n in reasons) or "-",
                f"{calls.made} made, {calls.cached} cached",
                calls.seconds,
            ]
        )
        examples += [f"- ({mode}) `{row['template']}`" for row in kept[: args.examples]]
    body = (
        table(
            ["decoding", "queries", "valid templates", "top reject reasons", "calls", "seconds"],
            rows,
        )
        + f"\n\nSmolLM2-135M-Instruct, greedy, {args.max_new_tokens} new tokens at most, "
        f"batch {args.batch_size}.\n\n" + "\n".join(examples)
    )
    report("structured", device, "Structured decoding: the genericizer on SmolLM2", body, args.save)


if __name__ == "__main__":
    main()
