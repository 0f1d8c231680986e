"""The HTTP side of the live detection service (FastAPI): routes, limits, token, page.

Endpoints: ``GET /health``; ``GET /v1/model``; ``POST /v1/detect`` (an audio file: events and
window scores); ``POST /v1/verify`` (a short clip: the cascade's second-stage check);
``WS /v1/stream`` (16-bit PCM frames in, window scores, events and a status out, one
detector per connection); ``GET /`` the browser view. Inference runs in worker threads, off
the event loop, so a slow request never stalls another connection's frames.

Every request has a budget (``service:`` in params.yaml): headers within
``header_timeout_s``, an upload's body within ``body_timeout_s`` and ``max_upload_mb``,
its audio within ``max_detect_s``/``max_verify_s`` and ``max_decoded_samples``, and at most
``max_uploads`` uploads scored at once (``upload_queue`` more may wait; the rest get 503),
on threads of their own, so uploads cannot take the cores that admitted streams need.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import math
import os
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import cache
from importlib.resources import files
from typing import Any, Literal

import anyio
import h11
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline_lib.base.errors import AudioError, SoundopsError
from pipeline_lib.base.layout import Layout
from pipeline_lib.base.params import Params, ServiceParams
from pipeline_lib.serve.models import (
    FrameError,
    Models,
    ServedModel,
    StreamSession,
    TokenThrottle,
    TooLongError,
    UnknownVersionError,
    decode_upload,
    detect_clip,
    verify_clip,
)

log = logging.getLogger(__name__)

# WebSocket close codes besides the standard ones (1003 unsupported data, 1007 bad payload,
# 1008 policy, 1009 too big, 1013 try again later): 4401 no token, 4404 unknown model,
# 4429 too many wrong tokens from this address.
CLOSE_UNAUTHORISED, CLOSE_UNKNOWN_MODEL, CLOSE_THROTTLED = 4401, 4404, 4429
CROSS_ORIGIN = (
    "a page from another site may not call this service: requests that carry an Origin "
    "header must come from the service's own pages."
)
RETRY_AFTER_S = 1  # what a refused upload is told to wait: about one upload's scoring
UPLOAD_NICE = 10  # upload threads yield the cores to streams and the event loop
GIL_SWITCH_S = 0.001


def _lower_priority() -> None:
    """Run this upload thread at a lower CPU priority (Linux nice is per thread), so on a
    busy machine the cores go first to the event loop and the streams' threads."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICE)
    except OSError as exc:  # a sandbox may refuse; uploads then share the cores evenly
        log.debug("upload thread keeps its priority: %s", exc)


AUDIO_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An audio file (wav, flac, ogg or mp3; any rate the ingest accepts), "
        "as the raw body or as the multipart field `file`.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


class VerifierInfo(BaseModel):
    kind: Literal["speech-embedding"]
    threshold: float


class VerifierScore(BaseModel):
    score: float
    threshold: float


class ModelInfo(BaseModel):
    name: str
    version: int
    ref: str
    runtime: str
    rate: int
    window_s: float
    hop_s: float
    preset: str
    threshold: float
    smoothing: int
    refractory_s: float
    verify_preset: str
    verify_threshold: float
    possible_level: float
    classes: list[str]
    verifier: VerifierInfo | None = None  # the speech-embedding second stage, when built


class Event(BaseModel):
    time_s: float
    score: float


class Windows(BaseModel):
    time_s: list[float]
    score: list[float]
    smoothed: list[float]


class DetectResponse(BaseModel):
    model: ModelInfo
    duration_s: float
    events: list[Event]
    windows: Windows


class VerifyResponse(BaseModel):
    model: ModelInfo
    label: Literal["target", "other"]
    score: float
    threshold: float
    preset: str
    duration_s: float
    verifier: VerifierScore | None = None  # when present, its decision is the label


class Health(BaseModel):
    status: Literal["ok"]
    model: ModelInfo | None = None  # left out when a token is set and not given


@cache
def page() -> str:
    """The browser view, read from the package once."""
    return files("pipeline_lib.serve").joinpath("web/live.html").read_text(encoding="utf-8")


TokenVerdict = Literal["open", "right", "missing", "wrong", "throttled"]


