"""Output links and downloads: /outputs/ served from the storage, or presigned S3 URLs."""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from alphacut.config import Settings
from alphacut.io.storage import Storage, media_type
from alphacut.jobs.store import Job
from alphacut.service.responses import OutputLink, proxy_link


def output_link(settings: Settings, storage: Storage) -> OutputLink:
    """How responses link to outputs: through /outputs/ on the API node, or presigned."""
    if settings.output_urls != "presigned":
        return proxy_link
    from alphacut.io.s3 import S3Storage

    if not isinstance(storage, S3Storage):  # Settings refuses presigned without s3://
        raise TypeError("presigned output URLs need S3 storage")
    s3 = storage

    def presigned_link(job: Job, relative: str) -> str:
        # Valid while the output is kept: until the job expires (a finished job knows when),
        # else for its TTL from now; "kept for ever" gets S3's maximum, 7 days.
        if job.expires_at is not None:
            lifetime = job.expires_at - time.time()
        else:
            ttl = settings.temp_ttl if job.request["temp"] else settings.output_ttl
            lifetime = ttl if ttl > 0 else float("inf")
        return s3.presigned_url(relative, lifetime)

    return presigned_link


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
