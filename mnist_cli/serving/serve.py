"""`mnist serve`: a trained run behind HTTP, loaded once: a drawing page at /, POST /predict, GET /model, GET /health.

Requests that arrive together share one model call: each request puts its images on a queue, and one
worker takes up to `max_batch` images or what came within `batch_window_ms`, runs the model in a
thread (the event loop keeps answering meanwhile) and hands each request its own rows. Image bytes
stay in memory and go through images.prepare_file, the path `mnist predict` takes for files: the
same preprocessing and the same pixel limit. A client's file name is only echoed back; nothing a
request sends reaches the file system. Starlette and uvicorn are imported only in serving/ (the extra
mnist-cli[serve]); hosts.py answers the Host header, requests.py reads bodies and queries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import io
import ipaddress
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, Iterator, List, Optional, Tuple

import anyio
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mnist_cli.datasets.images import ImageError, prepare_file
from mnist_cli.errors import UserError
from mnist_cli.inference import ensembles
from mnist_cli.inference.predictions import probabilities, to_rows
from mnist_cli.runs.checkpoints import Trained
from mnist_cli.runs.folder import RunFolder
from mnist_cli.serving.hosts import Hosts, answered_hosts, host_guard
from mnist_cli.serving.requests import (
    multipart_files,
    predict_options,
    read_body,
)
from mnist_cli.training.devices import resolve_device

READER = "mnist serve"  # names the command in the pixel-limit sentence
PAGE_HEADERS = {  # the page may load nothing from elsewhere: it works offline and cannot be pointed at a CDN
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}


@dataclass
class Job:
    """One request's images waiting for the model; `done` gets their probabilities (one row each)."""

    images: List[np.ndarray]
    done: asyncio.Future


@dataclass
class Service:
    """What the app holds: the model and its limits; from the first request on, the batching queue, its worker
    and the limiter of image decoding threads."""

    trained: Trained
    device: torch.device
    topk: int
    max_body: int  # bytes
    max_batch: int  # images in one model call (a single request with more still goes in one call)
    window: float  # seconds the worker waits for more requests after the first
    model: Dict[str, Any]  # GET /model's answer
    page: str
    hosts: Hosts
    answered: int = 0  # POST /predict requests answered
    queue: Optional[asyncio.Queue] = None
    decoders: Optional[anyio.CapacityLimiter] = None
    worker: Optional[asyncio.Task] = field(default=None, repr=False)


# ---- the model, batched ------------------------------------------------------------------------


async def classify(service: Service, images: List[np.ndarray]) -> torch.Tensor:
    """Probabilities (len(images), classes) from a model call shared with the requests that came at the same time."""
    job = Job(images, asyncio.get_running_loop().create_future())
    service.queue.put_nowait(job)
    return await job.done


async def next_batch(service: Service) -> List[Job]:
    """The next job and those that follow it within `window` seconds, up to `max_batch` images."""
    loop = asyncio.get_running_loop()
    jobs = [await service.queue.get()]
    count, deadline = len(jobs[0].images), loop.time() + service.window
    while count < service.max_batch:
        try:
            job = service.queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # polled, not asyncio.wait_for(queue.get(), ...): on Python < 3.12 a timeout that fires as a job
            # arrives loses that job, and its client waits for ever
            await asyncio.sleep(min(remaining, 0.001))
            continue
        jobs.append(job)
        count += len(job.images)
    return jobs


async def run_batches(service: Service) -> None:
    """Forever: one model call (in a thread) for the next batch of jobs, then each job its own rows."""
    while True:
        jobs = await next_batch(service)
        images = [image for job in jobs for image in job.images]
        try:
            probs = await anyio.to_thread.run_sync(probabilities, service.trained, images, service.device, len(images))
        except Exception as error:  # a bug: these requests get a 500, the next batch is tried
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(error)
            continue
        start = 0
        for job in jobs:
            if not job.done.done():  # done already: its client went away and the request was cancelled
                job.done.set_result(probs[start : start + len(job.images)])
            start += len(job.images)


