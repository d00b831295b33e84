"""The library: video listings, metadata, failures, thumbnails, and the video files themselves (the original
and the browser preview, with HTTP range requests for seeking).

The original is served only while it is the one the indexer indexed: its resolved path inside a library folder
the indexer recorded (a link out of the library is a 404 that names no path), its size and mtime the
recorded ones (else 409: `alpro-index` indexes the new content). Thumbnails and previews come from the data dir.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import FileResponse

from ..deps import EngineDep, error_responses
from ..errors import InvalidRequestError
from ..schemas import (DEFAULT_TOP_K, MAX_DURATION_S, MAX_LIST_OFFSET, MAX_PAGE_LIMIT, MAX_PATH_PREFIX_CHARS,
                       MAX_TOP_K, VIDEO_ID_PATTERN, FailurePage, SearchResponse, VideoDetail, VideoPage, VideoSort)

router = APIRouter(tags=["videos"])

VideoIdPath = Annotated[str, Path(pattern=VIDEO_ID_PATTERN, max_length=128, description="a video id from /search")]
SegmentIndexPath = Annotated[int, Path(ge=0, le=10_000_000)]
Offset = Annotated[int, Query(ge=0, le=MAX_LIST_OFFSET, description="entries to skip")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT, description="entries per page")]
Duration = Annotated[Optional[float], Query(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]
_THUMBNAIL_HEADERS = {"Cache-Control": "public, max-age=3600"}
_IMAGE = {200: {"content": {"image/jpeg": {}}, "description": "JPEG thumbnail"}}
_VIDEO_FILE = {200: {"content": {"video/mp4": {}}, "description": "the whole file"},
               206: {"description": "the byte range asked for in a Range header"},
               416: {"description": "the Range lies outside the file"}}


@router.get("/videos", response_model=VideoPage, responses=error_responses(401, 422, 503))
async def videos(engine: EngineDep, offset: Offset = 0, limit: Limit = 24,
                 sort: Annotated[VideoSort, Query(description="`indexed_at`: when the indexer took it; `mtime`: "
                                                  "the file's date")] = "path",
                 order: Literal["asc", "desc"] = "asc",
                 path_prefix: Annotated[Optional[str], Query(min_length=1, max_length=MAX_PATH_PREFIX_CHARS,
                                                             description="a folder or file by whole path components, "
                                                             "as in /search filters")] = None,
                 min_duration: Duration = None, max_duration: Duration = None) -> VideoPage:
    """The indexed videos, a page at a time: sorted by path, date indexed, file date, duration or size, and
    filtered by folder and duration (as /search's filters)."""
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise InvalidRequestError(f"min_duration ({min_duration}) is greater than max_duration ({max_duration})")
    return await engine.library.videos(offset=offset, limit=limit, sort=sort, order=order, path_prefix=path_prefix,
                                       min_duration=min_duration, max_duration=max_duration)


@router.get("/failures", response_model=FailurePage, responses=error_responses(401, 422, 503))
async def failures(engine: EngineDep, offset: Offset = 0, limit: Limit = 50) -> FailurePage:
    """The files the indexer could not index (path, reason, when), newest first; each is tried again when it
    changes."""
    return await engine.library.failures(offset=offset, limit=limit)


@router.get("/videos/{video_id}", response_model=VideoDetail, responses=error_responses(401, 404, 422))
async def video(video_id: VideoIdPath, engine: EngineDep) -> VideoDetail:
    """A video's metadata and its segments."""
    return await engine.library.video(video_id)


@router.get("/videos/{video_id}/similar", response_model=SearchResponse, responses=error_responses(401, 404, 422, 503))
async def similar(video_id: VideoIdPath, engine: EngineDep,
                  top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="videos")] = DEFAULT_TOP_K,
                  min_score: Annotated[Optional[float], Query(ge=0, le=1, allow_inf_nan=False,
                                                              description="leave out results scoring below this")]
                  = None) -> Response:
    """The videos most like this one (its segments' vectors as queries, grouped by video, itself left out), in
    /search's response shape: each at its best-matching moment, `score` (1 + cosine) / 2 of the best segment pair."""
    result = await engine.similar(video_id, top_k, min_score)
    return Response(result.model_dump_json(), media_type="application/json")


@router.get("/videos/{video_id}/thumbnail", response_class=FileResponse,
            responses={**_IMAGE, **error_responses(401, 404, 422)})
async def video_thumbnail(video_id: VideoIdPath, engine: EngineDep) -> FileResponse:
    """The video's first segment thumbnail."""
    path = await engine.library.thumbnail_file(video_id)
    return FileResponse(path, media_type="image/jpeg", headers=_THUMBNAIL_HEADERS)


@router.get("/videos/{video_id}/segments/{segment_index}/thumbnail", response_class=FileResponse,
            responses={**_IMAGE, **error_responses(401, 404, 422)})
async def segment_thumbnail(video_id: VideoIdPath, segment_index: SegmentIndexPath, engine: EngineDep) -> FileResponse:
    """One segment's thumbnail."""
    path = await engine.library.thumbnail_file(video_id, segment_index)
    return FileResponse(path, media_type="image/jpeg", headers=_THUMBNAIL_HEADERS)


@router.head("/videos/{video_id}/stream", include_in_schema=False)
@router.get("/videos/{video_id}/stream", response_class=FileResponse,
            responses={**_VIDEO_FILE, **error_responses(401, 404, 409, 422)})
async def stream(video_id: VideoIdPath, engine: EngineDep) -> FileResponse:
    """The original video file; honours `Range: bytes=...` (206 + Content-Range) so players can seek.

    404 when the file is gone or lies outside the indexed library, 409 when it changed since it was indexed.
    """
    name, path, st = await engine.library.video_file(video_id)
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    # the stat checked above: the response's length is the verified file's, not a later one's
    return FileResponse(path, media_type=media_type, stat_result=st, content_disposition_type="inline")


@router.head("/videos/{video_id}/preview", include_in_schema=False)
@router.get("/videos/{video_id}/preview", response_class=FileResponse,
            responses={**_VIDEO_FILE, **error_responses(401, 404, 422)})
async def preview(video_id: VideoIdPath, engine: EngineDep) -> FileResponse:
    """The browser preview of a video the browser cannot play as it is (H.264/AAC MP4, made at index time;
    `preview_url` of a search result or video says whether there is one); range requests as /stream."""
    name, path, st = await engine.library.preview_file(video_id)
    return FileResponse(path, media_type="video/mp4", stat_result=st, filename=name,
                        content_disposition_type="inline")
