"""The HTTP side of the live detection service (FastAPI): routes, limits, token, page.

Endpoints: ``GET /health``; ``GET /v1/model``; ``POST /v1/detect`` (an audio file: events and
window scores); ``POST /v1/verify`` (a short clip: the cascade's second-stage check);
``WS /v1/stream`` (16-bit PCM frames in, window scores, events and a status out, one
detector per connection); ``GET /`` the browser view. Inference runs in worker threads, off
the event loop, so a slow request never stalls another connection's frames.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncGenerator
from functools import cache
from importlib.resources import files
from typing import Any, Literal

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pipeline_lib.errors import AudioError, SoundopsError
from pipeline_lib.params import Params, ServiceParams
from pipeline_lib.serving import (
    FrameError,
    Models,
    ServedModel,
    StreamSession,
    TooLongError,
    UnknownVersionError,
    decode_upload,
    detect_clip,
    verify_clip,
)

log = logging.getLogger(__name__)

# WebSocket close codes besides the standard ones (1003 unsupported data, 1007 bad payload,
# 1008 policy, 1009 too big, 1013 try again later): 4401 no token, 4404 unknown model.
CLOSE_UNAUTHORISED, CLOSE_UNKNOWN_MODEL = 4401, 4404

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


class Health(BaseModel):
    status: Literal["ok"]
    model: ModelInfo


@cache
def page() -> str:
    """The browser view, read from the package once."""
    return files("pipeline_lib").joinpath("web/live.html").read_text(encoding="utf-8")


def _token_ok(expected: str | None, header: str | None, query: str | None) -> bool:
    if expected is None:
        return True
    given = (header or "").removeprefix("Bearer ").strip() or (query or "")
    return hmac.compare_digest(given.encode(), expected.encode())


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def create_app(
    models: Models, params: Params, service: ServiceParams, token: str | None
) -> FastAPI:
    """The service over ``models``; ``token`` (when set) guards every ``/v1`` route."""
    app = FastAPI(
        title="soundops live detection",
        version="1",
        description="Serves a registered soundops detector: file detection, second-stage "
        "verification and live microphone streams.",
    )
    app.state.streams = 0
    limit = int(service.max_upload_mb * 1024 * 1024)
    rates = (params.validate_.source_rate_hz.min, params.validate_.source_rate_hz.max)

    def authorised(request: Request) -> None:
        if not _token_ok(
            token, request.headers.get("authorization"), request.query_params.get("token")
        ):
            raise HTTPException(
                401, "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN."
            )

    # registry lookups get threads of their own, so a slow registry cannot take the
    # worker threads that live streams score in
    registry_threads = anyio.CapacityLimiter(4)

    async def lookup(ref: str | None) -> tuple[str, ServedModel]:
        return await anyio.to_thread.run_sync(models.get, ref, limiter=registry_threads)

    async def served(ref: str | None) -> tuple[str, ServedModel]:
        try:
            return await lookup(ref)
        except UnknownVersionError as exc:
            raise HTTPException(404, str(exc)) from None
        except SoundopsError as exc:
            raise HTTPException(503, str(exc)) from None

    async def upload(request: Request) -> tuple[bytes, str]:
        """The body, refused with 413 as soon as it passes the limit (never read whole)."""
        too_big = HTTPException(
            413, f"upload is larger than service.max_upload_mb = {service.max_upload_mb:g} MB."
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        data = b"".join(chunks)
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

    async def samples_of(request: Request, model: ServedModel, max_s: float, key: str) -> Any:
        data, name = await upload(request)
        try:
            return await run_in_threadpool(
                decode_upload, data, name, model.spec.rate, rates, max_s, key
            )
        except TooLongError as exc:
            raise HTTPException(413, str(exc)) from None
        except AudioError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page()

    @app.get("/health", response_model=Health, responses={503: {"description": "no model"}})
    async def health() -> Any:
        """Ready when the default alias resolves to a loaded model."""
        try:
            ref, model = await lookup(None)
        except SoundopsError as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return {"status": "ok", "model": model.info(ref)}

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
        samples = await samples_of(request, model, service.max_detect_s, "service.max_detect_s")
        result = await run_in_threadpool(detect_clip, model, samples)
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
        samples = await samples_of(request, model, service.max_verify_s, "service.max_verify_s")
        result = await run_in_threadpool(verify_clip, model, samples)
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
        if not _token_ok(token, ws.headers.get("authorization"), ws.query_params.get("token")):
            await refuse(ws, CLOSE_UNAUTHORISED, "missing or wrong token: add ?token=TOKEN.")
            return
        if not _same_origin(ws.headers.get("origin"), ws.headers.get("host")):
            await refuse(ws, 1008, "a page from another site may not open /v1/stream.")
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
    import os
    from pathlib import Path

    from pipeline_lib.params import load_params
    from pipeline_lib.tracking import configure

    cfg = json.loads(os.environ[ENV_CONFIG])
    root = Path(cfg["root"])
    params = load_params(root / "params.yaml")
    configure(root, params)
    service = ServiceParams.model_validate(cfg["service"])
    return create_app(Models(root, params, service), params, service, cfg.get("token"))


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
