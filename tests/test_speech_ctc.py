"""The auxiliary CTC loss on the audio encoder (tasks/speech_ctc.py): its value against a plain-Python CTC forward
recursion, which rows it covers, its errors, that it teaches a tiny encoder to spell real espeak-ng clips, and that
exported models leave the head out."""

from __future__ import annotations

import json
import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.data.collate import Collator
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.speech import Voice, espeak_available, synthesize_to_file
from omnifuse.data.tokenizer import ByteTokenizer
from omnifuse.encoders import AudioEncoder, TimmImageEncoder
from omnifuse.moe_core import MoEDecoderConfig
from omnifuse.tasks import OmniModel, SpeechCTCConfig
from omnifuse.tasks.model import FusionConfig
from omnifuse.tasks.vqa import VQATask

RATE = 16000
TINY_DECODER = MoEDecoderConfig(
    d_model=32, n_layers=1, n_heads=2, n_dense_layers=0, n_routed_experts=4, n_shared_experts=1, top_k=2, d_expert=16
)


def _audio_encoder(**overrides) -> AudioEncoder:
    kwargs = dict(n_mels=40, hop_length=160, win_length=400, d_model=32, n_layers=1, n_heads=2, conv_channels=8)
    kwargs.update(overrides)
    return AudioEncoder(**kwargs)


def _task(weight: float = 0.5, **kwargs) -> VQATask:
    torch.manual_seed(0)
    return VQATask(
        audio_encoder=_audio_encoder(spec_augment=False),
        fusion=FusionConfig(n_layers=1, n_heads=2),
        decoder=TINY_DECODER,
        speech_ctc=SpeechCTCConfig(weight=weight),
        **kwargs,
    )


def _ctc_nll_reference(log_probs: list[list[float]], target: list[int], blank: int) -> float:
    """-log p(target | frames) by the CTC forward recursion over the blank-extended label sequence (Graves 2006)."""
    ext = [blank]
    for label in target:
        ext += [label, blank]
    alpha = [-math.inf] * len(ext)
    alpha[0] = log_probs[0][blank]
    alpha[1] = log_probs[0][ext[1]]

    def logsumexp(*xs: float) -> float:
        top = max(xs)
        return top if top == -math.inf else top + math.log(sum(math.exp(x - top) for x in xs))

    for t in range(1, len(log_probs)):
        new = [-math.inf] * len(ext)
        for s, label in enumerate(ext):
            terms = [alpha[s]]
            if s >= 1:
                terms.append(alpha[s - 1])
            if s >= 2 and label != blank and label != ext[s - 2]:
                terms.append(alpha[s - 2])
            new[s] = logsumexp(*terms) + log_probs[t][label]
        alpha = new
    return -logsumexp(alpha[-1], alpha[-2])


def _batch(waves: list[np.ndarray | None], metas: list[dict]) -> MultimodalBatch:
    width = max(len(w) for w in waves if w is not None)
    audio = torch.zeros(len(waves), width)
    mask = torch.zeros(len(waves), width, dtype=torch.bool)
    present = torch.zeros(len(waves), len(MODALITIES), dtype=torch.bool)
    for row, wave in enumerate(waves):
        if wave is not None:
            audio[row, : len(wave)] = torch.from_numpy(wave)
            mask[row, : len(wave)] = True
            present[row, MODALITIES.index("audio")] = True
    tokenizer = ByteTokenizer()
    target_ids = torch.tensor([[tokenizer.task_id("vqa"), ord("A"), tokenizer.eos_id]] * len(waves))
    return MultimodalBatch(
        ids=[f"r{i}" for i in range(len(waves))],
        tasks=["vqa"] * len(waves),
        present=present,
        audio=audio,
        audio_mask=mask,
        target_ids=target_ids,
        target_mask=torch.ones_like(target_ids, dtype=torch.bool),
        targets=["A"] * len(waves),
        meta=metas,
    )


def test_ctc_loss_matches_a_plain_forward_recursion_over_the_rows_with_audio_and_transcript():
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) if n else None for n in (8000, 5600, 8000, 0, 7200)]
    metas = [
        {"transcript": "red?"},
        {"transcript": "is it"},  # shorter clip: its own token count, not the batch's padded width
        {},  # audio without a transcript: no CTC term
        {"transcript": "no audio"},  # transcript without audio: no CTC term
        {"transcript": "aab"},  # a repeated byte needs a blank between the two a's
    ]
    batch = _batch(waves, metas)
    task = _task(weight=0.5).eval()
    with torch.no_grad():
        losses, _, _ = task._losses(batch)
        audio = task.model.encode_modalities(batch)["audio"]
        log_probs = torch.log_softmax(task.speech_ctc.proj(audio.tokens).double(), dim=-1)

    per_row = []
    for row in (0, 1, 4):
        n = int(audio.mask[row].sum())
        assert n < audio.mask.shape[1] or row != 1  # the shorter clip has fewer real tokens than the padded width
        target = list(metas[row]["transcript"].encode())
        nll = _ctc_nll_reference(log_probs[row, :n].tolist(), target, blank=256)
        per_row.append(nll / len(target))  # F.ctc_loss's "mean": per target byte, then over rows
    assert losses["ctc"].item() == pytest.approx(0.5 * sum(per_row) / len(per_row), rel=1e-4)
    assert losses["loss"].item() == pytest.approx(sum(v.item() for k, v in losses.items() if k != "loss"), rel=1e-6)


