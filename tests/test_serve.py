"""``omnifuse serve``: request checking, authentication, and a live server against the batch predictor.

The live tests start the real command (LitServe: an HTTP process and a model worker) on a tiny random model and
compare what it answers with ``Predictor.predict`` on the same records, the batch job's code path.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omnifuse.app.serve.gate import presented_key
from omnifuse.app.serve.inputs import RequestError, ServeLimits, ServeSettings, check_request, form_fields

# ---------------------------------------------------------------- helpers


def _png(color=(200, 30, 30), size=(32, 32), shape="square") -> bytes:
    im = Image.new("RGB", size, (255, 255, 255))
    px = im.load()
    w, h = size
    for x in range(w // 4, 3 * w // 4):
        for y in range(h // 4, 3 * h // 4):
            if shape == "square" or (x - w / 2) ** 2 + (y - h / 2) ** 2 < (w / 4) ** 2:
                px[x, y] = color
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


SETTINGS = ServeSettings(image_size=32, sample_rate=16000, max_new_tokens=32)


def _error(fields: dict, settings: ServeSettings = SETTINGS) -> RequestError:
    with pytest.raises(RequestError) as info:
        check_request(fields, settings)
    return info.value


# ---------------------------------------------------------------- request checking (no server)


def test_a_good_request_becomes_its_canonical_form():
    png = _png()
    out = check_request(
        {"id": "q1", "task": "vqa", "text": "what shape?", "image": "data:image/png;base64," + _b64(png)}, SETTINGS
    )
    assert out == {"id": "q1", "task": "vqa", "text": "what shape?", "image": _b64(png)}
    # A form upload carries the same fields as bytes; the canonical form is the same.
    assert check_request(form_fields({"id": "q1", "task": "vqa", "text": "what shape?", "image": png}), SETTINGS) == out


@pytest.mark.parametrize(
    "fields, field, status, words",
    [
        ({"task": "vqa", "text": "hi", "image_path": "/etc/passwd"}, "image_path", 400, "unknown field"),
        ({"text": "hi"}, "task", 400, "unknown task"),
        ({"task": "translate", "text": "hi"}, "task", 400, "unknown task"),
        ({"task": "vqa"}, "<request>", 400, "no input"),
        ({"task": "vqa", "text": "   "}, "text", 400, "empty"),
        ({"task": "vqa", "text": 7}, "text", 400, "must be a string"),
        ({"task": "vqa", "image": "/etc/passwd"}, "image", 400, "base64"),  # a path is never opened
        ({"task": "vqa", "image": _b64(b"not an image at all")}, "image", 400, "not a valid image"),
        ({"task": "vqa", "image": _b64(_png()[:60])}, "image", 400, "not a valid image"),  # truncated PNG
        ({"task": "vqa", "audio": _b64(b"RIFF....WAVEfmt garbage")}, "audio", 400, "not a readable audio"),
        ({"task": "vqa", "text": "q", "schema": {"type": "object"}}, "schema", 400, "only used by task 'json'"),
        ({"task": "json", "text": "q", "schema": ["type"]}, "schema", 400, "JSON Schema object"),
        ({"task": "json", "text": "q", "schema": {"type": "strnig"}}, "schema", 422, "cannot be enforced"),
        # Satisfiable, but its shortest instance is longer than the model's 32-token budget.
        (
            {"task": "json", "text": "q", "schema": {"type": "string", "minLength": 40}},
            "schema",
            422,
            "cannot be enforced",
        ),
        ({"task": "vqa", "id": "", "text": "q"}, "id", 400, "non-empty"),
    ],
)
def test_bad_requests_name_the_field_and_the_reason(fields, field, status, words):
    error = _error(fields)
    assert (error.field, error.status) == (field, status)
    assert words in error.reason
    assert error.body() == {"error": {"field": field, "reason": error.reason}}


def test_limits_answer_413():
    small = ServeSettings(
        image_size=32,
        limits=ServeLimits(max_image_bytes=200, max_audio_seconds=1.0, max_text_bytes=10, max_image_pixels=64 * 64),
    )
    assert _error({"task": "vqa", "image": _b64(_png(size=(64, 64)) + b"\0" * 300)}, small).status == 413
    assert _error({"task": "vqa", "audio": _b64(_wav(1.5))}, small).status == 413
    assert _error({"task": "vqa", "text": "x" * 11}, small).status == 413
    big = ServeSettings(image_size=32, limits=ServeLimits(max_image_pixels=64 * 64))
    error = _error({"task": "vqa", "image": _b64(_png(size=(100, 100)))}, big)
    assert (error.field, error.status) == ("image", 413) and "pixels" in error.reason


def test_a_valid_schema_and_audio_pass():
    schema = {"type": "object", "properties": {"shape": {"enum": ["circle", "square"]}}, "required": ["shape"]}
    out = check_request({"task": "json", "text": "q", "schema": schema, "audio": _b64(_wav(0.5))}, SETTINGS)
    assert out["schema"] == schema and base64.b64decode(out["audio"]) == _wav(0.5)
    with pytest.raises(RequestError, match="not valid JSON"):
        form_fields({"task": "json", "schema": "{not json"})


def test_a_schema_may_ref_the_models_schema_resources(tmp_path):
    """A request's schema may $ref the documents of the model's generation.schema_resources; any other URI is a 422
    naming the field, as a record's would be in omnifuse predict."""
    store = tmp_path / "shapes.json"
    store.write_text(json.dumps({"$defs": {"shape": {"enum": ["circle", "square"]}}}))
    settings = ServeSettings(image_size=32, schema_resources=(("https://example.com/shapes.json", str(store)),))
    schema = {"type": "object", "properties": {"shape": {"$ref": "https://example.com/shapes.json#/$defs/shape"}}}
    assert check_request({"task": "json", "text": "q", "schema": schema}, settings)["schema"] == schema
    error = _error({"task": "json", "text": "q", "schema": schema})  # a model without that document
    assert (error.field, error.status) == ("schema", 422) and "$ref" in error.reason


