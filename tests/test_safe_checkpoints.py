"""Loading a checkpoint never runs code from it (issue 21).

A checkpoint whose pickle holds an object with a ``__reduce__`` that writes a marker file is given to every entry point
that reads a ``.ckpt``; each must refuse it with the one-line ``not a safe checkpoint: ...`` error (the CLI: that line
on stderr, exit status 1, no traceback), and the marker must never appear. The marker is the independent witness: if
any load had run the pickle, the file would exist. The real checkpoints omnifuse writes (RNG states, hyper-parameters
as dicts, or as config dataclasses when a task is built in Python) still load.
"""

from __future__ import annotations

import builtins
import json
import zipfile
from pathlib import Path

import pytest
import torch

from omnifuse._moved import MOVED
from omnifuse.app.cli import cli_main, main
from omnifuse.app.predictor import Predictor
from omnifuse.data.easyvqa import prepare_easyvqa
from omnifuse.finetune.lora import LoRAConfig, export_adapters
from omnifuse.finetune.safe_load import CheckpointError, UnsafeCheckpointError, load_checkpoint, resave_trusted
from omnifuse.finetune.weights import load_matching_weights, read_model_state
from omnifuse.tasks import GenerationConfig, OptimizerConfig, VQATask
from omnifuse.tasks.model import OmniModel
from omnifuse.tasks.speech_ctc import SpeechCTCConfig, SpeechCTCHead, init_head_from

TINY = str(Path(__file__).parent / "configs" / "tiny_vqa.yaml")


