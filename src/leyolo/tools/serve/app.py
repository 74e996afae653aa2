"""The FastAPI app of ``leyolo serve``: routes, lifespan, error answers and the web page.

Endpoints: ``POST /v1/detect`` (one image: multipart field ``image`` or a raw ``image/*``
body), ``POST /v1/detect/batch`` (several ``image`` fields), ``GET /v1/info``, ``/healthz``
(the process answers), ``/readyz`` (the model is loaded and warm), ``/metrics`` (Prometheus
text) and ``/`` (a self-contained page: no CDN, fonts or scripts from elsewhere, enforced by
its Content-Security-Policy). Every error is ``{"error": one line, "request_id"}`` with a 4xx
status for anything a client sent wrong; FastAPI's docs pages are off (they load from a CDN).
"""

from __future__ import annotations

import contextlib
from importlib import resources
from typing import Any, AsyncIterator

from ...optional import require
from .config import ServeConfig
from .limits import ApiError, RequestGuard
from .service import PARAMS, DetectionService
from .uploads import form_fields, parse_multipart

fastapi = require("fastapi", "leyolo serve")
_responses = require("fastapi.responses", "leyolo serve")
_exceptions = require("starlette.exceptions", "leyolo serve")
Request = fastapi.Request
JSONResponse = _responses.JSONResponse
Response = _responses.Response

STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}
ENDPOINTS = {"/", "/v1/detect", "/v1/detect/batch", "/v1/info", "/healthz", "/readyz", "/metrics",
             *(f"/static/{name}" for name in STATIC)}
UNSUPPORTED = ("send multipart/form-data with an 'image' field, or the image itself as the body with "
               "Content-Type: image/*")


def _static() -> dict[str, bytes]:
    """The page's files, read once from the package (shipped as package data)."""
    folder = resources.files(__package__) / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *STATIC)}


def _query_values(request: Any) -> dict[str, str]:
    """Query parameters; ``classes`` may repeat (``classes=0&classes=2``) or be a list (``classes=0,2``)."""
    q = request.query_params
    return {k: ",".join(q.getlist(k)) if k == "classes" else q.getlist(k)[-1] for k in q.keys()}


async def _images_and_values(request: Any, service: DetectionService, many: bool) -> tuple[list[bytes], dict]:
    """The uploaded images and the parameters (query, overridden by form fields) of a detect request."""
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";", 1)[0].strip().lower()
    values = _query_values(request)
    if mime == "multipart/form-data":
        limit = service.config.max_images if many else 1
        parts = parse_multipart(await request.body(), content_type, max_parts=limit + len(PARAMS) + 4)
        files, fields = form_fields(parts, ("image", "images") if many else ("image",))
        values.update(fields)
        if not files:
            raise ApiError(422, "no 'image' file field in the form")
        if len(files) > limit:
            raise ApiError(422, f"{len(files)} images; at most {limit} per request"
                           + ("" if many else " (use /v1/detect/batch for several)"))
        return [f.data for f in files], values
    if mime.startswith("image/") and not many:
        return [await request.body()], values
    raise ApiError(415, "send multipart/form-data with 'image' fields" if many else UNSUPPORTED)


def create_app(config: ServeConfig, detector: Any = None) -> Any:
    """A FastAPI app serving ``detector`` (or ``config.model``, loaded in the background at startup)."""
    service = DetectionService(config, detector)
    static = _static()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:  # uvicorn gets here after the in-flight requests are done
            await service.stop()

    app = fastapi.FastAPI(title="leyolo serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    def error(request: Any, status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        rid = getattr(request.state, "request_id", None)
        return JSONResponse({"error": message, "request_id": rid}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Any:
        return error(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(_exceptions.HTTPException)
    async def http_error(request: Request, exc: Any) -> Any:  # 404, 405 from the router
        return error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return Response(static["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Any:
        if name not in STATIC:
            raise ApiError(404, f"no static file {name!r}")
        return Response(static[name], media_type=STATIC[name], headers=PAGE_HEADERS)

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        if service.ready:
            return {"ready": True}
        body = {"ready": False, "status": "failed" if service.error else "loading", "error": service.error}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.get("/v1/info")
    async def info() -> Any:
        return service.info()

    @app.get("/metrics")
    async def metrics() -> Any:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/detect")
    async def detect(request: Request) -> Any:
        service.check_ready()
        images, values = await _images_and_values(request, service, many=False)
        return JSONResponse((await service.detect(images, values))[0])  # plain JSON: no re-encoding pass

    @app.post("/v1/detect/batch")
    async def detect_batch(request: Request) -> Any:
        service.check_ready()
        images, values = await _images_and_values(request, service, many=True)
        results = await service.detect(images, values)
        for r in results:
            r.pop("model")
        return JSONResponse({"model": service.detector.meta.arch, "results": results})

    app.add_middleware(RequestGuard, max_body=config.max_body_bytes, metrics=service.metrics, endpoints=ENDPOINTS)
    return app


def app_from_env() -> Any:
    """The app factory of ``--workers N``: each uvicorn process builds its own from ``ENV_CONFIG``."""
    return create_app(ServeConfig.from_env())
