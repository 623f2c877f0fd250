"""Label-safe training augmentation: image transforms (torchvision v2) and text noise, chosen per task so that no
augmentation changes the answer.

What each transform may change, and where it is therefore allowed:

* brightness and contrast (``ColorJitter`` without hue or saturation): never a colour name or a position: every task;
* hue and saturation: would change colour answers ("what colour is the shape?"): not offered;
* translation (whole pixels, zero fill: what ``RandomAffine(translate=...)`` does, as a pad and a crop): changes where
  things are, so a caption ("... in the top left") or a JSON
  target with a position or a bounding box would be wrong: only for the tasks listed in ``translate_tasks`` (default:
  none; e.g. ``vqa`` where no question asks where), never ``caption`` or ``json``;
* flips and crops: change position and bbox targets: not offered;
* text noise (character typos, word dropout) on the question text: NOT label-safe in general (a dropped "not" flips a
  yes/no answer, a misspelt colour word asks about another colour), so it applies only to the tasks listed in
  ``text_noise_tasks`` (default: none), as the user's explicit choice; word dropout never drops a negation.

Applied to training samples only (``MultimodalDataModule(augment=...)``); validation and test see the data as is. Each
sample's randomness comes from torch's generator in the loading process (workers are seeded by the data module).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

NEGATIONS = frozenset({"not", "no", "none", "nothing", "never", "without", "neither", "nor"})
POSITION_TASKS = ("json", "caption")  # targets that say where things are (bbox, "in the top left"): never moved


@dataclass
class AugmentConfig:
    """Training augmentation (see the module docstring for what is safe where). All zeros: off."""

    brightness: float = 0.0  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.0  # factor drawn from [1 - c, 1 + c]
    translate: int = 0  # largest shift in pixels, each axis
    translate_tasks: list[str] = field(default_factory=list)  # tasks whose answers do not depend on position
    typo_rate: float = 0.0  # per letter: replaced, dropped or swapped with the next one
    word_dropout: float = 0.0  # per word (never the whole question, never a negation)
    text_noise_tasks: list[str] = field(default_factory=list)  # where typos / word dropout apply (not label-safe)

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "typo_rate", "word_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1), got {value}")
        if self.translate < 0:
            raise ValueError(f"augment.translate must be >= 0 pixels, got {self.translate}")
        if (self.typo_rate or self.word_dropout) and not self.text_noise_tasks:
            raise ValueError(
                "augment.typo_rate / word_dropout can change answers (a dropped 'not', a misspelt colour): list the "
                "tasks they may apply to in augment.text_noise_tasks"
            )
        moved = set(self.translate_tasks) & set(POSITION_TASKS)
        if moved:
            raise ValueError(
                f"augment.translate_tasks may not include {sorted(moved)}: their targets carry positions / bounding "
                "boxes that a shift would make wrong"
            )


class Augmenter:
    """Applies an :class:`AugmentConfig` to one training sample's image (3, H, W float in [0, 1]) and text."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        jitter = config.brightness > 0 or config.contrast > 0
        self.photometric = (
            v2.ColorJitter(brightness=config.brightness or None, contrast=config.contrast or None) if jitter else None
        )
        self.translate = config.translate

    def image(self, pixels: torch.Tensor, task: str) -> torch.Tensor:
        out = pixels
        if self.photometric is not None:
            out = self.photometric(out).clamp(0.0, 1.0)
        if self.translate and task in self.config.translate_tasks:
            out = self.shift(out, *(int(d) for d in torch.randint(-self.translate, self.translate + 1, (2,))))
        return out

    def shift(self, pixels: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
        """``pixels`` moved ``dx`` pixels right and ``dy`` down, the uncovered border zero: ``TF.affine`` with an
        integer translation, written as a pad and a crop (~6x cheaper per sample than the affine's sampling grid, and
        this runs in the training step's process)."""
        t = self.translate
        h, w = pixels.shape[-2:]
        return TF.crop(TF.pad(pixels, [t, t, t, t], fill=0.0), t - dy, t - dx, h, w)

    def text(self, text: str, task: str | None = None) -> str:
        cfg = self.config
        if task is not None and task not in cfg.text_noise_tasks:
            return text
        if cfg.word_dropout > 0:
            words = text.split(" ")
            kept = [
                w for w in words if w.strip("?!.,").lower() in NEGATIONS or torch.rand(()).item() >= cfg.word_dropout
            ]
            text = " ".join(kept) if kept else words[int(torch.randint(len(words), ()).item())]
        if cfg.typo_rate > 0:
            chars = list(text)
            out: list[str] = []
            i = 0
            while i < len(chars):
                c = chars[i]
                if c.isalpha() and torch.rand(()).item() < cfg.typo_rate:
                    kind = int(torch.randint(3, ()).item())
                    if kind == 0:  # replace with another letter
                        out.append(chr(ord("a") + int(torch.randint(26, ()).item())))
                    elif kind == 1:  # drop
                        pass
                    elif i + 1 < len(chars):  # swap with the next one
                        out += [chars[i + 1], c]
                        i += 1
                    else:
                        out.append(c)
                else:
                    out.append(c)
                i += 1
            text = "".join(out)
        return text

    @property
    def active(self) -> bool:
        cfg = self.config
        return bool(self.photometric is not None or self.translate or cfg.typo_rate or cfg.word_dropout)