def test_a_model_whose_schema_resources_are_missing_does_not_start(tmp_path):
    """The files of generation.schema_resources are read when the server starts: a missing one is a one-line
    refusal naming it, not an error on every later request with a schema."""
    import torch

    from omnifuse.app.serve import ServeError, model_settings

    ckpt = tmp_path / "model.ckpt"
    missing = str(tmp_path / "gone.json")
    torch.save({"hyper_parameters": {"generation": {"max_new_tokens": 40,
                                                    "schema_resources": {"https://example.com/a.json": missing}}}}, ckpt)  # fmt: skip
    with pytest.raises(ServeError, match="gone.json"):
        model_settings(ckpt)
    (tmp_path / "gone.json").write_text("{}")
    assert model_settings(ckpt)["schema_resources"] == {"https://example.com/a.json": missing}


def test_strings_that_utf8_cannot_spell_and_wrapped_base64():
    assert _error({"task": "vqa", "text": "what \ud800 shape?"}).field == "text"
    assert _error({"task": "vqa", "id": "q\udfff", "text": "hi"}).field == "id"
    png = _png()
    wrapped = "\n".join(base64.encodebytes(png).decode().split())  # 76-column lines, as GNU base64 writes them
    assert check_request({"task": "vqa", "image": wrapped}, SETTINGS)["image"] == _b64(png)
    # A schema sent as a file part of a form is parsed like a text field.
    schema = {"enum": ["a", "b"]}
    assert form_fields({"task": "json", "schema": json.dumps(schema).encode()})["schema"] == schema