def start_batching(service: Service) -> None:
    """Make the queue, the decoding limiter and the batching worker in the running event loop, once: on the
    first request. (Not in a lifespan handler: a forced quit, a second Ctrl-C, cancels that with a traceback.)"""
    if service.worker is None:
        service.queue = asyncio.Queue()
        service.decoders = anyio.CapacityLimiter(
            os.cpu_count() or 1
        )  # a big image takes a core and up to ~1 GB to decode
        service.worker = asyncio.get_running_loop().create_task(run_batches(service))


# ---- reading a request ---------------------------------------------------------------------------


def prepare_entries(files: List[Tuple[str, bytes]], how: str) -> List[Dict]:
    """`mnist predict`'s entries for uploaded files, in order: {"input", "image"} or {"input", "error"}."""
    entries: List[Dict] = []
    for name, data in files:
        try:
            entries.append({"input": name, "image": prepare_file(io.BytesIO(data), how, READER)})
        except ImageError as error:
            entries.append({"input": name, "error": str(error)})
    return entries


def png_base64(image: np.ndarray) -> str:
    """A 28x28 uint8 image as base64 PNG text (what the page shows as the image the model saw)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- the endpoints -------------------------------------------------------------------------------


async def predict(request: Request) -> JSONResponse:
    """POST /predict: {"predictions": rows} with `mnist predict`'s row fields, one per image (the raw body
    is one image named "body"; multipart: each file). 422 when no image could be read, with "error"."""
    service: Service = request.app.state.service
    start_batching(service)
    try:
        body = await read_body(request, service.max_body)
    except ClientDisconnect:  # the client went away mid-body: nobody to answer, nothing to report
        return Response(status_code=400)
    # after the body: a refusal with a body unread resets the connection
    topk, return_image = predict_options(request, len(service.trained.classes), service.topk)
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):  # parsed off the event loop: a body can be 5 MB of parts
        files = await anyio.to_thread.run_sync(multipart_files, body, content_type, limiter=service.decoders)
        if not files:
            raise HTTPException(
                422, "the multipart body holds no file; send images as file fields (curl -F file=@digit.png)."
            )
    elif not body:
        raise HTTPException(
            422, "the request body is empty; send an image as the body or as multipart/form-data files."
        )
    else:
        files = [("body", body)]
    entries = await anyio.to_thread.run_sync(
        prepare_entries, files, service.trained.config.dataset.prepare, limiter=service.decoders
    )
    images = [entry["image"] for entry in entries if "image" in entry]
    probs = await classify(service, images) if images else torch.zeros(0, len(service.trained.classes))
    rows = to_rows(entries, probs, service.trained.classes, topk)
    if return_image:
        for row, entry in zip(rows, entries):
            if "image" in entry:
                row["image"] = png_base64(entry["image"])
    service.answered += 1
    if not images:
        return JSONResponse({"error": rows[0]["error"], "predictions": rows}, status_code=422)
    return JSONResponse({"predictions": rows})


async def model_info(request: Request) -> JSONResponse:
    """GET /model: dataset, model, classes, topk and the run's metrics (null for a checkpoint outside a run)."""
    return JSONResponse(request.app.state.service.model)


async def health(request: Request) -> JSONResponse:
    """GET /health: {"status": "ok"} once the model is loaded and the server answers."""
    return JSONResponse({"status": "ok"})