def test_batches_without_transcripts_add_no_ctc_term_and_bad_values_name_the_record():
    rng = np.random.default_rng(1)
    waves = [rng.normal(0, 0.1, 6400).astype(np.float32)] * 2
    task = _task().eval()
    with torch.no_grad():
        losses, _, _ = task._losses(_batch(waves, [{}, {"answers": ["a"]}]))
    assert "ctc" not in losses
    with pytest.raises(ValueError, match=r"record 'r1': meta.transcript must be a string, got list"):
        task._losses(_batch(waves, [{"transcript": "ok"}, {"transcript": ["not", "text"]}]))


def test_speech_ctc_needs_an_audio_encoder_and_a_positive_weight():
    with pytest.raises(ValueError, match="speech_ctc needs an audio_encoder"):
        VQATask(
            image_encoder=TimmImageEncoder(model_name="resnet10t", feature_level=-3),
            decoder=TINY_DECODER,
            speech_ctc=SpeechCTCConfig(),
        )
    with pytest.raises(ValueError, match="weight must be > 0"):
        _task(weight=0.0)


def test_transcripts_the_audio_cannot_align_are_dropped_with_one_warning():
    rng = np.random.default_rng(2)
    waves = [rng.normal(0, 0.1, 1600).astype(np.float32)] * 2  # 0.1 s: 2 audio tokens each
    task = _task().eval()
    # "aa" needs 3 tokens (a blank between the two a's), "ab" needs 2.
    with pytest.warns(UserWarning, match=r"record 'r0' needs 3 audio tokens and its audio has 2"):
        losses, _, _ = task._losses(_batch(waves, [{"transcript": "aa"}, {"transcript": "ab"}]))
    with torch.no_grad():
        audio = task.model.encode_modalities(_batch(waves, [{}, {}]))["audio"]
        log_probs = torch.log_softmax(task.speech_ctc.proj(audio.tokens[1]).double(), dim=-1).tolist()
    assert losses["ctc"].item() == pytest.approx(0.5 * _ctc_nll_reference(log_probs, [97, 98], 256) / 2, rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second unalignable batch does not warn again
        losses, _, _ = task._losses(_batch(waves[:1], [{"transcript": "aa"}]))
    assert "ctc" not in losses


def test_fit_trains_the_head_and_checkpoints_load_with_or_without_it(tmp_path):
    rng = np.random.default_rng(3)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (8000, 6400)]
    batch = _batch(waves, [{"transcript": "red"}, {"transcript": "blue"}])
    loader = torch.utils.data.DataLoader([batch] * 3, batch_size=None)
    task = _task(eval_generate=False)
    before = task.speech_ctc.proj.weight.detach().clone()
    trainer = L.Trainer(
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(task, train_dataloaders=loader)
    assert not torch.equal(task.speech_ctc.proj.weight, before)
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in task.speech_ctc.parameters())
    path = tmp_path / "ctc.ckpt"
    trainer.save_checkpoint(path)

    # Evaluating the checkpoint without the head loads (the head is dropped), and val/loss has no CTC term.
    plain = VQATask(
        audio_encoder=_audio_encoder(spec_augment=False),
        fusion=FusionConfig(n_layers=1, n_heads=2),
        decoder=TINY_DECODER,
        eval_generate=False,
    )
    evaluate = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    ctc_loss = evaluate.validate(task, dataloaders=loader, ckpt_path=path, verbose=False, weights_only=False)
    plain_loss = evaluate.validate(plain, dataloaders=loader, ckpt_path=path, verbose=False, weights_only=False)
    assert not any(k.startswith("speech_ctc") for k in plain.state_dict())
    assert plain_loss[0]["val/loss"] == pytest.approx(ctc_loss[0]["val/loss"], rel=1e-6)

    # A checkpoint without the head (saved from the plain task) loads into a task with one, which keeps its fresh head.
    plain_path = tmp_path / "plain.ckpt"
    evaluate.save_checkpoint(plain_path)
    fresh = _task(eval_generate=False)
    head = fresh.speech_ctc.proj.weight.detach().clone()
    with pytest.warns(UserWarning, match="no speech_ctc head"):
        evaluate.validate(fresh, dataloaders=loader, ckpt_path=plain_path, verbose=False, weights_only=False)
    assert torch.equal(fresh.speech_ctc.proj.weight, head)


