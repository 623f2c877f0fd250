"""``ContrastiveTask``: train an open_clip model contrastively on image-caption records (the curation scorer).

    omnifuse fit --config configs/easyvqa_clip.yaml
    omnifuse export runs/easyvqa_clip/latest/checkpoints/best.ckpt --out runs/easyvqa_clip/scorer
    omnifuse curate datasets/easyvqa/caption_train.jsonl --scorer runs/easyvqa_clip/scorer --min-clip-score 0.3 ...

Each training record gives an image and a caption: one of ``meta["references"]`` drawn at random per step when the
record lists several (easy-VQA's caption part: four phrasings per image), else its ``target``. The loss is
open_clip's symmetric InfoNCE (``open_clip.loss.ClipLoss``) with CLIP's learned temperature. Validation and test
embed every image of the split and its caption (``target``) and report retrieval recall@1 and @5 both ways:
``image->text`` ranks the split's captions for each image, ``text->image`` ranks its images for each caption. Where
several images share one caption text (identical scenes), retrieving any of them is counted as a hit: a text
cannot tell identical scenes apart.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from open_clip.loss import ClipLoss

from omnifuse.data.batch import MultimodalBatch
from omnifuse.tasks.clip_scorer import ClipScorer, ScorerConfig
from omnifuse.tasks.config import OptimizerConfig
from omnifuse.tasks.module import (
    adamw_kernel,
    gather_from_ranks,
    parameter_groups,
    rng_states,
    set_rng_states,
    warmup_cosine,
)

RECALL_AT = (1, 5)


def retrieval_recall(
    image_emb: torch.Tensor, text_emb: torch.Tensor, texts: list[str], ks: tuple[int, ...] = RECALL_AT
) -> dict[str, float]:
    """Recall@k both ways for ``N`` image-caption pairs (unit-norm ``(N, D)`` embeddings; ``texts[i]`` is image
    ``i``'s caption). A retrieved item counts as a hit when its caption text equals the query's (identical captions
    describe identical scenes)."""
    sim = image_emb @ text_emb.t()  # (N images, N texts)
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    label = torch.tensor([ids[t] for t in texts], device=sim.device)  # (N,) caption class of each pair
    same = label[:, None] == label[None, :]  # (N, N) pair j's caption is pair i's
    out = {}
    for k in ks:
        k_ = min(k, sim.shape[1])
        i2t = sim.topk(k_, dim=1).indices  # (N, k) texts ranked for each image
        t2i = sim.t().topk(k_, dim=1).indices  # (N, k) images ranked for each text
        out[f"recall_i2t@{k}"] = same.gather(1, i2t).any(1).float().mean().item()
        out[f"recall_t2i@{k}"] = same.gather(1, t2i).any(1).float().mean().item()
    out["recall_mean"] = sum(out.values()) / len(out)
    return out


class ContrastiveTask(L.LightningModule):
    """An open_clip ``CLIP`` (:class:`~omnifuse.tasks.clip_scorer.ClipScorer`) trained on image-caption pairs.

    Args:
        scorer: the architecture: an open_clip model name and overrides of its config (``embed_dim``,
            ``vision_cfg``, ``text_cfg``), e.g. ``ViT-B-32`` shrunk to a 64x64, 4-layer ViT for easy-VQA.
        pretrained: a local full-CLIP weights file to start from (None: random init).
        optimizer: AdamW + warm-up + cosine, as the other tasks.
    """

    monitor = "val/recall_mean"
    monitor_mode = "max"

    def __init__(
        self,
        scorer: ScorerConfig | None = None,
        pretrained: str | None = None,
        optimizer: OptimizerConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # It learns from the data module's images, resized to a square: curation must see them the same way.
        self.scorer_config = dataclasses.replace(scorer or ScorerConfig(), resize="square")
        self.scorer = ClipScorer(self.scorer_config, pretrained)
        self.optimizer_config = optimizer or OptimizerConfig()
        self.loss = ClipLoss()
        self._eval: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []

    def _images(self, batch: MultimodalBatch) -> torch.Tensor:
        if batch.image is None or not bool(batch.present[:, 0].all()):
            missing = [i for i, has in zip(batch.ids, batch.present[:, 0].tolist()) if not has]
            raise ValueError(f"contrastive training needs an image in every record; none in {missing[:5]}")
        images = batch.image
        if tuple(images.shape[-2:]) != (self.scorer.image_size, self.scorer.image_size):
            images = torch.stack([self.scorer.preprocess(img) for img in images])
        return images

    def _captions(self, batch: MultimodalBatch, random_reference: bool) -> list[str]:
        texts = []
        for record_id, target, meta in zip(batch.ids, batch.targets, batch.meta):
            references = (meta or {}).get("references")
            if random_reference and isinstance(references, list) and references:
                texts.append(str(references[int(torch.randint(len(references), ()))]))
            elif isinstance(target, str) and target:
                texts.append(target)
            else:
                raise ValueError(f"record {record_id!r}: field 'target': a caption (non-empty string) is needed")
        return texts

    def training_step(self, batch: MultimodalBatch, batch_idx: int) -> torch.Tensor:
        images = self.scorer.embed_images(self._images(batch))
        texts = self.scorer.embed_texts(self._captions(batch, random_reference=True))
        logit_scale = self.scorer.clip.logit_scale.exp()
        loss = self.loss(images, texts, logit_scale)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/logit_scale", logit_scale, batch_size=len(batch))
        return loss

    def on_train_batch_end(self, *args) -> None:
        # CLIP clamps its learned temperature at 100 (open_clip's training loop does the same after each step).
        with torch.no_grad():
            self.scorer.clip.logit_scale.clamp_(0, 4.6052)

    # ------------------------------------------------------------------ evaluation

    def _eval_step(self, batch: MultimodalBatch) -> None:
        if len(batch) == 0:
            return
        texts = self._captions(batch, random_reference=False)
        self._eval.append((self.scorer.embed_images(self._images(batch)).float().cpu(),
                           self.scorer.embed_texts(texts).float().cpu(), texts))  # fmt: skip

    def _eval_end(self, stage: str) -> None:
        parts = [p for rank in gather_from_ranks(self._eval) for p in rank]
        self._eval = []
        if not parts:
            return
        image_emb = torch.cat([p[0] for p in parts])
        text_emb = torch.cat([p[1] for p in parts])
        texts = [t for p in parts for t in p[2]]
        for name, value in retrieval_recall(image_emb, text_emb, texts).items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("recall_mean", "recall_i2t@1"))

    def on_validation_epoch_start(self) -> None:
        self._eval = []

    def validation_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval = []

    def test_step(self, batch: MultimodalBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def predict_step(self, batch: MultimodalBatch, batch_idx: int) -> Any:
        raise NotImplementedError("a contrastive scorer does not generate: use `omnifuse curate --scorer` with it")

    # ------------------------------------------------------------------ optimisation and checkpoints

    def configure_optimizers(self):
        cfg = self.optimizer_config
        groups = parameter_groups(self.scorer, cfg.weight_decay, cfg.lr, cfg.lr_scale)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **adamw_kernel(groups, cfg))
        return {"optimizer": optimizer, "lr_scheduler": warmup_cosine(optimizer, cfg, self._trainer)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What ClipScorer.from_pretrained(<file>.ckpt) and `omnifuse export` rebuild the scorer from.
        from dataclasses import asdict

        checkpoint["omnifuse_scorer_config"] = asdict(self.scorer_config)
        checkpoint["omnifuse_rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed fit continues with the same random draws (caption choice) as an uninterrupted one.
        if "omnifuse_rng_states" in checkpoint and self._trainer is not None and self.trainer.state.fn == "fit":
            set_rng_states(checkpoint["omnifuse_rng_states"])