async def page(request: Request) -> HTMLResponse:
    """GET /: the drawing page, one self-contained HTML file."""
    return HTMLResponse(request.app.state.service.page, headers=PAGE_HEADERS)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Every refusal as JSON {"error": sentence} with its status (413, 422, 404, 405)."""
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


def build_app(service: Service) -> Starlette:
    """The ASGI app serving `service`."""
    routes = [
        Route("/", page, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/model", model_info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(host_guard, hosts=service.hosts)],
    )
    app.state.service = service
    return app


def run_metrics(trained: Trained) -> Optional[Dict[str, Any]]:
    """The run's summary.json status, epochs and best/final metrics; None for a checkpoint outside a run
    folder, or a run without a readable summary.json."""
    run = RunFolder(trained.run_dir)
    if trained.checkpoint_path.resolve().parent != run.checkpoints:
        return None
    try:
        summary = json.loads(run.summary.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    return {key: summary.get(key) for key in ("status", "epochs_completed", "best", "final")}


def make_service(
    cfg: DictConfig, trained: Trained, device: torch.device, listener: Optional[socket.socket] = None
) -> Service:
    """The Service for `trained` with cfg's limits, answering the host names of cfg and of `listener`'s address
    (without a listener: cfg.host's); the queue and limiter are made when the server starts."""
    config = trained.config
    model = {
        "dataset": config.dataset.name,
        "model": config.model.name,
        "classes": trained.classes,
        "topk": min(cfg.topk, len(trained.classes)),
        "run": trained.run_dir.name if not trained.members else None,
        "metrics": run_metrics(trained) if not trained.members else None,
        "members": [m.run_dir.name for m in trained.members],  # an ensemble's runs; [] for one run
    }
    page = resources.files("mnist_cli.serving").joinpath("page.html").read_text(encoding="utf-8")
    hosts = answered_hosts(cfg, listener.getsockname()[0] if listener else cfg.host)
    return Service(
        trained,
        device,
        cfg.topk,
        int(cfg.max_body_mb * 1_000_000),
        cfg.max_batch,
        cfg.batch_window_ms / 1000,
        model,
        page,
        hosts,
    )


# ---- the process -----------------------------------------------------------------------------------


def open_socket(host: str, port: int) -> socket.socket:
    """A socket listening on (host, port), so that a busy port or a foreign address is one sentence before the
    model loads (uvicorn would log a traceback); port 0 picks a free port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise UserError(
            f"host={host} is not an address or a name this machine can resolve; use host=127.0.0.1."
        ) from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(
        socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
    )  # as uvicorn does: a restart need not wait out TIME_WAIT
    try:
        listener.bind(address)
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRINUSE:
            raise UserError(
                f"port={port} is already in use on {host}; stop what uses it or choose another port=."
            ) from None
        raise UserError(
            f"cannot listen on {host}:{port} ({error.strerror}); use host=127.0.0.1 or another port=."
        ) from None
    listener.listen(2048)  # uvicorn's backlog; listening already, a client that reads the printed URL is never refused
    return listener


def url_of(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(listener: socket.socket) -> bool:
    return ipaddress.ip_address(listener.getsockname()[0]).is_loopback


@contextlib.contextmanager
def stop_signals_noted() -> Iterator[List[int]]:
    """SIGINT and SIGTERM recorded in the list yielded instead of acted on. uvicorn stops gracefully on
    either, then raises it again under the handlers it found: ours, so the process ends with exit 0."""
    noted: List[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, _frame: noted.append(signum))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield noted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def make_server(service: Service) -> Any:
    """The uvicorn server for `service`, not started (run it with sockets=[a listener from open_socket])."""
    import uvicorn

    config = uvicorn.Config(
        build_app(service), lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=10
    )
    return uvicorn.Server(config)


def serve_command(cfg: DictConfig) -> int:
    """Run `mnist serve` until Ctrl-C or SIGTERM; returns the exit code (0 after a clean stop)."""
    listener = open_socket(cfg.host, cfg.port)
    with contextlib.closing(listener):
        device = resolve_device(cfg.device)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        trained = ensembles.load_model(cfg, device)
        service = make_service(cfg, trained, device, listener)
        if not is_loopback(listener):
            print(
                f"mnist serve: warning: host={cfg.host} lets other machines reach this server, which has no authentication.",
                file=sys.stderr,
            )
        print(
            f"mnist serve: {trained.config.model.name} ({trained.config.dataset.name}) from {ensembles.describe(trained)} "
            f"at {url_of(listener)} (Ctrl-C to stop)",
            flush=True,
        )
        server = make_server(service)
        with stop_signals_noted() as noted:
            server.run(sockets=[listener])
    if not server.started:
        print("mnist serve: the server did not start; see the message above.", file=sys.stderr)
        return 1
    how = signal.Signals(noted[0]).name if noted else "request"
    print(f"mnist serve: stopped on {how}; predict requests answered: {service.answered}.", flush=True)
    return 0