def test_one_failing_request_does_not_fail_its_batch():
    """The worker retries a failed batch one request at a time: the others get their rows, the culprit a 500 whose
    body says nothing of the server's internals; every response crosses the process boundary (pickle)."""
    import pickle

    from omnifuse.app.serve.api import OmnifuseAPI
    from omnifuse.data.sample import Sample

    api = OmnifuseAPI("unused", SETTINGS, max_audio_seconds=8.0, max_batch_size=8)

    class _Metrics:
        def observe_batch(self, size, seconds):
            self.size = size

    api.metrics = _Metrics()

    def rows(samples):
        if any(s.text == "poison" for s in samples):
            raise RuntimeError("secret internal detail /srv/model.ckpt")
        return {s.id: {"id": s.id, "task": s.task, "prediction": s.text.upper()} for s in samples}

    api._rows = rows
    samples = [
        Sample(id="a", task="vqa", text="x"),
        Sample(id="b", task="vqa", text="poison"),
        Sample(id="a", task="vqa", text="z"),
    ]
    out = api.unbatch(api.predict(api.batch(samples)))
    assert [o["prediction"] if isinstance(o, dict) else None for o in out] == ["X", None, "Z"]
    assert [o["id"] for o in (out[0], out[2])] == ["a", "a"]  # answered under the request's own id, repeats allowed
    responses = [pickle.loads(pickle.dumps(api.encode_response(o))) for o in out]
    assert responses[0] == {"id": "a", "task": "vqa", "prediction": "X"}
    assert responses[1].status_code == 500 and b"secret" not in responses[1].body
    assert json.loads(responses[1].body)["error"]["field"] == "<model>"
    assert api.metrics.size == 3
    # A request the worker cannot read becomes a failed sample (its own 422), never an exception.
    import itertools

    api.pid, api._ids = 1, itertools.count()  # what setup() sets
    assert "JSON object" in api.decode_request(["not", "an", "object"]).error
    assert api.decode_request({"task": "vqa", "image": _b64(b"garbage")}).error.startswith("field 'image'")


def test_presented_key_forms():
    def scope(*headers):
        return {"headers": [(k.encode(), v.encode()) for k, v in headers]}

    assert presented_key(scope(("X-API-Key", "k1"))) == "k1"
    assert presented_key(scope(("Authorization", "Bearer k2"))) == "k2"
    assert presented_key(scope(("Authorization", "Basic " + _b64(b"anyone:k3")))) == "k3"  # a browser's login
    assert presented_key(scope(("Authorization", "Basic !!!"))) is None
    assert presented_key(scope()) is None


# ---------------------------------------------------------------- a live server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from .test_finetune_support import tiny_conv_model

    model = tiny_conv_model(n_dense_layers=1, n_routed_experts=4, d_ff_dense=64)
    return Path(model.save_pretrained(tmp_path_factory.mktemp("served") / "model"))


class _Server:
    def __init__(self, model: Path, *args: str, env: dict | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "omnifuse.app.launch", "serve", str(model), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*command, "--threads", "1", *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # LitServe starts child processes: stop the whole group
        )

    def wait_ready(self, headers: dict | None = None, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode(errors='replace')[-3000:]}")
            try:
                if _get(self.url + "/health", headers)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError("server did not become healthy")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: bytes, content_type: str = "application/json", headers: dict | None = None):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def server(model_dir):
    # Batches of up to 8, waiting up to 0.2 s to fill: concurrent test requests do share batches.
    srv = _Server(model_dir, "--max-batch-size", "8", "--batch-timeout", "0.2")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


