"""What the `rules` genericizer makes of real user queries: the IFBench queries (WildChat prompts
without their constraint sentences), as written and lowercased the way users often type them.
Prints the share that becomes a valid template (parsed and validated exactly as the pipeline does
with any engine's output), the reasons of the rest, the share of slots left with the generic
fallback description, and a few templates.

    python -m bench.genericizer                                   # the current module
    git show 767bca8:fi_method/rules_genericizer.py > /tmp/old_rules_genericizer.py
    python -m bench.genericizer --baseline /tmp/old_rules_genericizer.py --save

--baseline names a copy of an earlier rules_genericizer.py (fi_method/templating/) to measure
beside the current one (the before of a change; 767bca8 holds the word-list rules before spaCy).
CPU only: the rules engine has no model to put on a GPU.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from types import ModuleType

from bench.common import load_module, parser, report, table
from fi_method.templating import rules_genericizer
from fi_method.templating.genericizer import parse_output
from fi_method.templating.ifbench import ifbench_queries
from fi_method.templating.templates import slot_descriptions, validate_template


def _kind(description: str) -> str:
    """The kind a description names: "another person" and "a third person" are "a person"."""
    for ordinal in ("another ", "a third ", "a fourth ", "a fifth ", "a sixth "):
        if description.startswith(ordinal):
            noun = description.removeprefix(ordinal)
            return ("an " if noun[:1] in "aeiou" else "a ") + noun
    return description


def measure(module: ModuleType, queries: list[str]) -> dict:
    """Valid share, reject reasons, slot counts and the fallback share of `module` on `queries`."""
    started = time.perf_counter()
    outputs = [module.rules_output(query) for query in queries]
    seconds = time.perf_counter() - started
    templates, reasons, kinds = [], Counter(), Counter()
    for query, output in zip(queries, outputs, strict=True):
        try:
            found = parse_output(output)
            validate_template(found.template, found.compatible_document_description, query)
        except ValueError as error:
            reasons[getattr(error, "reason", "invalid_output")] += 1
            continue
        templates.append(found.template)
        kinds.update(_kind(description) for description in slot_descriptions(found.template))
    slots = sum(kinds.values())
    return {
        "valid": len(templates) / len(queries),
        "reasons": reasons,
        "slots": slots,
        "slots_per_template": slots / max(1, len(templates)),
        "topic": kinds[module.TOPIC_DESCRIPTION] / max(1, slots),
        "entity": kinds[module.ENTITY_DESCRIPTION] / max(1, slots),
        "kinds": kinds,
        "ms_per_query": 1000 * seconds / len(queries),
        "templates": templates,
    }


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--baseline", help="an earlier rules_genericizer.py to compare with")
    arguments.add_argument("--examples", type=int, default=5, help="templates shown per casing")
    args = arguments.parse_args()
    written = [row["query"] for row in ifbench_queries()]
    casings = {"as written": written, "lowercased": [query.lower() for query in written]}
    modules = {"current": rules_genericizer}
    if args.baseline:
        modules = {
            f"baseline ({Path(args.baseline).name})": load_module(
                args.baseline, "baseline_rules_genericizer"
            ),
            **modules,
        }
    # The first call loads the spaCy pipeline; it is not part of any query's time.
    rules_genericizer.rules_output("Warm up on Paris.")
    rows, examples, kinds = [], [], {}
    for name, module in modules.items():
        for casing, queries in casings.items():
            found = measure(module, queries)
            reasons = ", ".join(f"{r} {n}" for r, n in found["reasons"].most_common(3)) or "-"
            rows.append(
                [
                    name,
                    casing,
                    len(queries),
                    f"{found['valid']:.1%}",
                    reasons,
                    found["slots_per_template"],
                    f"{found['topic']:.1%}",
                    f"{found['entity']:.1%}",
                    len(found["kinds"]),
                    found["ms_per_query"],
                ]
            )
            if module is rules_genericizer:
                kinds[casing] = found["kinds"]
                examples += [f"- ({casing}) `{t}`" for t in found["templates"][: args.examples]]
    common = [
        f"- {casing}: " + ", ".join(f"{kind} {n}" for kind, n in counted.most_common(12))
        for casing, counted in kinds.items()
    ]
    body = (
        table(
            [
                "module",
                "queries",
                "n",
                "valid templates",
                "top reject reasons",
                "slots/template",
                "topic fallback",
                "entity fallback",
                "distinct kinds",
                "ms/query",
            ],
            rows,
        )
        + f"\n\nCPU only, no GPU. IFBench's {len(written)} WildChat queries "
        "(fi_method.templating.ifbench). Topic fallback: "
        f'slots described "{rules_genericizer.TOPIC_DESCRIPTION}"; entity fallback: '
        f'"{rules_genericizer.ENTITY_DESCRIPTION}".\n\nMost common kinds (current):\n'
        + "\n".join(common)
        + "\n\nTemplates (current):\n"
        + "\n".join(examples)
    )
    report("genericizer", "cpu", "The rules genericizer on real queries", body, args.save)


if __name__ == "__main__":
    main()