def test_exported_models_leave_the_ctc_head_out(tmp_path):
    task = _task()
    assert any(k.startswith("speech_ctc.") for k in task.state_dict())
    checkpoint = {"omnifuse_model_config": task.model.config(), "state_dict": task.state_dict()}
    model = OmniModel.from_checkpoint(checkpoint)
    assert not any("ctc" in k for k in model.state_dict())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in task.model.state_dict().items())


SPOKEN = [
    ("what color is the circle?", Voice("en-us", 160, 50)),
    ("is there a triangle?", Voice("en-gb", 150, 40)),
    ("is there not a blue shape?", Voice("en-gb-x-rp+m3", 160, 50)),
]


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_the_ctc_loss_teaches_a_tiny_encoder_to_spell_real_spoken_clips(tmp_path):
    """Trained on the CTC loss alone, the head's best path spells each clip's transcript exactly (memorised)."""
    lines = []
    for i, (question, voice) in enumerate(SPOKEN):
        synthesize_to_file(question, voice, tmp_path / f"q{i}.wav", RATE)
        record = {"id": f"s{i}", "task": "vqa", "audio": f"q{i}.wav", "target": "x", "meta": {"transcript": question}}
        lines.append(json.dumps(record))
    (tmp_path / "spoken.jsonl").write_text("\n".join(lines) + "\n")
    dataset = ManifestDataset(tmp_path / "spoken.jsonl", sample_rate=RATE, max_audio_seconds=3.0)
    batch = Collator()([dataset[i] for i in range(len(dataset))])

    task = _task(weight=1.0)
    encoder, head = task.model.encoders["audio"], task.speech_ctc
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    task.train()
    for _ in range(600):  # converges in ~145 steps (measured with seeds 0, 1, 2)
        loss = head(encoder(batch.audio, batch.audio_mask), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    task.eval()
    assert head.greedy_decode(encoder(batch.audio, batch.audio_mask)) == [q for q, _ in SPOKEN]


def test_init_from_loads_the_source_head_when_it_has_one(tmp_path, capsys):
    """Fine-tuning from a run trained with speech_ctc (e.g. spoken -> mixed) starts from its head; from a run without
    one, an exported model, or when the audio encoder was not (all) loaded, the head is new. The report says which."""
    source = _task()
    with torch.no_grad():
        source.speech_ctc.proj.weight.normal_()
    with_head, without_head = tmp_path / "with.ckpt", tmp_path / "without.ckpt"
    torch.save({"state_dict": source.state_dict(), "omnifuse_model_config": source.model.config()}, with_head)
    plain = {k: v for k, v in source.state_dict().items() if not k.startswith("speech_ctc.")}
    torch.save({"state_dict": plain, "omnifuse_model_config": source.model.config()}, without_head)
    source.model.save_pretrained(tmp_path / "export")
    other = VQATask(  # 32 mel bins instead of 40: the audio encoder's projection cannot load; the head could
        audio_encoder=_audio_encoder(n_mels=32, spec_augment=False),
        fusion=FusionConfig(n_layers=1, n_heads=2),
        decoder=TINY_DECODER,
        speech_ctc=SpeechCTCConfig(weight=0.5),
    )
    other_audio = tmp_path / "other_audio.ckpt"
    torch.save({"state_dict": other.state_dict(), "omnifuse_model_config": other.model.config()}, other_audio)

    tuned = _task(init_from=str(with_head))
    assert torch.equal(tuned.speech_ctc.proj.weight, source.speech_ctc.proj.weight)
    assert torch.equal(tuned.speech_ctc.proj.bias, source.speech_ctc.proj.bias)
    assert "speech_ctc head: loaded (2 tensors)" in capsys.readouterr().out

    fresh = _task().speech_ctc.proj.weight  # the seeded initialisation every _task() starts from
    for init_from, kwargs, reason in [
        (without_head, {}, "trained without speech_ctc"),
        (tmp_path / "export", {}, "exported models"),
        (with_head, {"init_skip": ["audio_encoder"]}, "not loaded from init_from"),
        (with_head, {"init_skip": ["encoders.audio.blocks.0"]}, "not loaded from init_from"),
        (other_audio, {}, "not loaded from init_from"),  # same head shape, but the encoder did not match
    ]:
        task = _task(init_from=str(init_from), **kwargs)
        assert torch.equal(task.speech_ctc.proj.weight, fresh), reason
        out = capsys.readouterr().out
        assert "speech_ctc head: new" in out and reason in out