QUESTIONS = ["what shape is in the image?", "what color is the shape?", "is there a circle?", "is it red?"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    out = []
    colors = [(200, 30, 30), (30, 160, 40), (40, 60, 210)]
    for i in range(12):
        path = folder / f"{i}.png"
        path.write_bytes(_png(colors[i % 3], shape="square" if i % 2 else "circle"))
        out.append({"id": f"r{i}", "task": "vqa", "image": str(path), "text": QUESTIONS[i % 4]})
    return out


def _served_body(record: dict) -> bytes:
    body = {k: v for k, v in record.items() if k != "image"}
    body["image"] = _b64(Path(record["image"]).read_bytes())
    return json.dumps(body).encode()


def test_served_answers_equal_the_batch_predictor(server, model_dir, records):
    from omnifuse.app.predictor import Predictor

    folder = Path(records[0]["image"]).parent  # manifest paths resolve inside their root
    relative = [{**r, "image": Path(r["image"]).name} for r in records]
    expected = Predictor.from_pretrained(model_dir, image_size=64).predict(relative, root=folder)
    assert not expected["errors"]
    by_id = {row["id"]: row for row in expected["predictions"]}
    with ThreadPoolExecutor(len(records)) as pool:  # concurrent: the server merges them into batches
        answers = list(pool.map(lambda r: _post(server.url + "/predict", _served_body(r)), records))
    for record, (status, row) in zip(records, answers, strict=True):
        assert status == 200, row
        want = by_id[record["id"]]
        assert row["prediction"] == want["prediction"]
        assert row.keys() == want.keys()
        # Routing too: the same tokens through the same experts (a route could only differ on a near-tie of two
        # router scores between differently shaped batches; none occurs with this model and these records).
        assert row["token_experts"] == want["token_experts"]
        for m, w in want["modality_weights"].items():
            assert row["modality_weights"][m] == pytest.approx(w, abs=1e-5)


def test_a_bad_request_in_a_burst_fails_alone(server, records):
    bad = [
        (json.dumps({"task": "vqa", "image": _b64(b"garbage"), "text": "q"}).encode(), 400, "image"),
        (b"{not json", 400, "<body>"),
        # Passes the HTTP checks, fails in the model worker inside a batch: this model has no audio encoder.
        (json.dumps({"task": "vqa", "audio": _b64(_wav(0.5))}).encode(), 422, "<request>"),
    ]
    bodies = [(_served_body(r), 200, None) for r in records[:8]]
    burst = bodies[:3] + bad[:1] + bodies[3:6] + bad[1:] + bodies[6:]
    with ThreadPoolExecutor(len(burst)) as pool:
        answers = list(pool.map(lambda b: _post(server.url + "/predict", b[0]), burst))
    alone = [_post(server.url + "/predict", body)[1] for body, _, _ in bodies]  # each on its own, for reference
    good = iter(alone)
    for (_, status, field), (got_status, row) in zip(burst, answers, strict=True):
        assert got_status == status, row
        if status == 200:
            assert row["prediction"] == next(good)["prediction"]
        else:
            assert row["error"]["field"] == field or (field == "<request>" and "audio" in row["error"]["reason"])


def test_multipart_upload_gives_the_json_answer(server, records):
    record = records[0]
    boundary = "omnifuseboundary"
    png = Path(record["image"]).read_bytes()
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="task"\r\n\r\nvqa\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{record["text"]}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + png
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    status, row = _post(server.url + "/predict", b"".join(parts), f"multipart/form-data; boundary={boundary}")
    assert status == 200, row
    assert row["prediction"] == _post(server.url + "/predict", _served_body(record))[1]["prediction"]


def test_oversize_body_and_unsupported_type(model_dir):
    srv = _Server(model_dir, "--max-body-mb", "0.001", "--max-batch-size", "1")
    try:
        srv.wait_ready()
        status, row = _post(srv.url + "/predict", json.dumps({"task": "vqa", "text": "x" * 5000}).encode())
        assert status == 413 and row["error"]["field"] == "<body>"
        status, row = _post(srv.url + "/predict", b"task=vqa", "text/plain")
        assert status == 415
        status, row = _post(srv.url + "/predict", json.dumps({"task": "vqa", "text": "what shape?"}).encode())
        assert status == 200 and row["task"] == "vqa"  # unbatched server (max batch 1) answers too
    finally:
        srv.stop()


def test_page_health_and_metrics(server, records):
    with ThreadPoolExecutor(8) as pool:  # a burst of its own: the metrics below must show merged batches
        assert all(s == 200 for s, _ in pool.map(lambda r: _post(server.url + "/predict", _served_body(r)), records))
    status, page = _get(server.url + "/")
    assert status == 200 and b'id="submit"' in page and b"/predict" in page
    assert _get(server.url + "/health")[0] == 200
    status, text = _get(server.url + "/metrics")
    text = text.decode()
    assert status == 200
    assert 'omnifuse_requests_total{path="/predict",status="200"}' in text
    count = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("omnifuse_batch_size_count")))
    total = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("omnifuse_batch_size_sum")))
    assert total > count  # concurrent requests were merged: the mean batch is above one request
    assert "omnifuse_request_latency_seconds_bucket" in text


