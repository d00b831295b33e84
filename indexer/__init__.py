"""The indexer: `alpro-index VIDEOS_DIR` decodes, embeds and writes a FAISS index plus SQL metadata.

Reader (discover + decode) -> embedder (batched model calls) -> writer (cache, thumbnails, SQL), then a
publish step that builds an immutable FAISS index version, then browser-playable previews (previewer). The
format it writes (and the service reads) lives in the `store` package.
"""
