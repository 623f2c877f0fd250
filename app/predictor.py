"""``Predictor``: batch inference from Python, on the same ``predict_batch`` as ``omnifuse predict``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from omnifuse.app import threads as threads_module
from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.records import parse_entries
from omnifuse.finetune.safe_load import load_checkpoint
from omnifuse.tasks.config import GenerationConfig
from omnifuse.tasks.inference import predict_batch
from omnifuse.tasks.model import OmniModel

INPUT_SETTINGS = ("image_size", "sample_rate", "max_audio_seconds")


def input_settings(checkpoint: dict) -> dict:
    """The data settings a checkpoint's run used for its inputs (from the data module's hyper-parameters), so
    inference loads images and audio the way training did."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    return {key: data[key] for key in INPUT_SETTINGS if key in data}


class Predictor:
    """Batch inference from Python.

    >>> predictor = Predictor.from_pretrained("runs/easyvqa/export")            # doctest: +SKIP
    >>> out = predictor.predict([{"id": "q1", "task": "vqa", "image": "a.png", "text": "what shape?"}], root=".")
    >>> out["predictions"][0]["prediction"]                                      # doctest: +SKIP
    'circle'

    Every input id comes back exactly once, in ``predictions`` or in ``errors`` (with the field and the reason).
    """

    def __init__(
        self,
        model: OmniModel,
        generation: GenerationConfig | None = None,
        batch_size: int = 32,
        image_size: int | None = 64,
        sample_rate: int = 16000,
        max_audio_seconds: float | None = 8.0,
        device: str | torch.device = "cpu",
        threads: int | None = None,
    ) -> None:
        # The same thread plan as the omnifuse command (app/threads.py): OMNIFUSE_THREADS / OMP_NUM_THREADS respected.
        threads_module.configure(threads)
        if getattr(model, "quantization", None) and torch.device(device).type != "cpu":
            raise ValueError(
                f"an int8-quantized model runs on the CPU (PyTorch's dynamic quantized kernels), not on {device}: use "
                "the fp32 checkpoint on a GPU"
            )
        self.model = model.to(device).eval()
        self.generation = generation or GenerationConfig()
        self.batch_size = batch_size
        self.dataset_kwargs = {"image_size": image_size, "sample_rate": sample_rate, "max_audio_seconds": max_audio_seconds}
        self.device = torch.device(device)
        self.collate = Collator(model.tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, quantize: str | None = None, **kwargs) -> Predictor:
        """From a ``save_pretrained`` folder or an omnifuse ``.ckpt``. A ``.ckpt`` also brings the task's decoding
        settings (e.g. the JSON recipe's 160-token budget) and its run's input settings (image size, sample rate,
        audio cap), unless given here. ``quantize="int8"``: quantize the weights on load (``omnifuse.tasks.quantize``;
        a folder exported with ``--quantize int8`` is int8 already)."""
        if quantize is not None:
            from omnifuse.tasks.quantize import QUANTIZATIONS, quantize_int8

            if quantize not in QUANTIZATIONS:
                raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
            if torch.device(kwargs.get("device", "cpu")).type != "cpu":
                raise ValueError(f"an int8-quantized model runs on the CPU, not on {kwargs['device']}")
            predictor = cls.from_pretrained(path, **kwargs)
            if predictor.model.quantization is None:
                quantize_int8(predictor.model)
            return predictor
        if Path(path).suffix != ".ckpt":
            return cls(OmniModel.from_pretrained(path), **kwargs)
        checkpoint = load_checkpoint(path)  # read once for model and settings; never runs code from the file
        for key, value in input_settings(checkpoint).items():
            kwargs.setdefault(key, value)  # the image size, sample rate and audio cap the model was trained with
        saved = (checkpoint.get("hyper_parameters") or {}).get("generation")
        if "generation" not in kwargs and isinstance(saved, (dict, GenerationConfig)):
            kwargs["generation"] = GenerationConfig(**saved) if isinstance(saved, dict) else saved
        return cls(OmniModel.from_checkpoint(checkpoint, str(path)), **kwargs)

    def predict(self, records: str | Path | Iterable[dict], root: str | Path = ".") -> dict[str, list[dict]]:
        """Predict a JSONL manifest (path) or raw record dicts (paths inside resolve against ``root``)."""
        predictions: list[dict] = []
        errors: list[dict] = []
        for out in self.iter_predict(records, root):
            predictions += out["predictions"]
            errors += out["errors"]
        return {"predictions": predictions, "errors": errors}

    def iter_predict(self, records: str | Path | Iterable[dict], root: str | Path = ".") -> Iterator[dict]:
        """Like ``predict``, one batch at a time (for streams larger than memory)."""
        if isinstance(records, (str, Path)):
            dataset = ManifestDataset(records, mode="predict", **self.dataset_kwargs)
        else:
            items = parse_entries(enumerate(records, start=1), Path(root), require_target=False)
            dataset = ManifestDataset(list(items), mode="predict", **self.dataset_kwargs)
        for start in range(0, len(dataset), self.batch_size):
            samples = [dataset[i] for i in range(start, min(len(dataset), start + self.batch_size))]
            batch = self.collate(samples).to(self.device)
            with torch.inference_mode():
                yield predict_batch(self.model, batch, self.generation)

