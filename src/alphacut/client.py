"""Python client for the removebg_mask API, sync (``Client``) and async (``AsyncClient``).

It speaks the public HTTP contract only, so it works against alphacut and against the hosted
API alike::

    from alphacut import Client
    result = Client("http://127.0.0.1:7000", key="...").remove("photo.jpg", bg_color="#fff")
    result.image.save("cutout.png")

Local images (paths, bytes, PIL images) travel as data URIs; ``http(s)://`` strings are sent as
URLs for the server to fetch. A ``"processing"`` answer is polled on the fetch endpoint until
the job ends or the timeout passes.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, cast

import httpx
from PIL import Image

__all__ = [
    "AlphacutAPIError",
    "AlphacutClientError",
    "AlphacutTimeout",
    "AsyncClient",
    "Client",
    "RemovalResult",
]

DEFAULT_BASE_URL = "http://127.0.0.1:7000"
REMOVE_PATH = "/api/v5/removebg_mask"
FETCH_PATH = "/api/v5/fetch/{id}"

ImageInput = str | os.PathLike[str] | bytes | bytearray | Image.Image

_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


_Params = ParamSpec("_Params")
_Self = TypeVar("_Self")
_Return = TypeVar("_Return")


class AlphacutClientError(Exception):
    """Base class of the client's errors."""

    __module__ = "alphacut"  # public as alphacut.AlphacutClientError, as its subclasses


class AlphacutAPIError(AlphacutClientError):
    """The server answered an error (or a failed job): ``status_code`` and its ``message``."""

    __module__ = "alphacut"

    def __init__(self, message: str, status_code: int, body: dict[str, Any] | None = None):
        super().__init__(f"{message} (HTTP {status_code})")
        self.message = message
        self.status_code = status_code
        self.body = body or {}


class AlphacutTimeout(AlphacutClientError, TimeoutError):
    """The job did not finish in time; ``job_id`` (if known) can still be fetched later."""

    __module__ = "alphacut"

    def __init__(self, message: str, job_id: int | None = None):
        super().__init__(message)
        self.job_id = job_id


@dataclass
class RemovalResult:
    id: int
    meta: dict[str, Any]
    generation_time: float
    output_url: str
    content: bytes = b""  # the output file's bytes (base64 outputs already decoded)
    image: Image.Image | None = None  # None when downloading was switched off
    raw: dict[str, Any] = field(default_factory=dict[str, Any])  # the whole JSON answer

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the output file as served (its format is ``meta["format"]``)."""
        target = Path(path)
        target.write_bytes(self.content)
        return target


# remove_arguments' parameters that steer the call rather than travel as request fields.
_CALL_SETTINGS = frozenset({"image", "timeout", "download"})


@dataclass(frozen=True)
class RemoveCall:
    """One ``remove()`` call's arguments: what to send, and how long to wait for it."""

    image: ImageInput
    timeout: float | None
    download: bool
    fields: dict[str, Any]  # the request fields given, by their API names


def remove_arguments(
    image: ImageInput,
    *,
    timeout: float | None = None,
    download: bool = True,
    alpha_matting: bool | None = None,
    post_process_mask: bool | None = None,
    only_mask: bool | None = None,
    inverse_mask: bool | None = None,
    seed: int | None = None,
    alpha_matting_foreground_threshold: int | None = None,
    alpha_matting_background_threshold: int | None = None,
    alpha_matting_erode_size: int | None = None,
    webhook: str | None = None,
    track_id: str | int | None = None,
    base64: bool | None = None,
    temp: bool | None = None,
    instant_response: bool | None = None,
    model: str | None = None,
    mask_quality: Literal["normal", "high"] | None = None,
    guided_upsampling: bool | None = None,
    decontaminate: bool | None = None,
    bg_color: str | None = None,
    bg_image: str | None = None,
    crop: bool | None = None,
    crop_margin: int | str | None = None,
    scale: float | str | None = None,
    position: str | None = None,
    format: Literal["png", "webp", "jpg"] | None = None,
    quality: int | None = None,
    channels: Literal["rgba", "alpha"] | None = None,
) -> RemoveCall:
    """The parameters of ``Client.remove`` and ``AsyncClient.remove``, written once.

    ``image`` is a path, bytes, a PIL image or an ``http(s)://`` URL. ``timeout`` (seconds; the
    client's by default) bounds the whole call, polling included; ``download=False`` skips
    downloading the output. The other keywords are the API's request fields (see the server's
    ``/docs``); None leaves a field out of the request, so the server's default applies.
    """
    # Every parameter, by name; locals() holds nothing else yet.
    arguments = dict(locals())
    fields = {
        name: value
        for name, value in arguments.items()
        if name not in _CALL_SETTINGS and value is not None
    }
    return RemoveCall(image, timeout, download, fields)


