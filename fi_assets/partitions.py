"""Every asset is partitioned by the input shard it derives from. Shards are registered by
`fi ingest` or by the inbox sensor, one partition per ingested file or dataset."""

import dagster as dg

query_shards = dg.DynamicPartitionsDefinition(name="query_shards")
doc_shards = dg.DynamicPartitionsDefinition(name="doc_shards")
