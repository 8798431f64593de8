"""The one place the Dagster definitions are built: assets, sensor and resources, with resource
settings taken from FI_* environment variables or fi.toml (fi_resources.settings)."""

import dagster as dg

from fi_assets.documents import documents
from fi_assets.ingestion import inbox_sensor, ingested_documents, ingested_queries
from fi_assets.queries import raw_queries
from fi_assets.templates import instruction_templates, template_index
from fi_resources.embedder import Embedder
from fi_resources.genericizer import Genericizer
from fi_resources.settings import Settings, get_settings
from fi_resources.storage import Storage
from fi_resources.template_index import TemplateIndex

ASSETS = [ingested_queries, ingested_documents, raw_queries, documents, instruction_templates, template_index]


def build_resources(settings: Settings) -> dict:
    """The resources of every asset, configured from `settings`."""
    storage = Storage(home=str(settings.home))
    return {
        "storage": storage,
        "genericizer": Genericizer(
            engine=settings.genericizer_engine,
            model=settings.genericizer_model,
            device=settings.device,
            batch_size=settings.generation_batch_size,
            max_new_tokens=settings.max_new_tokens,
        ),
        "embedder": Embedder(model=settings.embedder_model, device=settings.device),
        "index": TemplateIndex(uri=str(storage.lancedb_dir)),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(assets=ASSETS, sensors=[inbox_sensor], resources=build_resources(settings))


defs = build_definitions(get_settings())
