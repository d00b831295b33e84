"""What every request body shares: strict validation, the hard caps, query text and video ids."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

# Hard caps. Settings may lower the query length and top_k, never raise them.
MAX_QUERY_CHARS = 1000  # a query or question longer than this is refused (422), not truncated
MAX_DURATION_S = 1e7
VIDEO_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"  # content-hash ids; an id is never a path

QueryText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS)]
VideoId = Annotated[str, StringConstraints(pattern=VIDEO_ID_PATTERN, max_length=128)]


class Request(BaseModel):
    # strict: "5" is not an int and true is not 1; unknown fields are an error, not silently ignored
    model_config = ConfigDict(extra="forbid", strict=True)
