"""Output downloads: /outputs/ served from the storage (the links to them, or presigned S3 URLs
instead, are built by ``alphacut.jobs.results``)."""

from __future__ import annotations

import asyncio

from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from alphacut.io.storage import Storage, media_type


def _not_found() -> Response:
    return JSONResponse({"status": "error", "message": "output not found"}, status_code=404)


async def output_response(storage: Storage, relative: str) -> Response:
    """The output at ``relative``: a local file as before (ranges, ETag), or streamed from
    the bucket in chunks (never held whole in memory); 404 JSON if there is none."""
    opened = await asyncio.to_thread(storage.open_output, relative)
    if opened is None:
        return _not_found()
    if opened.path is not None:
        return FileResponse(opened.path, media_type=media_type(relative))
    return StreamingResponse(
        opened.chunks,
        media_type=media_type(relative),
        headers={"content-length": str(opened.size)},
    )