def test_api_key_is_required_on_every_route(model_dir):
    srv = _Server(model_dir, "--max-batch-size", "1", env={"OMNIFUSE_API_KEY": "s3cret"})
    key = {"X-API-Key": "s3cret"}
    try:
        srv.wait_ready(headers=key)
        for path in ("/", "/health", "/metrics", "/info"):
            assert _get(srv.url + path)[0] == 401, path
            assert _get(srv.url + path, {"X-API-Key": "wrong"})[0] == 401, path
            assert _get(srv.url + path, key)[0] == 200, path
        assert b'id="submit"' in _get(srv.url + "/", key)[1]  # the page itself, not LitServe's placeholder
        body = json.dumps({"task": "vqa", "text": "what shape?"}).encode()
        status, row = _post(srv.url + "/predict", body)
        assert status == 401 and row["error"]["field"] == "<auth>"
        assert _post(srv.url + "/predict", body, headers=key)[0] == 200
        basic = {"Authorization": "Basic " + _b64(b"me:s3cret")}
        assert _post(srv.url + "/predict", body, headers=basic)[0] == 200
    finally:
        srv.stop()


def test_binding_beyond_loopback_needs_a_key(model_dir, capsys, monkeypatch):
    from omnifuse.app.serve import main

    monkeypatch.delenv("OMNIFUSE_API_KEY", raising=False)
    assert main([str(model_dir), "--host", "0.0.0.0"]) == 1
    assert "without an API key" in capsys.readouterr().err
    assert main([str(model_dir), "--host", "10.1.2.3", "--api-key", "k"]) == 1  # LitServe binds only a few
    assert "--host must be one of" in capsys.readouterr().err


# ---------------------------------------------------------------- the page, in a real browser


def _chromium() -> tuple[str | None, str | None]:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


ARTIFACTS = Path(os.environ.get("OMNIFUSE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture
def browser():
    binary, driver_path = _chromium()
    if not (binary and driver_path):
        pytest.skip("needs Chromium and its driver (Debian packages chromium, chromium-driver; .ci/run installs them)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_answers_an_uploaded_image_in_chromium(browser, server, records, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    record = records[1]
    expected = _post(server.url + "/predict", _served_body(record))[1]
    browser.get(server.url + "/")
    browser.find_element(By.ID, "image").send_keys(record["image"])  # the file chooser, as a person uses it
    browser.find_element(By.ID, "text").send_keys(record["text"])
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "answer").get_attribute("textContent") not in ("", "...")
    )
    assert browser.find_element(By.ID, "answer").get_attribute("textContent") == expected["prediction"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#weights .bar")
    assert sorted(b.get_attribute("data-modality") for b in bars) == sorted(expected["modality_weights"])
    rows = browser.find_elements(By.CSS_SELECTOR, "#experts tbody tr")
    assert len(rows) == len(expected["token_experts"])
    chips = rows[0].find_elements(By.CSS_SELECTOR, ".chip")
    assert [int(c.text) for c in chips] == [e for layer in expected["token_experts"][0]["experts"] for e in layer]
    assert not browser.find_element(By.ID, "error").is_displayed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "serve_page.png"))

    # A file that is not an image: the page shows the server's reason under the form.
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    browser.find_element(By.ID, "image").send_keys(str(bad))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert browser.find_element(By.ID, "error").text.startswith("image: file is not a valid image")
