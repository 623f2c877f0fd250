"""The structured task end to end: a barely trained model emits only schema-valid JSON; bad schemas become errors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from omnifuse.app.cli import cli_main
from omnifuse.data.easyvqa import prepare_easyvqa

TINY = str(Path(__file__).parent / "configs" / "tiny_vqa.yaml")
TASK = "--model=omnifuse.tasks.StructuredTask"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("json")
    prepare_easyvqa(root, parts=("json",), limit_images=8)
    return root


def test_fit_then_predict_gives_only_valid_json_and_reports_bad_schemas(scenes, tmp_path):
    run = tmp_path / "run"
    cli_main(
        [
            "fit",
            "--config",
            TINY,
            TASK,
            "--data.train_manifest",
            str(scenes / "json_train.jsonl"),
            "--data.val_manifest",
            str(scenes / "json_val.jsonl"),
            "--model.generation.max_new_tokens=120",
            "--trainer.default_root_dir",
            str(run),
            "--trainer.limit_val_batches=1",
            "--trainer.max_steps=2",
        ]
    )
    ckpt = next((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").exists() else None
    if ckpt is None:  # the default checkpoint callback writes under lightning_logs
        ckpt = next(run.rglob("*.ckpt"))

    schema = json.loads((scenes / "scene.schema.json").read_text())
    lines = (scenes / "json_test.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    # Per-record schemas: an inline one that differs from the file's, an unsupported keyword, an unsatisfiable one.
    records.append({**records[0], "id": "inline-enum", "schema": {"enum": ["alpha", {"k": [1, 2]}]}})
    records.append(
        {
            **records[0],
            "id": "unsupported",
            "schema": {"type": "array", "items": {"type": "object"}, "uniqueItems": True, "minItems": 2},
        }
    )
    records.append({**records[0], "id": "unsatisfiable", "schema": {"type": "integer", "minimum": 3, "maximum": 2}})
    # $ref into a document of generation.schema_resources (a local schema store), and into one that is not there
    sizes = {"$defs": {"size": {"type": "object", "properties": {"size": {"enum": ["small", "large"]}},
                                "required": ["size"], "additionalProperties": False}}}  # fmt: skip
    store = tmp_path / "sizes.json"
    store.write_text(json.dumps(sizes))
    records.append({**records[0], "id": "store-ref", "schema": {"$ref": "https://example.com/sizes.json#/$defs/size"}})
    records.append({**records[0], "id": "unknown-ref", "schema": {"$ref": "https://example.com/none.json"}})
    manifest = scenes / "predict.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "pred"
    cli_main(
        [
            "predict",
            "--config",
            TINY,
            TASK,
            "--model.generation.max_new_tokens=120",
            f"--model.generation.schema_resources={json.dumps({'https://example.com/sizes.json': str(store)})}",
            "--data.predict_manifest",
            str(manifest),
            "--trainer.callbacks+=omnifuse.app.writer.JsonlPredictionWriter",
            f"--trainer.callbacks.output_dir={out}",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--ckpt_path",
            str(ckpt),
        ]
    )
    preds = {p["id"]: p for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    errors = {e["id"]: e["error"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(preds) | set(errors) == {r["id"] for r in records} and not set(preds) & set(errors)
    assert set(errors) == {"unsupported", "unsatisfiable", "unknown-ref"}, errors
    assert "uniqueItems" in errors["unsupported"] and "schema" in errors["unsupported"]
    assert "$ref" in errors["unknown-ref"] and "none.json" in errors["unknown-ref"]
    for rid, p in preds.items():
        target_schema = {"enum": ["alpha", {"k": [1, 2]}]} if rid == "inline-enum" else schema
        if rid == "store-ref":
            target_schema = sizes["$defs"]["size"]
        # A 2-step model knows nothing, yet every output parses and validates (checked by jsonschema, not by us).
        jsonschema.Draft202012Validator(target_schema).validate(p["prediction"])

    # The command line's generation settings win over a checkpoint's, also one that saved none (Lightning lays the
    # checkpoint's hyper-parameters over the config): a 1-token budget makes every record an error naming it.
    import torch

    bare = tmp_path / "bare.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["generation"] = None
    torch.save(state, bare)
    out1 = tmp_path / "pred1"
    cli_main(
        ["predict", "--config", TINY, TASK, "--model.generation.max_new_tokens=1",
         "--data.predict_manifest", str(scenes / "json_test.jsonl"),
         "--trainer.callbacks+=omnifuse.app.writer.JsonlPredictionWriter", f"--trainer.callbacks.output_dir={out1}",
         "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(bare)]
    )  # fmt: skip
    errors = [json.loads(line)["error"] for line in (out1 / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == len(lines) and all("max_new_tokens=1" in e for e in errors)
