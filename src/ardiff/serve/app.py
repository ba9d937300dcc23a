"""The HTTP side of `ardiff serve`: a FastAPI app over a :class:`~ardiff.serve.studio.Studio`.

Routes (JSON in and out; errors are ``{"error": "one line"}`` with status 400, 404, 413 or 503):

- ``GET /``: the page (one HTML file: its styles and script inline, nothing fetched from elsewhere).
- ``GET /api/info``: the models the page may use, their recorded settings, the limits, the queue.
- ``GET /api/queue``: what runs and how many wait.
- ``POST /api/images``: a class grid (waits its turn in the queue).
- ``POST /api/stream``: starts a stream and answers with newline-delimited JSON events as it
  runs: ``queued`` (the stream's id and place in the queue), ``start``, ``frames`` (each
  block's frames as PNG data URLs, their classes and the seconds since the start),
  ``schedule`` (an edit took effect), then ``done`` or ``error``. Closing the response stops
  the stream.
- ``POST /api/stream/{id}/schedule``: edit the running stream's schedule; ``/stop``: stop it;
  ``GET /api/stream/{id}/video.mp4``: the MP4, written as the frames were made.
- ``POST /api/story``: a story by the ARM and by ARM + ACDC, with the memory's prompts and the
  reader's scores.

Why FastAPI and not Gradio: Gradio runs on FastAPI itself, and adds a 31 MB wheel and 51 more
packages (80 MB of downloads, pandas among them) plus a front end whose default theme fetches
its fonts from a CDN; a stream there is a generator whose yields pass through Gradio's own
queue. Here a stream is one HTTP response whose lines are sent as each block is made, and the
page is one file that works offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Annotated

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from ardiff.serve.studio import RequestError, Studio

__all__ = ["create_app"]

PAGE = Path(__file__).with_name("page.html")
MAX_BODY_BYTES = 64 * 1024  # a story or a schedule is far smaller
JSONBody = Annotated[dict, Body()]


def create_app(studio: Studio) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        studio.close()

    # No /docs: FastAPI's documentation pages load their scripts from a CDN.
    app = FastAPI(title="ardiff", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    page = PAGE.read_text()

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def not_json(request: Request, error: RequestValidationError):
        return JSONResponse({"error": "the request body must be a JSON object of the view's fields"},
                            status_code=400)

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"the request is {int(length)} bytes; this server takes at most "
                                          f"{MAX_BODY_BYTES}"}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/api/info")
    async def info():
        return studio.info()

    @app.get("/api/queue")
    async def queue_status():
        return studio.queue.status()

    @app.post("/api/images")
    async def images(request: JSONBody):
        return await _result(studio.images(request))

    @app.post("/api/story")
    async def story(request: JSONBody):
        return await _result(studio.story(request))

    @app.post("/api/stream")
    async def start_stream(request: JSONBody):
        job = studio.start_stream(request)
        return StreamingResponse(_stream_events(studio, job), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/stream/{job_id}/schedule")
    async def edit_schedule(job_id: str, request: JSONBody):
        return studio.edit_stream(job_id, request.get("prompts"), request.get("switch_now"))

    @app.post("/api/stream/{job_id}/stop")
    async def stop(job_id: str):
        return studio.stop_stream(job_id)

    @app.get("/api/stream/{job_id}/video.mp4")
    async def video(job_id: str):
        job = studio.stream_job(job_id)
        if not job.finished:
            raise RequestError(f"stream {job_id} is still running; the MP4 is ready when it ends", status=409)
        if not job.mp4.is_file():
            raise RequestError(f"stream {job_id} made no frames", status=404)
        return FileResponse(job.mp4, media_type="video/mp4", filename=f"ardiff-{job_id}.mp4")

    return app


async def _result(future):
    """A queued job's result; its RequestError passes through, any other error is one line too."""
    try:
        return await asyncio.wrap_future(future)
    except RequestError:
        raise
    except ValueError as e:
        raise RequestError(str(e)) from None


async def _stream_events(studio: Studio, job):
    """The job's events as JSON lines; while it waits, its place in the queue. A client that
    goes away stops the stream (the worker moves on to the next request)."""
    import queue

    def line(event: dict) -> bytes:
        return (json.dumps(event) + "\n").encode()

    position = studio.queue.position(job.future)
    yield line({"event": "queued", "id": job.id, "position": position, "queue": studio.queue.status()})
    try:
        while True:
            try:
                event = await asyncio.to_thread(job.events.get, timeout=0.25)
            except queue.Empty:
                now = studio.queue.position(job.future)
                if now != position and now:
                    yield line({"event": "queued", "id": job.id, "position": now, "queue": studio.queue.status()})
                position = now
                continue
            yield line(event)
            if event["event"] in ("done", "error"):
                return
    finally:
        if not job.finished:
            studio.stop_stream(job.id)