def _same_parameters_as(
    spec: Callable[_Params, Any],
) -> Callable[
    [Callable[Concatenate[_Self, ...], _Return]], Callable[Concatenate[_Self, _Params], _Return]
]:
    """Give a ``(self, *args, **kwargs)`` method the parameters of ``spec``, for type checkers
    (through the ParamSpec) and for ``help()``/``inspect`` (through ``__signature__``).

    The method itself stays as written (a coroutine function stays one); it checks its
    arguments by calling ``spec(*args, **kwargs)``, which raises TypeError for a wrong one.
    """

    def decorate(
        method: Callable[Concatenate[_Self, ...], _Return],
    ) -> Callable[Concatenate[_Self, _Params], _Return]:
        signature = inspect.signature(spec)
        self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        vars(method)["__signature__"] = signature.replace(
            parameters=[self_parameter, *signature.parameters.values()],
            return_annotation=inspect.signature(method).return_annotation,
        )
        return method

    return decorate


def _mime(data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/octet-stream"  # the server looks at the bytes, not at this label


def image_field(image: ImageInput) -> str:
    """The request's ``image`` value: a URL as is, anything local as a data URI."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless, and keeps an alpha channel
        data = buffer.getvalue()
    elif isinstance(image, bytes | bytearray):
        data = bytes(image)
    elif isinstance(image, str) and image.strip().lower().startswith(
        ("http://", "https://", "data:")
    ):
        return image.strip()
    else:
        data = Path(image).read_bytes()
    return f"data:{_mime(data)};base64,{base64.b64encode(data).decode()}"


class _Base:
    """What both clients share: building requests and reading answers (no I/O here)."""

    def __init__(self, base_url: str, key: str, timeout: float, poll_interval: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.poll_interval = poll_interval

    def _payload(self, call: RemoveCall) -> dict[str, Any]:
        return {"key": self.key, "image": image_field(call.image), **call.fields}

    def _fetch_url(self, body: dict[str, Any]) -> str:
        # A "processing" answer names its fetch URL; fetch answers themselves do not.
        return body.get("fetch_result") or self.base_url + FETCH_PATH.format(id=body["id"])

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        try:
            answer: Any = response.json()
        except ValueError:
            raise AlphacutAPIError(
                f"the server answered {response.reason_phrase or 'non-JSON'}", response.status_code
            ) from None
        if not isinstance(answer, dict):
            raise AlphacutAPIError("the server answered an unexpected body", response.status_code)
        body = cast(dict[str, Any], answer)  # JSON objects have string keys
        # Some servers answer errors with HTTP 200 (ALPHACUT_ERRORS_HTTP_200): read the body too.
        if response.status_code >= 400 or body.get("status") in ("error", "failed"):
            message = body.get("message") or body.get("messege") or "request failed"
            raise AlphacutAPIError(str(message), response.status_code, body)
        return body

    @staticmethod
    def _timeout(job_id: int | None, seconds: float) -> AlphacutTimeout:
        return AlphacutTimeout(
            f"job {job_id} did not finish within {seconds:g} s; fetch it later with fetch()", job_id
        )

    @staticmethod
    def _result(body: dict[str, Any], content: bytes | None) -> RemovalResult:
        url = body["output"][0]
        image = None
        if content is not None:
            if url.endswith(".base64"):
                content = base64.b64decode(content)
            image = Image.open(io.BytesIO(content))
            image.load()
        return RemovalResult(
            id=body["id"],
            meta=body.get("meta") or {},
            generation_time=float(body.get("generationTime") or 0.0),
            output_url=url,
            content=content or b"",
            image=image,
            raw=body,
        )


class Client(_Base):
    """Synchronous client. ``Client(base_url, key).remove(image, bg_color="#fff", ...)``."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        key: str = "",
        *,
        timeout: float = 120.0,
        poll_interval: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, key, timeout, poll_interval)
        self._http = httpx.Client(transport=transport, follow_redirects=True)

    @_same_parameters_as(remove_arguments)
    def remove(self, *args: Any, **kwargs: Any) -> RemovalResult:
        """Remove the background; the keywords are the API's fields (only_mask, bg_color...).

        Waits (polling the fetch endpoint) until the job ends, at most ``timeout`` seconds.
        """
        call = remove_arguments(*args, **kwargs)
        limit = self.timeout if call.timeout is None else call.timeout
        deadline = time.monotonic() + limit
        body = self._request(
            "POST",
            self.base_url + REMOVE_PATH,
            deadline,
            limit,
            None,
            json=self._payload(call),
        )
        fetch_url = self._fetch_url(body) if body.get("status") == "processing" else ""
        while body.get("status") == "processing":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(body.get("id"), limit)
            time.sleep(min(self.poll_interval, remaining))
            body = self._request(
                "POST", fetch_url, deadline, limit, body.get("id"), json={"key": self.key}
            )
        content = (
            self._download(body["output"][0], deadline, limit, body["id"])
            if call.download
            else None
        )
        return self._result(body, content)

    def fetch(self, job_id: int) -> dict[str, Any]:
        """The fetch endpoint's answer for a job (success, processing; failed raises)."""
        response = self._http.post(
            self.base_url + FETCH_PATH.format(id=job_id),
            json={"key": self.key},
            timeout=self.timeout,
        )
        return self._check(response)

    def _request(
        self,
        method: str,
        url: str,
        deadline: float,
        limit: float,
        job_id: int | None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        try:
            response = self._http.request(
                method, url, timeout=max(1.0, deadline - time.monotonic()), **kwargs
            )
        except httpx.TimeoutException:
            raise self._timeout(job_id, limit) from None
        except httpx.HTTPError as exc:
            raise AlphacutClientError(f"could not reach {url}: {exc}") from exc
        return self._check(response)

    def _download(self, url: str, deadline: float, limit: float, job_id: int) -> bytes:
        try:
            response = self._http.get(url, timeout=max(1.0, deadline - time.monotonic()))
        except httpx.TimeoutException:
            raise self._timeout(job_id, limit) from None
        except httpx.HTTPError as exc:
            raise AlphacutClientError(f"could not download {url}: {exc}") from exc
        if response.status_code >= 400:
            raise AlphacutAPIError(f"could not download the output {url}", response.status_code)
        return response.content

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client: ``await AsyncClient(base_url, key).remove(image, ...)``."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        key: str = "",
        *,
        timeout: float = 120.0,
        poll_interval: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, key, timeout, poll_interval)
        self._http = httpx.AsyncClient(transport=transport, follow_redirects=True)

    @_same_parameters_as(remove_arguments)
    async def remove(self, *args: Any, **kwargs: Any) -> RemovalResult:
        """Like ``Client.remove``; reading a local file or encoding it happens in a thread."""
        call = remove_arguments(*args, **kwargs)
        limit = self.timeout if call.timeout is None else call.timeout
        deadline = time.monotonic() + limit
        payload = await asyncio.to_thread(self._payload, call)
        body = await self._request(
            "POST", self.base_url + REMOVE_PATH, deadline, limit, None, json=payload
        )
        fetch_url = self._fetch_url(body) if body.get("status") == "processing" else ""
        while body.get("status") == "processing":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(body.get("id"), limit)
            await asyncio.sleep(min(self.poll_interval, remaining))
            body = await self._request(
                "POST", fetch_url, deadline, limit, body.get("id"), json={"key": self.key}
            )
        content = (
            await self._download(body["output"][0], deadline, limit, body["id"])
            if call.download
            else None
        )
        return await asyncio.to_thread(self._result, body, content)

    async def fetch(self, job_id: int) -> dict[str, Any]:
        response = await self._http.post(
            self.base_url + FETCH_PATH.format(id=job_id),
            json={"key": self.key},
            timeout=self.timeout,
        )
        return self._check(response)

    async def _request(
        self,
        method: str,
        url: str,
        deadline: float,
        limit: float,
        job_id: int | None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, url, timeout=max(1.0, deadline - time.monotonic()), **kwargs
            )
        except httpx.TimeoutException:
            raise self._timeout(job_id, limit) from None
        except httpx.HTTPError as exc:
            raise AlphacutClientError(f"could not reach {url}: {exc}") from exc
        return self._check(response)

    async def _download(self, url: str, deadline: float, limit: float, job_id: int) -> bytes:
        try:
            response = await self._http.get(url, timeout=max(1.0, deadline - time.monotonic()))
        except httpx.TimeoutException:
            raise self._timeout(job_id, limit) from None
        except httpx.HTTPError as exc:
            raise AlphacutClientError(f"could not download {url}: {exc}") from exc
        if response.status_code >= 400:
            raise AlphacutAPIError(f"could not download the output {url}", response.status_code)
        return response.content

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
