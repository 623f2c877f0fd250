"""``init_from``: start a model from another run's weights.

:func:`load_matching_weights` copies every tensor whose name and shape match from a Lightning ``.ckpt``, a
``save_pretrained`` folder or a ``.safetensors`` file into a freshly built model; the rest keeps its initialisation.
The :class:`InitReport` (loaded / new / unused / shape-mismatched keys) is printed and returned.
"""


from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnifuse.finetune.format import WEIGHTS_NAME
from omnifuse.finetune.freezing import _report, resolve_modules
from omnifuse.finetune.safe_load import load_checkpoint


@dataclass
class InitReport:
    """What :func:`load_matching_weights` did. Keys are the target model's state-dict names."""

    source: str
    loaded: list[str] = field(default_factory=list)  # name and shape matched: copied from the source
    new: list[str] = field(default_factory=list)  # not in the source: initialised (includes shape mismatches)
    unused: list[str] = field(default_factory=list)  # in the source, not in the model
    skipped: list[str] = field(default_factory=list)  # matched, but under an ``init_skip`` group: kept initialised
    mismatched: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)  # name -> (source, model)

    def summary(self) -> str:
        def grouped(keys: Iterable[str]) -> str:
            counts = Counter(_key_group(k) for k in keys)
            return ", ".join(f"{g} ({n})" for g, n in sorted(counts.items())) or "-"

        lines = [
            f"init_from {self.source}: loaded {len(self.loaded)} tensors, {len(self.new)} new, "
            f"{len(self.unused)} unused, {len(self.mismatched)} shape-mismatched"
            + (f", {len(self.skipped)} skipped" if self.skipped else ""),
            f"  new (initialised): {grouped(self.new)}",
            f"  unused (in the source only): {grouped(self.unused)}",
        ]
        if self.skipped:
            lines.append(f"  skipped (init_skip, initialised): {grouped(self.skipped)}")
        for group, (n_model, n_source) in sorted(self.unmatched_groups().items()):
            lines.append(
                f"  WARNING: nothing of {group} was loaded ({n_model} tensors here, {n_source} in the source): a "
                "different architecture under the same name; it trains from its initialisation"
            )
        for name, (src, dst) in sorted(self.mismatched.items()):
            lines.append(f"  shape mismatch (initialised): {name} source {tuple(src)} model {tuple(dst)}")
        return "\n".join(lines)

    def unmatched_groups(self) -> dict[str, tuple[int, int]]:
        """Module groups (``encoders.image``, ``decoder.blocks.0``, ...) that both models have but of which not one
        tensor loaded: group -> (tensors in the model, tensors in the source). A recipe whose encoder drifted from the
        run it starts from shows up here rather than as a quiet start from scratch."""
        model_groups = Counter(_key_group(k) for k in [*self.loaded, *self.new])
        source_groups = Counter(_key_group(k) for k in [*self.loaded, *self.unused, *self.mismatched])
        loaded_groups = {_key_group(k) for k in self.loaded}
        skipped_groups = {_key_group(k) for k in self.skipped}
        return {
            g: (n, source_groups[g])
            for g, n in model_groups.items()
            if g in source_groups and g not in loaded_groups and g not in skipped_groups
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": list(self.loaded),
            "new": list(self.new),
            "unused": list(self.unused),
            "skipped": list(self.skipped),
            "mismatched": {k: [list(a), list(b)] for k, (a, b) in self.mismatched.items()},
        }


def _key_group(key: str) -> str:
    """``encoders.audio.blocks.0.attn.qkv.weight`` -> ``encoders.audio``, ``fusion.embed.audio.proj.weight`` ->
    ``fusion.embed.audio``, ``decoder.blocks.1.ffn.router.weight`` -> ``decoder.blocks.1``."""
    parts = key.split(".")[:-1]
    if parts[:2] in (["fusion", "embed"], ["decoder", "blocks"]):
        return ".".join(parts[:3])
    return ".".join(parts[:2]) or key


def read_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """An ``OmniModel`` state dict from a Lightning ``.ckpt`` (the task's ``model.*`` entries), a ``save_pretrained``
    folder or a ``.safetensors`` file; LoRA adapters in it are merged into their base weights."""
    from safetensors.torch import load_file

    from omnifuse.finetune.lora import merge_lora_state

    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{path} is not an omnifuse model folder: {WEIGHTS_NAME} is missing")
        state = load_file(str(weights))
    elif path.suffix == ".safetensors" and path.is_file():
        state = load_file(str(path))
    elif path.suffix == ".ckpt" and path.is_file():
        checkpoint = load_checkpoint(path)
        raw = checkpoint.get("state_dict", checkpoint)
        state = {k.removeprefix("model."): v for k, v in raw.items() if k.startswith("model.")}
        if not state:
            raise ValueError(f"{path} holds no 'model.*' weights (not a checkpoint of an omnifuse task)")
    else:
        raise FileNotFoundError(f"init_from {str(path)!r}: expected a .ckpt, a .safetensors file or a model folder")
    return merge_lora_state(state)


def _skipped_prefixes(model: nn.Module, skip: Iterable[str]) -> tuple[str, ...]:
    paths = {id(m): name for name, m in model.named_modules()}
    return tuple(f"{paths[id(m)]}." for m in resolve_modules(model, skip))


def load_matching_weights(
    model: nn.Module, path: str | Path, skip: Iterable[str] = (), verbose: bool = True
) -> InitReport:
    """Copy into ``model`` every tensor of the checkpoint at ``path`` whose name and shape match, except those of the
    module groups / patterns in ``skip``; the rest of ``model`` keeps its initialisation. Returns (and, with
    ``verbose``, prints) the :class:`InitReport`."""
    source = read_model_state(path)
    target = model.state_dict()
    skipped = _skipped_prefixes(model, skip) if skip else ()
    report = InitReport(source=str(path))
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in target.items():
        if skipped and name.startswith(skipped):
            (report.skipped if name in source else report.new).append(name)
        elif name not in source:
            report.new.append(name)
        elif tuple(source[name].shape) != tuple(tensor.shape):
            report.mismatched[name] = (list(source[name].shape), list(tensor.shape))
            report.new.append(name)
        else:
            matched[name] = source[name]
            report.loaded.append(name)
    report.unused = [k for k in source if k not in target]
    result = model.load_state_dict(matched, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # every matched key exists by construction
    if verbose:
        _report(report.summary())
    return report