class Payload:
    """Unpickling this writes ``marker``: what an attacker's checkpoint would do (with a shell command instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("easyvqa")
    prepare_easyvqa(root, parts=("vqa",), limit_images=6)
    return root


@pytest.fixture(scope="module")
def good(tmp_path_factory, data) -> Path:
    """A real checkpoint of `omnifuse fit` (one step of the tiny recipe)."""
    run = tmp_path_factory.mktemp("run")
    cli_main(
        [
            "fit", "--config", TINY,
            "--data.train_manifest", str(data / "vqa_train.jsonl"),
            "--trainer.max_steps=1",
            "--trainer.default_root_dir", str(run),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={run / 'ckpt'}",
            "--trainer.callbacks.save_last=true",
        ]
    )  # fmt: skip
    return run / "ckpt" / "last.ckpt"


@pytest.fixture(scope="module")
def evil(tmp_path_factory, good) -> dict[str, Path]:
    """The good checkpoint plus a payload, in the zip format (what torch.save writes) and the legacy one (which
    cannot be scanned without unpickling), all writing the same marker."""
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "MARKER"
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["note"] = Payload(marker)
    paths = {"zip": folder / "evil.ckpt", "legacy": folder / "evil_legacy.ckpt"}
    torch.save(checkpoint, paths["zip"])
    torch.save(checkpoint, paths["legacy"], _use_new_zipfile_serialization=False)
    return {**paths, "marker": marker}


@pytest.fixture(autouse=True)
def _no_marker(request):
    yield
    if "evil" in request.fixturenames:
        marker = request.getfixturevalue("evil")["marker"]
        assert not marker.exists(), "loading the checkpoint ran its code"


def test_the_payload_does_run_when_unpickled_unsafely(tmp_path):
    # Guards the test itself: the payload really writes its marker when a plain pickle load runs it.
    marker = tmp_path / "MARKER"
    torch.save({"x": Payload(marker)}, tmp_path / "p.ckpt")
    torch.load(tmp_path / "p.ckpt", weights_only=False)
    assert marker.read_text() == "pwned"


def _refused(call, path: Path) -> str:
    with pytest.raises(UnsafeCheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"not a safe checkpoint: {path}: ") and "re-save it with" in message
    return message


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_python_entry_points_refuse(evil, good, kind, tmp_path):
    path = evil[kind]
    message = _refused(lambda: load_checkpoint(path), path)
    if kind == "zip":  # found by scanning the pickle, without running it
        assert "builtins.exec" in message
    _refused(lambda: OmniModel.from_pretrained(path), path)
    _refused(lambda: Predictor.from_pretrained(path), path)
    _refused(lambda: read_model_state(path), path)
    model = OmniModel.from_pretrained(good)
    _refused(lambda: load_matching_weights(model, path), path)  # init_from
    _refused(lambda: export_adapters(path, tmp_path / "a"), path)
    head = SpeechCTCHead(8, SpeechCTCConfig())
    _refused(lambda: init_head_from(head, path, audio_encoder_loaded=True), path)  # init_from with speech_ctc


def _cli(capsys, argv: list[str]) -> tuple[int, list[str]]:
    rc = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return rc, [line for line in out.err.splitlines() if "not a safe checkpoint" in line]


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_cli_verbs_refuse_in_one_line(evil, data, kind, tmp_path, capsys, monkeypatch):
    # Even with torch's escape hatch set in the environment, the CLI loads with weights_only=True.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = str(evil[kind])
    manifest = str(data / "vqa_val.jsonl")
    common = ["--config", TINY, "--trainer.default_root_dir", str(tmp_path / "runs"), "--ckpt_path", path]
    for verb, extra in (
        ("predict", ["--data.predict_manifest", manifest]),
        ("test", ["--data.test_manifest", manifest]),
        ("validate", ["--data.val_manifest", manifest]),
    ):
        rc, lines = _cli(capsys, [verb, *common, *extra])
        assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"omnifuse {verb}: not a safe checkpoint: {path}: ")
    for extra in ([], ["--adapters-only"]):
        rc, lines = _cli(capsys, ["export", path, "--out", str(tmp_path / "export"), *extra])
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("omnifuse export: not a safe checkpoint:")
    assert not (tmp_path / "export").exists()
    rc, lines = _cli(
        capsys,
        ["fit", "--config", TINY, "--data.train_manifest", manifest, "--model.init_args.init_from", path,
         "--trainer.default_root_dir", str(tmp_path / "runs")],
    )  # fmt: skip
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("omnifuse fit: not a safe checkpoint:")


def test_unreadable_file_is_one_line_too(tmp_path, capsys):
    path = tmp_path / "notes.ckpt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(path)
    rc = main(["export", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and err.count("\n") == 1


def test_omnifuse_checkpoints_still_load(good, tmp_path):
    # What fit writes (RNG states as tensors and ints, hyper-parameters as dicts) loads as it is.
    checkpoint = load_checkpoint(good)
    assert {"state_dict", "omnifuse_rng_states", "hyper_parameters", "optimizer_states"} <= checkpoint.keys()
    reference = torch.load(good, map_location="cpu", weights_only=False)  # trusted: written by this test
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(checkpoint["state_dict"][key], value, rtol=0, atol=0)
    assert Predictor.from_pretrained(good).generation.max_new_tokens == 8  # the recipe's decoding settings came along
    assert main(["export", str(good), "--out", str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "config.json").read_text())["decoder"]["d_model"] == 32


def test_a_task_built_in_python_keeps_loading(good, tmp_path):
    # A task built in Python keeps its config dataclasses as objects in its hyper-parameters (LoRAConfig,
    # GenerationConfig ...); those classes, and only those, are allowed.
    task = VQATask(
        **{k: v for k, v in load_checkpoint(good)["omnifuse_model_config"].items() if k != "format_version"},
        optimizer=OptimizerConfig(lr=1e-3),
        generation=GenerationConfig(max_new_tokens=5),
        lora=LoRAConfig(r=2, targets=["decoder_attention"]),
    )
    checkpoint = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "omnifuse_model_config": task.model.config(),
        "pytorch-lightning_version": "2.6.0",
    }
    path = tmp_path / "lora.ckpt"
    torch.save(checkpoint, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded["hyper_parameters"]["lora"], LoRAConfig) and loaded["hyper_parameters"]["lora"].r == 2
    assert Predictor.from_pretrained(path).generation.max_new_tokens == 5
    written = export_adapters(path, tmp_path / "adapters")
    assert written.is_file()
    # Lightning's own load (torch's default weights_only=True) rebuilds the task too.
    again = VQATask.load_from_checkpoint(path, map_location="cpu")
    assert again.hparams["lora"] == LoRAConfig(r=2, targets=["decoder_attention"])


def test_resave_trusted_turns_numpy_into_tensors(tmp_path):
    import numpy as np

    src, dst = tmp_path / "np.ckpt", tmp_path / "clean.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "stats": np.arange(3), "step": np.int64(4)}, src)
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_checkpoint(src)
    resave_trusted(src, dst)
    clean = load_checkpoint(dst)
    assert torch.equal(clean["stats"], torch.arange(3)) and clean["step"] == 4


def test_a_config_pickled_under_its_old_path_loads(tmp_path):
    # Checkpoints written before the layout change name LoRAConfig by the module it lived in then (_moved.py).
    old = next(name for name, homes in MOVED.items() if "omnifuse.finetune.lora" in homes).encode()
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"lora": LoRAConfig(r=4)}}, path)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "renamed.ckpt", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"omnifuse.finetune.lora", old)
                assert old in data
            dst.writestr(item, data)
    assert load_checkpoint(tmp_path / "renamed.ckpt")["hyper_parameters"]["lora"] == LoRAConfig(r=4)
