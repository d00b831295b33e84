"""The search service (`alpro-serve`): FastAPI over the indexer's data dir and ALPRO checkpoints.

`create_app(settings)` builds the app; its lifespan loads the checkpoint(s) and the current index version
once. Imports `model` and `store` (the index format), never `indexer`; nothing imports this package.
"""
