"""The model side of ``omnifuse serve``: a LitServe ``LitAPI`` that answers batches of checked requests.

LitServe merges requests that arrive within ``batch_timeout`` into batches of up to ``max_batch_size`` and calls
``decode_request`` per request, then ``batch`` / ``predict`` / ``unbatch`` once, then ``encode_response`` per request.
``predict`` is the batch job's ``predict_batch`` (the same prediction rows as ``omnifuse predict``).

LitServe fails every request of a batch when one of these methods raises, so none of them raises for a single
request: a request that fails here (no input the model reads, an error inside the model) becomes its own 422 / 500
response, and the others in its batch are answered as usual.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import time
import warnings
from typing import Any

import litserve as ls
import torch
from starlette.responses import JSONResponse

from omnifuse.app.serve.inputs import ServeSettings
from omnifuse.data.loaders import decode_image, load_audio
from omnifuse.data.sample import Sample

logger = logging.getLogger("omnifuse.serve")


class _Failure:
    """A request that could not be answered: its HTTP status and body (picklable, unlike a response object)."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        self.status, self.field, self.reason = status, field, reason


def _failure_from_row(row: dict) -> _Failure:
    # predict_batch error rows read "record 'x': field 'image': reason" or "field 'image': reason".
    message = row["error"]
    if message.startswith("record "):
        message = message.split(": ", 1)[1]
    field, reason = "<request>", message
    if message.startswith("field '"):
        field, _, reason = message[len("field '") :].partition("': ")
    return _Failure(422, field, reason)


class OmnifuseAPI(ls.LitAPI):
    """Serve an omnifuse checkpoint or export folder on ``POST /predict``.

    ``model_path`` is loaded in the worker process (``setup``) by ``Predictor.from_pretrained``: the same safe loading
    as every other command (no pickle code runs). Requests arrive already checked by the HTTP gate
    (``omnifuse.app.serve.gate``), as canonical JSON."""

    def __init__(
        self,
        model_path: str,
        settings: ServeSettings,
        max_audio_seconds: float | None,
        max_batch_size: int = 64,
        batch_timeout: float = 0.01,
        threads: int | None = None,
    ) -> None:
        with warnings.catch_warnings():  # LitServe warns that batch/unbatch exist when batching is off (size 1)
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.model_path = model_path
        self.settings = settings
        self.max_audio_seconds = max_audio_seconds
        self.threads = threads

    # ------------------------------------------------------------------ worker start

    def setup(self, device: str) -> None:
        from omnifuse.app.predictor import Predictor
        from omnifuse.app.serve import metrics

        self.predictor = Predictor.from_pretrained(
            self.model_path,
            device=device,
            image_size=self.settings.image_size,
            sample_rate=self.settings.sample_rate,
            max_audio_seconds=self.max_audio_seconds,
            threads=self.threads,
        )
        self.metrics = metrics.WorkerMetrics()
        self.pid = os.getpid()
        self._ids = itertools.count()  # names for requests without an id (created here: the API object is pickled)

    # ------------------------------------------------------------------ per request

    def decode_request(self, request):  # unannotated: LitServe then hands over the JSON body (a dict)
        """Canonical request JSON -> ``Sample``. Never raises: a failure becomes a failed sample (answered 422)."""
        field = "<request>"
        try:
            rid = request.get("id") or f"request-{self.pid}-{next(self._ids)}"
            task = request.get("task")
        except Exception:  # noqa: BLE001 -- not a JSON object: the gate lets none through, but never fail the batch
            return Sample.failed(f"request-{self.pid}-{next(self._ids)}", "field '<request>': not a JSON object")
        try:
            image = audio = None
            if request.get("image") is not None:
                field = "image"
                data = base64.b64decode(request["image"])
                image = decode_image(data, self.settings.image_size).float().div_(255.0)
            if request.get("audio") is not None:
                field = "audio"
                data = base64.b64decode(request["audio"])
                audio = load_audio(data, self.settings.sample_rate, self.max_audio_seconds)
        except Exception as e:  # noqa: BLE001 -- checked by the gate already; a failure here is still this request's
            return Sample.failed(rid, f"field {field!r}: {e}", task=task)
        return Sample(
            id=rid, task=task, image=image, audio=audio, text=request.get("text"), schema=request.get("schema")
        )

    def batch(self, inputs: list[Sample]) -> list[Sample]:
        return list(inputs)

    def unbatch(self, output: list) -> list:
        return list(output)

    def encode_response(self, output):  # unannotated, like decode_request: FastAPI infers nothing from it
        if isinstance(output, _Failure):
            return JSONResponse({"error": {"field": output.field, "reason": output.reason}}, status_code=output.status)
        return output

    # ------------------------------------------------------------------ per batch

    def predict(self, x: Sample | list[Sample]) -> Any:
        # Without batching (max_batch_size 1) LitServe hands over one decoded request, not a list.
        if isinstance(x, Sample):
            return self._predict([x])[0]
        return self._predict(x)

    def _predict(self, samples: list[Sample]) -> list:
        start = time.perf_counter()
        # Requests may reuse an id: predict under the position in the batch, answer under the request's own id.
        keyed = [Sample(**{**s.__dict__, "id": str(i)}) for i, s in enumerate(samples)]
        try:
            rows = self._rows(keyed)
        except Exception:  # noqa: BLE001 -- one request must not take the batch down: retry each on its own
            rows = {}
            for sample in keyed:
                try:
                    rows.update(self._rows([sample]))
                except Exception:  # noqa: BLE001 -- the details go to the server log, not to the client
                    logger.exception("request %r failed in the model", samples[int(sample.id)].id)
                    rows[sample.id] = _Failure(500, "<model>", "the model failed on this request (see the server log)")
        out = []
        for i, sample in enumerate(samples):
            row = rows.get(str(i))
            if row is None:
                row = _Failure(500, "<model>", "no prediction came back for this request")
            elif isinstance(row, dict):
                row = {**row, "id": sample.id}
            out.append(row)
        self.metrics.observe_batch(len(samples), time.perf_counter() - start)
        return out

    def _rows(self, samples: list[Sample]) -> dict[str, Any]:
        from omnifuse.tasks.inference import predict_batch

        predictor = self.predictor
        batch = predictor.collate(samples).to(predictor.device)
        with torch.inference_mode():
            result = predict_batch(predictor.model, batch, predictor.generation)
        rows: dict[str, Any] = {row["id"]: row for row in result["predictions"]}
        rows.update({row["id"]: _failure_from_row(row) for row in result["errors"]})
        return rows
