"""``omnifuse serve``: online inference on LitServe, with dynamic batching, a web page, health and metrics.

    omnifuse serve runs/easyvqa/latest/checkpoints/best.ckpt [--port 8000] [--max-batch-size 64] [--batch-timeout 0.01]

Routes: ``POST /predict`` (one record as JSON or a multipart form -> its prediction row, as ``predictions.jsonl``
holds it), ``GET /`` (a page to try the model), ``GET /health``, ``GET /metrics`` (Prometheus text format).

Processes: LitServe runs the HTTP server and the model worker(s) as separate processes. Requests are checked in the
HTTP process (``gate``), queued, merged into batches in the worker and answered by ``predict_batch`` (``api``).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from omnifuse.app.serve.inputs import ServeLimits, ServeSettings

PAGE = Path(__file__).with_name("page.html")
API_KEY_ENV = "OMNIFUSE_API_KEY"
# LitServe binds these three; "localhost" means 127.0.0.1. Anything but loopback needs an API key.
HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "0.0.0.0": "0.0.0.0", "::": "::"}
LOOPBACK = ("127.0.0.1",)


class ServeError(Exception):
    """A refused ``omnifuse serve`` start (one line for the user)."""


def model_settings(model_path: str | Path) -> dict:
    """Input settings a model was trained with (image size, sample rate, audio cap, token budget): from a ``.ckpt``'s
    data-module and task hyper-parameters; defaults of ``omnifuse predict`` for an export folder."""
    settings = {"image_size": 64, "sample_rate": 16000, "max_audio_seconds": 8.0, "max_new_tokens": 32}
    if Path(model_path).suffix != ".ckpt":
        return settings
    from omnifuse.app.predictor import input_settings
    from omnifuse.finetune.safe_load import load_checkpoint

    checkpoint = load_checkpoint(model_path)
    settings.update(input_settings(checkpoint))  # what Predictor.from_pretrained applies in the worker
    generation = (checkpoint.get("hyper_parameters") or {}).get("generation")
    for key in ("max_new_tokens", "schema_resources"):
        if isinstance(generation, dict) and key in generation:
            settings[key] = generation[key]
        elif generation is not None and hasattr(generation, key):
            settings[key] = getattr(generation, key)
    if settings.get("schema_resources"):
        from omnifuse.tasks.inference import read_schema_resources

        try:  # read once here (then cached): a missing file stops the start, not every request with a schema
            read_schema_resources(dict(settings["schema_resources"]))
        except ValueError as e:
            raise ServeError(f"{model_path}: {e}") from None
    return settings


def _prepare_processes(workers: int, threads: int | None) -> None:
    """Process-wide settings, before LitServe starts its HTTP process (forked) and model workers (spawned).

    * Metrics: prometheus_client's multiprocess mode needs its folder before it is first imported, in every process.
      A fresh folder per server (removed at exit), so no earlier server's counts are summed in.
    * Threads: with several model workers, each plans for its share of the CPUs (``OMNIFUSE_THREADS``, unless given).
      The OpenMP wait policy is the one ``omnifuse`` chose at start (app/threads.py): a passive choice is inherited
      by the workers. The HTTP process itself decodes uploads with one thread."""
    if "prometheus_client" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise ServeError("prometheus_client was imported before omnifuse serve set up its metrics folder")
    folder = tempfile.mkdtemp(prefix="omnifuse-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if threads is None and workers > 1:
        from omnifuse.app import threads as threads_module

        os.environ.setdefault("OMNIFUSE_THREADS", str(max(1, threads_module.usable_cpus() // workers)))
    import torch

    torch.set_num_threads(1)


def build_server(
    model_path: str | Path,
    *,
    max_batch_size: int = 64,
    batch_timeout: float = 0.01,
    workers: int = 1,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    threads: int | None = None,
    timeout: float = 60.0,
):
    """A ``litserve.LitServer`` for the model at ``model_path`` (a ``.ckpt`` or an export folder), not started."""
    if not Path(model_path).exists():
        raise ServeError(f"no checkpoint or export folder at {model_path}")
    if max_batch_size < 1 or batch_timeout < 0 or workers < 1:
        raise ServeError("--max-batch-size and --workers must be >= 1 and --batch-timeout >= 0")
    if batch_timeout >= timeout:
        raise ServeError(f"--batch-timeout ({batch_timeout}) must be below --timeout ({timeout})")
    _prepare_processes(workers, threads)
    import litserve as ls
    from fastapi import Response
    from fastapi.responses import HTMLResponse

    from omnifuse.app.serve import metrics
    from omnifuse.app.serve.api import OmnifuseAPI
    from omnifuse.app.serve.gate import ServeGate

    found = model_settings(model_path)
    settings = ServeSettings(
        image_size=found["image_size"],
        sample_rate=found["sample_rate"],
        max_new_tokens=found["max_new_tokens"],
        limits=limits or ServeLimits(),
        schema_resources=tuple(sorted((found.get("schema_resources") or {}).items())),
    )
    api = OmnifuseAPI(
        str(model_path),
        settings,
        max_audio_seconds=found["max_audio_seconds"],
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout,
        threads=threads,
    )
    server = ls.LitServer(
        api,
        accelerator="auto",
        devices=1,
        workers_per_device=workers,
        timeout=timeout,
        middlewares=[(ServeGate, {"settings": settings, "api_key": api_key})],
        model_metadata={"model": str(model_path), "max_batch_size": max_batch_size, "batch_timeout": batch_timeout},
    )
    page = PAGE.read_text(encoding="utf-8")

    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    async def metrics_text() -> Response:
        body, content_type = metrics.exposition()
        return Response(content=body, media_type=content_type)

    # LitServe answers GET / itself ("litserve running"); the first matching route wins, so its route goes.
    server.app.router.routes[:] = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    server.app.add_api_route("/metrics", metrics_text, methods=["GET"], include_in_schema=False)
    server.omnifuse_settings = settings
    return server


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ServeError as error:
        print(f"omnifuse serve: {error}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="omnifuse serve", description=main.__doc__)
    parser.add_argument("model", help="a .ckpt written by omnifuse fit, or an omnifuse export folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=64, help="most requests merged into one batch (1: none)")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds a batch waits to fill up")
    parser.add_argument("--workers", type=int, default=1, help="model worker processes")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require this key on every request (better: ${API_KEY_ENV}, which ps does not show); required to bind "
        "beyond loopback",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per model worker")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body")
    parser.add_argument("--max-media-mb", type=float, default=16.0, help="largest image or audio file")
    parser.add_argument("--max-audio-seconds", type=float, default=30.0, help="longest audio clip a request may send")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds a request may wait in the queue for a batch (then 504)"
    )
    args = parser.parse_args(argv)

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    host = HOSTS.get(args.host)
    if host is None:
        raise ServeError(f"--host must be one of {', '.join(HOSTS)} (LitServe binds these), got {args.host!r}")
    if host not in LOOPBACK and not api_key:
        raise ServeError(
            f"refusing to bind {args.host} without an API key: set ${API_KEY_ENV} (or pass --api-key) "
            "(without one, serve binds 127.0.0.1 only)"
        )
    mb = 2**20
    limits = replace(
        ServeLimits(),
        max_body_bytes=int(args.max_body_mb * mb),
        max_image_bytes=int(args.max_media_mb * mb),
        max_audio_bytes=int(args.max_media_mb * mb),
        max_audio_seconds=args.max_audio_seconds,
    )
    server = _build_or_explain(
        args.model,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        workers=args.workers,
        api_key=api_key,
        limits=limits,
        threads=args.threads,
        timeout=args.timeout,
    )
    print(f"omnifuse serve: {args.model} on http://{args.host}:{args.port}/ (POST /predict, GET /metrics)", flush=True)
    # SIGTERM ends the server like Ctrl+C, so exit handlers (the metrics folder's removal) run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run(host=host, port=args.port, generate_client_file=False, num_api_servers=1)
    except (ValueError, RuntimeError) as error:  # LitServe's refusals (a port it will not use, a worker that failed)
        raise ServeError(str(error)) from None
    return 0


def _build_or_explain(model, **kwargs):
    try:
        return build_server(model, **kwargs)
    except ValueError as error:  # LitServe's own checks of the settings
        raise ServeError(str(error)) from None


main.__doc__ = "Serve a model over HTTP: POST /predict with dynamic batching, a web page at /, /health, /metrics."

if __name__ == "__main__":
    sys.exit(main())