class TokenCheck:
    """The service token against what a request sent, through the per-address throttle.
    Digests are compared in constant time, so neither the token nor its length leaks
    through response times."""

    def __init__(self, token: str | None, service: ServiceParams) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token is not None else None
        self.throttle = TokenThrottle(service.token_failures, service.token_backoff_s)
        self.service = service

    def verdict(self, client: str, header: str | None, query: str | None) -> TokenVerdict:
        if self._digest is None:
            return "open"
        given = (header or "").removeprefix("Bearer ").strip() or (query or "").strip()
        if not given:
            return "missing"  # not a guess: a page opened without ?token= is not throttled
        if self.throttle.wait_s(client) > 0:
            return "throttled"
        if hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._digest):
            self.throttle.succeeded(client)
            return "right"
        self.throttle.failed(client)
        log.warning("wrong token from %s", client)
        return "wrong"

    def throttled_message(self, client: str) -> tuple[str, int]:
        wait = max(1, math.ceil(self.throttle.wait_s(client)))
        return (
            f"too many wrong tokens from this address (service.token_failures = "
            f"{self.service.token_failures}); retry in {wait} s.",
            wait,
        )


def _client(conn: Request | WebSocket) -> str:
    return conn.client.host if conn.client else "unknown"


class SameOriginMiddleware:
    """Refuses HTTP requests whose ``Origin`` is another site. A browser sends a
    ``text/plain`` or multipart POST from any page without a preflight, so without this a
    page the user visits could make the tokenless local service decode its uploads.
    Requests without an ``Origin`` (curl, scripts, devices) pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            if not _same_origin(headers.get("origin"), headers.get("host")):
                log.warning("refused %s from the page of %s", scope["path"], headers["origin"])
                response = JSONResponse({"detail": CROSS_ORIGIN}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever
    for a request that has sent half its headers, so a few hundred slow clients could hold
    every socket. The deadline starts when the connection opens and again after each
    response; a WebSocket, once upgraded, is no longer this protocol's to time."""

    header_timeout_s: float = 10.0  # set from service.header_timeout_s per worker process
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self.conn.their_state is h11.IDLE:  # the request line and headers are not all in
            log.info(
                "closed a connection from %s: no complete request headers within "
                "service.header_timeout_s = %g s",
                self.client[0] if self.client else "unknown",
                self.header_timeout_s,
            )
            self.transport.close()


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def create_app(
    models: Models, params: Params, service: ServiceParams, token: str | None
) -> FastAPI:
    """The service over ``models``; ``token`` (when set) guards every ``/v1`` route and
    the model details on ``/health``."""
    # uploads are decoded and scored on threads of their own, at a lower priority: the
    # anyio threads that streams score in never wait behind them
    upload_pool = ThreadPoolExecutor(
        service.max_uploads, thread_name_prefix="upload", initializer=_lower_priority
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        upload_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="soundops live detection",
        version="1",
        description="Serves a registered soundops detector: file detection, second-stage "
        "verification and live microphone streams.",
        lifespan=lifespan,
    )
    app.add_middleware(SameOriginMiddleware)
    app.state.streams = 0
    upload_places = anyio.Semaphore(service.max_uploads + service.upload_queue)
    limit = int(service.max_upload_mb * 1024 * 1024)
    rates = (params.validate_.source_rate_hz.min, params.validate_.source_rate_hz.max)
    tokens = TokenCheck(token, service)

    def token_verdict(conn: Request | WebSocket) -> TokenVerdict:
        return tokens.verdict(
            _client(conn), conn.headers.get("authorization"), conn.query_params.get("token")
        )

    def authorised(request: Request) -> None:
        verdict = token_verdict(request)
        if verdict == "throttled":
            message, wait = tokens.throttled_message(_client(request))
            raise HTTPException(429, message, headers={"Retry-After": str(wait)})
        if verdict in ("missing", "wrong"):
            raise HTTPException(
                401, "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN."
            )

    # registry lookups get threads of their own, so a slow registry cannot take the
    # worker threads that live streams score in
    registry_threads = anyio.CapacityLimiter(4)

    async def lookup(ref: str | None) -> tuple[str, ServedModel]:
        hit = models.cached(ref)
        if hit is not None:
            return hit
        return await anyio.to_thread.run_sync(models.get, ref, limiter=registry_threads)

    async def served(ref: str | None) -> tuple[str, ServedModel]:
        try:
            return await lookup(ref)
        except UnknownVersionError as exc:
            raise HTTPException(404, str(exc)) from None
        except SoundopsError as exc:
            raise HTTPException(503, str(exc)) from None

    @asynccontextmanager
    async def admitted() -> AsyncIterator[None]:
        """One of ``max_uploads + upload_queue`` upload places, waited for at most
        ``upload_wait_s``, else 503. The body is read only once a place is had: a waiting
        upload holds no more than the server's read buffer, and a client that ignores
        Retry-After is slowed to one try per wait instead of looping at full speed."""
        placed = False
        try:
            upload_places.acquire_nowait()  # (a zero wait would cancel even a free place)
            placed = True
        except anyio.WouldBlock:
            with anyio.move_on_after(service.upload_wait_s):
                await upload_places.acquire()
                placed = True
        if placed:
            try:
                yield
            finally:
                upload_places.release()
            return
        raise HTTPException(
            503,
            f"no upload place came free within service.upload_wait_s = "
            f"{service.upload_wait_s:g} s (service.max_uploads = {service.max_uploads} are "
            f"scored at once, service.upload_queue = {service.upload_queue} wait); retry in "
            f"{RETRY_AFTER_S} s.",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    async def body(request: Request) -> bytes:
        """The body within ``max_upload_mb`` (413 as soon as it passes, never read whole)
        and ``body_timeout_s`` (408, and the connection is closed)."""
        too_big = HTTPException(
            413, f"upload is larger than service.max_upload_mb = {service.max_upload_mb:g} MB."
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        try:
            with anyio.fail_after(service.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise too_big
                    chunks.append(chunk)
        except TimeoutError:
            log.info(
                "upload from %s: %d bytes in service.body_timeout_s, closed",
                _client(request),
                size,
            )
            raise HTTPException(
                408,
                f"the upload did not arrive within service.body_timeout_s = "
                f"{service.body_timeout_s:g} s.",
                headers={"Connection": "close"},
            ) from None
        except ClientDisconnect:
            log.info("upload from %s: the client left after %d bytes", _client(request), size)
            raise HTTPException(
                400, "the client disconnected before its upload was complete."
            ) from None
        return b"".join(chunks)

    async def upload(request: Request) -> tuple[bytes, str]:
        """The uploaded file's bytes and name: the raw body, or a multipart field ``file``."""
        data = await body(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return data, request.query_params.get("name") or "upload"
        try:
            form = await MultiPartParser(
                request.headers, _once(data), max_files=1, max_fields=8
            ).parse()
        except MultiPartException as exc:
            raise HTTPException(400, f"multipart upload: {exc.message}") from None
        try:
            field = form.get("file")
            if not isinstance(field, UploadFile):
                raise HTTPException(422, "multipart upload has no file in the field 'file'.")
            return await field.read(), field.filename or "upload"
        finally:
            await form.close()

    async def scored(
        request: Request,
        model: ServedModel,
        max_s: float,
        key: str,
        score: Callable[[ServedModel, np.ndarray], dict[str, Any]],
    ) -> dict[str, Any]:
        """An upload decoded and scored on the upload threads, within its budget."""
        async with admitted():
            data, name = await upload(request)

            def work() -> dict[str, Any]:
                samples = decode_upload(
                    data, name, model.spec.rate, rates, max_s, key, service.max_decoded_samples
                )
                return score(model, samples)

            result: dict[str, Any] = {}
            try:
                # shielded: the upload keeps its place until its thread is done with it
                with anyio.CancelScope(shield=True):
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(upload_pool, work)
            except TooLongError as exc:
                raise HTTPException(413, str(exc)) from None
            except AudioError as exc:
                raise HTTPException(422, str(exc)) from None
            return result

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page()

    @app.get(
        "/health",
        response_model=Health,
        response_model_exclude_none=True,
        responses={503: {"description": "no model"}},
    )
    async def health(request: Request) -> Any:
        """Ready when the default alias resolves to a loaded model. With a token set, the
        model's version and thresholds are shown only to a request that sends it."""
        detailed = token_verdict(request) in ("open", "right")
        try:
            ref, model = await lookup(None)
        except SoundopsError as exc:
            detail = str(exc) if detailed else "no model is loaded."
            return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503)
        return {"status": "ok", "model": model.info(ref) if detailed else None}

    @app.get("/v1/model", response_model=ModelInfo, dependencies=[Depends(authorised)])
    async def model_info(alias: str | None = None) -> Any:
        """The version behind ``alias`` (default ``service.alias``) and its decision rules."""
        ref, model = await served(alias)
        return model.info(ref)

    @app.post(
        "/v1/detect",
        response_model=DetectResponse,
        dependencies=[Depends(authorised)],
        openapi_extra=AUDIO_BODY,
    )
    async def detect(request: Request, alias: str | None = None) -> Any:
        """Events (calibrated rule) and every window's score for an audio file."""
        ref, model = await served(alias)
        result = await scored(
            request, model, service.max_detect_s, "service.max_detect_s", detect_clip
        )
        return {"model": model.info(ref), **result}

    @app.post(
        "/v1/verify",
        response_model=VerifyResponse,
        dependencies=[Depends(authorised)],
        openapi_extra=AUDIO_BODY,
    )
    async def verify(request: Request, alias: str | None = None) -> Any:
        """Second-stage check of a short clip a device woke on (``service.verify_preset``)."""
        ref, model = await served(alias)
        result = await scored(
            request, model, service.max_verify_s, "service.max_verify_s", verify_clip
        )
        return {"model": model.info(ref), **result}

    async def refuse(ws: WebSocket, code: int, message: str) -> None:
        log.warning("stream refused (%d): %s", code, message)
        await ws.send_json({"type": "error", "code": code, "message": message})
        reason = message.encode()[:120].decode(errors="ignore")  # a close frame holds 123 bytes
        await ws.close(code=code, reason=reason)

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket, alias: str | None = None, rate: int | None = None) -> None:
        """16-bit little-endian mono PCM frames in; per frame one JSON message out."""
        await ws.accept()
        if not _same_origin(ws.headers.get("origin"), ws.headers.get("host")):
            await refuse(ws, 1008, "a page from another site may not open /v1/stream.")
            return
        verdict = token_verdict(ws)
        if verdict == "throttled":
            await refuse(ws, CLOSE_THROTTLED, tokens.throttled_message(_client(ws))[0])
            return
        if verdict in ("missing", "wrong"):
            await refuse(ws, CLOSE_UNAUTHORISED, "missing or wrong token: add ?token=TOKEN.")
            return
        if app.state.streams >= service.max_streams:
            await refuse(
                ws,
                1013,
                f"service.max_streams = {service.max_streams} streams are open; retry later.",
            )
            return
        app.state.streams += 1  # taken before the first await, so a rush cannot overshoot
        try:
            await _serve_stream(ws, alias, rate)
        except WebSocketDisconnect:
            pass
        finally:
            app.state.streams -= 1

    async def _serve_stream(ws: WebSocket, alias: str | None, rate: int | None) -> None:
        try:
            ref, model = await lookup(alias)
        except UnknownVersionError as exc:
            await refuse(ws, CLOSE_UNKNOWN_MODEL, str(exc))
            return
        except SoundopsError as exc:
            await refuse(ws, 1011, str(exc))
            return
        if rate is not None and rate != model.spec.rate:
            await refuse(
                ws,
                1003,
                f"rate {rate} Hz: /v1/stream takes 16-bit mono PCM at the model's "
                f"{model.spec.rate} Hz; resample before sending.",
            )
            return
        session = StreamSession(model, service)
        await ws.send_json({"type": "ready", "model": model.info(ref)})
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                try:
                    samples = session.check(msg["bytes"])
                except FrameError as exc:
                    await refuse(ws, exc.code, str(exc))
                    return
                await ws.send_json(await run_in_threadpool(session.feed, samples))
                continue
            if _is_end(msg.get("text") or ""):
                await ws.send_json(await run_in_threadpool(session.finish))
                await ws.close(1000)
                return
            await refuse(
                ws,
                1003,
                'text message: /v1/stream takes binary 16-bit PCM frames and {"type": "end"}.',
            )
            return

    return app


ENV_CONFIG = "SOUNDOPS_SERVE_CONFIG"


def from_environment() -> FastAPI:
    """The app of one uvicorn worker process, configured by ``soundops serve-model``
    through :data:`ENV_CONFIG` (project root, service settings, token)."""
    from pathlib import Path

    from pipeline_lib.base.params import load_params
    from pipeline_lib.release.tracking import configure

    cfg = json.loads(os.environ[ENV_CONFIG])
    root = Path(cfg["root"])
    params = load_params(Layout(root).params)
    configure(root, params)
    service = ServiceParams.model_validate(cfg["service"])
    TimedH11Protocol.header_timeout_s = service.header_timeout_s  # this worker's connections
    # the GIL passes to a waiting thread after 1 ms instead of 5: a stream frame crosses
    # it several times (loop, worker thread, loop) while upload threads run Python code
    sys.setswitchinterval(GIL_SWITCH_S)
    app = create_app(Models(root, params, service), params, service, cfg.get("token"))
    # the imported libraries' objects (torch, MLflow, onnxruntime: millions) leave the
    # collector's view: a full collection over them stalled every stream for 0.4-0.6 s
    # under upload load, with them frozen it takes tens of milliseconds
    gc.freeze()
    return app


def _same_origin(origin: str | None, host: str | None) -> bool:
    """Browsers send Origin on WebSocket connections; another site's page must not reach
    the microphone stream of a service on this machine. Non-browser clients send none."""
    if not origin:
        return True
    from urllib.parse import urlsplit

    return urlsplit(origin).netloc == (host or "")


def _is_end(text: str) -> bool:
    try:
        return bool(json.loads(text) == {"type": "end"})
    except json.JSONDecodeError:
        return False
