"""From genericizer outputs to the rows of `instruction_templates`: every output is validated the
same way whichever engine produced it, and every failure is kept with its reason."""

from __future__ import annotations

from fi_method.llm_output import Refused, answered_text
from fi_method.reasons import RejectReason
from fi_method.templating.genericizer import parse_output
from fi_method.templating.templates import count_tags, validate_template
from fi_method.text import content_hash

# instruction_templates' code version, with the genericizer's own: change it whenever
# collect_templates' rows change (the parser, the validation, the ids). tests/goldens/templates.json
# holds them for real queries; tests/test_goldens.py fails when they change while this does not.
TEMPLATES_VERSION = "1"


def collect_templates(
    queries: list[dict], outputs: list[str | Refused], engine: str, model: str
) -> tuple[list[dict], list[dict]]:
    """Pair each query row (`query_id`, `query`, `source`, `line`) with its genericizer output
    (the raw text, parsed here). Kept rows: `template_id` (content hash of the template),
    `query_id`, `query`, `template`, `compatible_document_description`, `n_tags`, `engine`,
    `model`. A template already produced by an earlier query of the shard is rejected as
    `duplicate_template`."""
    kept: list[dict] = []
    rejects: list[dict] = []
    seen: dict[str, str] = {}
    for row, answer in zip(queries, outputs, strict=True):
        origin = {"source": row["source"], "line": row["line"], "item_id": row["query_id"]}
        try:
            output = parse_output(answered_text(answer, RejectReason.PROMPT_TOO_LONG))
            validate_template(output.template, output.compatible_document_description, row["query"])
        except ValueError as error:
            reason = getattr(error, "reason", RejectReason.INVALID_OUTPUT)
            rejects.append({**origin, "reason": reason, "detail": str(error)[:500]})
            continue
        template_id = content_hash(output.template)
        if template_id in seen:
            rejects.append(
                {
                    **origin,
                    "reason": "duplicate_template",
                    "detail": f"same template as query {seen[template_id]}",
                }
            )
            continue
        seen[template_id] = row["query_id"]
        kept.append(
            {
                "template_id": template_id,
                "query_id": row["query_id"],
                "query": row["query"],
                "template": output.template,
                "compatible_document_description": output.compatible_document_description,
                "n_tags": count_tags(output.template),
                "engine": engine,
                "model": model,
            }
        )
    return kept, rejects
