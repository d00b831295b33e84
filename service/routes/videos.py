"""Video metadata, thumbnails and the video file itself (with HTTP range requests, for seeking).

The file is served only while it is the one the indexer indexed: its resolved path inside a library folder
the indexer recorded (a link out of the library is a 404 that names no path), its size and mtime the
recorded ones (else 409: `alpro-index` indexes the new content). Thumbnails come from the data dir.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from ..deps import EngineDep, error_responses
from ..schemas import VIDEO_ID_PATTERN, VideoDetail

router = APIRouter(prefix="/videos", tags=["videos"])

VideoIdPath = Annotated[str, Path(pattern=VIDEO_ID_PATTERN, max_length=128, description="a video id from /search")]
SegmentIndexPath = Annotated[int, Path(ge=0, le=10_000_000)]
_THUMBNAIL_HEADERS = {"Cache-Control": "public, max-age=3600"}
_IMAGE = {200: {"content": {"image/jpeg": {}}, "description": "JPEG thumbnail"}}


@router.get("/{video_id}", response_model=VideoDetail, responses=error_responses(401, 404, 422))
async def video(video_id: VideoIdPath, engine: EngineDep) -> VideoDetail:
    """A video's metadata and its segments."""
    return await engine.video(video_id)


@router.get("/{video_id}/thumbnail", response_class=FileResponse,
            responses={**_IMAGE, **error_responses(401, 404, 422)})
async def video_thumbnail(video_id: VideoIdPath, engine: EngineDep) -> FileResponse:
    """The video's first segment thumbnail."""
    path = await engine.thumbnail_file(video_id)
    return FileResponse(path, media_type="image/jpeg", headers=_THUMBNAIL_HEADERS)


@router.get("/{video_id}/segments/{segment_index}/thumbnail", response_class=FileResponse,
            responses={**_IMAGE, **error_responses(401, 404, 422)})
async def segment_thumbnail(video_id: VideoIdPath, segment_index: SegmentIndexPath, engine: EngineDep) -> FileResponse:
    """One segment's thumbnail."""
    path = await engine.thumbnail_file(video_id, segment_index)
    return FileResponse(path, media_type="image/jpeg", headers=_THUMBNAIL_HEADERS)


@router.head("/{video_id}/stream", include_in_schema=False)
@router.get("/{video_id}/stream", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}, "description": "the whole file"},
                       206: {"description": "the byte range asked for in a Range header"},
                       416: {"description": "the Range lies outside the file"},
                       **error_responses(401, 404, 409, 422)})
async def stream(video_id: VideoIdPath, engine: EngineDep) -> FileResponse:
    """The video file; honours `Range: bytes=...` (206 + Content-Range) so players can seek to a moment.

    404 when the file is gone or lies outside the indexed library, 409 when it changed since it was indexed.
    """
    name, path, st = await engine.video_file(video_id)
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    # the stat checked above: the response's length is the verified file's, not a later one's
    return FileResponse(path, media_type=media_type, stat_result=st, content_disposition_type="inline")
