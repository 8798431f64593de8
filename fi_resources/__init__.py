"""Everything that talks to the outside: settings, storage layout, the Dagster instance, model
engines, the embedder and the LanceDB template index."""
