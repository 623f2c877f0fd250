"""Question-conditioned vision: FiLM parameters from the question's tokens (text or speech) modulate the image tower.

Checked against plain references: no question -> exactly the unconditioned tower; a mixed batch (text questions,
spoken questions, no question, no image) -> the same as each sample alone, through a plain per-sample loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from omnifuse.data.batch import MODALITIES, MultimodalBatch
from omnifuse.encoders import (
    AudioEncoder,
    ConvImageEncoder,
    FilmParams,
    TextEncoder,
    TimmImageEncoder,
    TokenSequence,
    build_encoder,
    list_encoders,
)
from omnifuse.fusion import QuestionFilm
from omnifuse.tasks.model import OmniModel

FILM_TINY = {  # one small configuration per encoder that accepts FiLM
    "conv_image": dict(channels=8, n_blocks=2, film_stem=True),
    "timm_image": dict(model_name="resnet10t", feature_level=-3),
}


def _random_film(channels: tuple[int, ...], batch: int, seed: int = 0) -> FilmParams:
    g = torch.Generator().manual_seed(seed)
    scale = tuple(1 + 0.5 * torch.randn(batch, c, generator=g) for c in channels)
    shift = tuple(0.5 * torch.randn(batch, c, generator=g) for c in channels)
    return FilmParams(scale, shift)


def _identity_film(channels: tuple[int, ...], batch: int) -> FilmParams:
    return FilmParams(tuple(torch.ones(batch, c) for c in channels), tuple(torch.zeros(batch, c) for c in channels))


def test_every_encoder_that_takes_film_is_covered():
    takes = [n for n in list_encoders() if n.endswith("_image") and n != "open_clip_image"]
    assert sorted(takes) == sorted(FILM_TINY)


@pytest.mark.parametrize("name", sorted(FILM_TINY))
def test_film_surface_identity_is_bit_exact_and_film_is_used(name):
    torch.manual_seed(0)
    enc = build_encoder(name, **FILM_TINY[name]).eval()
    assert enc.film_channels and all(c > 0 for c in enc.film_channels)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain = enc(images)
        identity = enc(images, film=_identity_film(enc.film_channels, 3))
        film = _random_film(enc.film_channels, 3)
        mixed = FilmParams(  # row 1 unconditioned, rows 0 and 2 conditioned
            tuple(torch.where(torch.tensor([[True], [False], [True]]), s, 1.0) for s in film.scale),
            tuple(torch.where(torch.tensor([[True], [False], [True]]), s, 0.0) for s in film.shift),
        )
        conditioned = enc(images, film=mixed)
    assert torch.equal(identity.tokens, plain.tokens)
    assert torch.equal(conditioned.tokens[1], plain.tokens[1])  # the unconditioned row, bit for bit
    assert not torch.allclose(conditioned.tokens[0], plain.tokens[0])
    assert conditioned.tokens.shape == plain.tokens.shape and conditioned.mask.all()
    if name == "timm_image":  # hooks are removed after the call
        assert not any(m._forward_hooks for m in enc.modules())


@pytest.mark.parametrize("name", sorted(FILM_TINY))
def test_gradient_reaches_the_film_parameters(name):
    enc = build_encoder(name, **FILM_TINY[name]).train()
    film = _random_film(enc.film_channels, 2)
    for t in film.scale + film.shift:
        t.requires_grad_(True)
    enc(torch.rand(2, 3, 32, 32), film=film).tokens.square().mean().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in film.scale + film.shift)


def test_encoders_without_stages_refuse_film():
    with pytest.raises(ValueError, match="film"):
        OmniModel(
            image_encoder=build_encoder("timm_image", model_name="test_vit", img_size=32, film_levels=[]),
            text_encoder=TextEncoder(d_model=16, n_layers=1, n_heads=2, max_len=32),
            fusion={"n_layers": 1, "n_heads": 2, "vision_film": True},
            decoder=TINY_DECODER,
        )


# ---------------------------------------------------------------- the model: a mixed batch against a per-sample loop

TINY_DECODER = dict(d_model=32, n_layers=1, n_heads=2, n_routed_experts=4, top_k=2, d_expert=16, d_ff_dense=64)
TEXT_LEN = [9, 0, 0, 5, 7]  # sample 0: text question; 1: spoken; 2: no question; 3: text, no image; 4: text + speech
AUDIO_LEN = [0, 3000, 0, 0, 2400]
HAS_IMAGE = [1, 1, 1, 0, 1]


def _tiny_model(image_encoder: nn.Module | None = None) -> OmniModel:
    torch.manual_seed(0)
    model = OmniModel(
        image_encoder=image_encoder or ConvImageEncoder(channels=8, n_blocks=2),
        audio_encoder=AudioEncoder(n_mels=32, d_model=16, n_layers=1, n_heads=2, conv_channels=4),
        text_encoder=TextEncoder(d_model=16, n_layers=1, n_heads=2, max_len=32),
        fusion={"n_layers": 1, "n_heads": 2, "vision_film": True, "vision_film_hidden": 16},
        decoder=TINY_DECODER,
    )
    nn.init.normal_(model.fusion.vision_film.mlp[-1].weight, std=0.3)  # trained FiLM: not the zero-init identity
    return model.eval()


def _batch() -> MultimodalBatch:
    g = torch.Generator().manual_seed(0)
    B = len(TEXT_LEN)
    text_mask = torch.arange(max(TEXT_LEN))[None] < torch.tensor(TEXT_LEN)[:, None]
    audio_mask = torch.arange(max(AUDIO_LEN))[None] < torch.tensor(AUDIO_LEN)[:, None]
    present = torch.tensor([[HAS_IMAGE[b], AUDIO_LEN[b] > 0, TEXT_LEN[b] > 0] for b in range(B)], dtype=torch.bool)
    image = torch.rand(B, 3, 32, 32, generator=g) * torch.tensor(HAS_IMAGE, dtype=torch.float)[:, None, None, None]
    return MultimodalBatch(
        ids=[str(b) for b in range(B)],
        tasks=["vqa"] * B,
        present=present,
        image=image,
        audio=0.1 * torch.randn(B, max(AUDIO_LEN), generator=g) * audio_mask,
        audio_mask=audio_mask,
        text=torch.where(text_mask, torch.randint(97, 123, (B, max(TEXT_LEN)), generator=g), 256),
        text_mask=text_mask,
    )


def _reference_pool(gen: QuestionFilm, m: str, tokens: torch.Tensor) -> torch.Tensor:
    """One sample's valid tokens (N, D) -> its summary (d_hidden,): a plain loop over the attention-pooling heads."""
    h = gen.norm[m](tokens)  # (N, D)
    heads = []
    for q in range(gen.scores[m].out_features):
        w = torch.softmax(h @ gen.scores[m].weight[q] + gen.scores[m].bias[q], dim=0)  # (N,)
        heads.append((w[:, None] * h).sum(dim=0))
    return gen.summarize[m](torch.cat(heads))


def _reference_film(model: OmniModel, b: int, batch: MultimodalBatch) -> FilmParams | None:
    """Plain per-sample FiLM: attention-pool each question modality the sample has, summarise, average, MLP."""
    gen = model.fusion.vision_film
    summaries = []
    if TEXT_LEN[b]:
        n = TEXT_LEN[b]
        tokens = model.encoders["text"](batch.text[b : b + 1, :n], batch.text_mask[b : b + 1, :n]).tokens[0]
        summaries.append(_reference_pool(gen, "text", tokens))
    if AUDIO_LEN[b]:
        n = AUDIO_LEN[b]
        out = model.encoders["audio"](batch.audio[b : b + 1, :n], batch.audio_mask[b : b + 1, :n])
        summaries.append(_reference_pool(gen, "audio", out.tokens[0][out.mask[0]]))
    if not summaries:
        return None
    gamma, beta = gen.mlp(torch.stack(summaries).mean(dim=0)).chunk(2)
    scale, shift = (1 + gamma).split(gen.channels), beta.split(gen.channels)
    return FilmParams(tuple(s[None] for s in scale), tuple(s[None] for s in shift))


@pytest.mark.parametrize("tower", ["conv_image", "timm_image"])
def test_mixed_batch_equals_a_plain_per_sample_loop(tower):
    model = _tiny_model(build_encoder(tower, **FILM_TINY[tower]))
    batch = _batch()
    with torch.no_grad():
        image_tokens = model.encode_modalities(batch)["image"].tokens  # (B, N, C)
        unconditioned = model.encoders["image"](batch.image).tokens  # the same batch through the plain tower
        memory = model.encode(batch)
        for b in range(len(TEXT_LEN)):
            film = _reference_film(model, b, batch)
            image = batch.image[b : b + 1]
            plain = model.encoders["image"](image)
            if HAS_IMAGE[b]:
                want = plain if film is None else model.encoders["image"](image, film=film)
                assert_close(image_tokens[b], want.tokens[0], rtol=1e-5, atol=1e-5)
                if film is None:  # no question: the unconditioned tower, bit for bit
                    assert torch.equal(image_tokens[b], unconditioned[b])
                else:  # the question changes the image tokens
                    assert not torch.allclose(want.tokens[0], plain.tokens[0], atol=1e-3)
            # The whole fused memory of the sample equals the sample alone (its valid tokens, in order).
            alone = model.encode(batch.select([b]))
            assert_close(memory.tokens[b][memory.mask[b]], alone.tokens[0][alone.mask[0]], rtol=1e-4, atol=1e-5)
            assert_close(memory.modality_weights[b], alone.modality_weights[0], rtol=1e-4, atol=1e-6)
    assert (memory.modality_weights[3, 0] == 0).item()  # no image: weight exactly 0, no image tokens in memory


def test_no_question_anywhere_runs_the_plain_tower_exactly():
    model = _tiny_model()
    batch = _batch().select([2])  # image only
    both = _batch().select([2, 2])
    both.present[:, MODALITIES.index("text")] = False
    with torch.no_grad():
        assert model.fusion.vision_conditioning(model.encode_modalities(batch), batch.present) is None
        got = model.encode_modalities(batch)["image"].tokens
        assert torch.equal(got, model.encoders["image"](batch.image).tokens)


def test_question_film_identity_rows_are_exact_and_spoken_and_written_questions_both_count():
    gen = QuestionFilm({"image": 8, "text": 6, "audio": 4}, channels=(3, 5), d_hidden=8)
    nn.init.normal_(gen.mlp[-1].weight)
    nn.init.normal_(gen.mlp[-1].bias)
    B = 4
    text = torch.randn(B, 7, 6)
    audio = torch.randn(B, 5, 4)
    text_mask = torch.tensor([[1] * 7, [0] * 7, [0] * 7, [1] * 3 + [0] * 4], dtype=torch.bool)
    audio_mask = torch.tensor([[0] * 5, [1] * 5, [0] * 5, [1] * 2 + [0] * 3], dtype=torch.bool)
    seqs = {"text": (text, text_mask), "audio": (audio, audio_mask)}
    present = {"text": text_mask.any(-1), "audio": audio_mask.any(-1)}
    film = gen(seqs, present)
    assert [s.shape for s in film.scale] == [(B, 3), (B, 5)]
    assert all(torch.equal(s[2], torch.ones_like(s[2])) for s in film.scale)  # no question: exactly identity
    assert all(torch.equal(s[2], torch.zeros_like(s[2])) for s in film.shift)
    # Spoken (row 1) and written (row 0) questions both condition; changing either changes the parameters.
    for m, row in (("text", 0), ("audio", 1)):
        changed = dict(seqs)
        tokens, mask = seqs[m]
        changed[m] = (tokens + torch.randn(tokens.shape), mask)  # not a constant: LayerNorm would remove it
        other = gen(changed, present)
        assert not torch.allclose(other.scale[0][row], film.scale[0][row])
        assert torch.equal(other.scale[0][2], film.scale[0][2])
    # Padding values under the mask change nothing.
    junk = {"text": (torch.where(text_mask[..., None], text, 9.0), text_mask), "audio": seqs["audio"]}
    assert all(torch.equal(a, b) for a, b in zip(gen(junk, present).scale, film.scale))
    assert gen({"text": (text, text_mask)}, {"text": torch.zeros(B, dtype=torch.bool)}) is None


def test_gradient_reaches_the_film_generator_through_the_model():
    model = _tiny_model().train()
    batch = _batch()
    sequences = model.encode_modalities(batch)
    memory = model.encode(batch, sequences)
    memory.tokens.square().mean().backward()
    grads = {n: p.grad for n, p in model.fusion.vision_film.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]


def test_fresh_generator_starts_as_the_unconditioned_tower_and_config_round_trips(tmp_path):
    torch.manual_seed(0)
    model = OmniModel(
        image_encoder=TimmImageEncoder("resnet10t", feature_level=-3, film_levels=[2]),
        text_encoder=TextEncoder(d_model=16, n_layers=1, n_heads=2, max_len=32),
        fusion={"n_layers": 1, "n_heads": 2, "vision_film": True, "vision_film_hidden": 16},
        decoder=TINY_DECODER,
    ).eval()
    assert model.encoders["image"].film_channels == (128,)  # resnet10t layer2
    batch = _batch().select([0])
    batch.present[:, MODALITIES.index("audio")] = False
    with torch.no_grad():
        got = model.encode_modalities(batch)["image"].tokens
        assert torch.equal(got, model.encoders["image"](batch.image).tokens)  # zero-initialised last layer
    reloaded = OmniModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert reloaded.fusion_config.vision_film and reloaded.fusion.vision_film is not None


def test_question_memory_off_keeps_the_question_out_of_memory_only_where_an_image_carries_it():
    torch.manual_seed(0)
    model = _tiny_model()
    off = OmniModel(
        image_encoder=ConvImageEncoder(channels=8, n_blocks=2),
        audio_encoder=AudioEncoder(n_mels=32, d_model=16, n_layers=1, n_heads=2, conv_channels=4),
        text_encoder=TextEncoder(d_model=16, n_layers=1, n_heads=2, max_len=32),
        fusion={"n_layers": 1, "n_heads": 2, "vision_film": True, "vision_film_hidden": 16, "question_memory": False},
        decoder=TINY_DECODER,
    ).eval()
    off.load_state_dict(model.state_dict())
    batch = _batch()
    image_col = MODALITIES.index("image")
    with torch.no_grad():
        sequences = model.encode_modalities(batch)
        encoded = off.encode_modalities(batch)
        assert all(torch.equal(sequences[m].tokens, encoded[m].tokens) for m in sequences)  # the encoders agree
        memory = off.encode(batch, sequences)
        for b in range(len(TEXT_LEN)):
            # The reference: the full model's fusion, told the sample has no question modality when it has an image.
            alone = batch.select([b])
            if HAS_IMAGE[b]:
                alone.present[:, [MODALITIES.index("audio"), MODALITIES.index("text")]] = False
            rows = {m: TokenSequence(s.tokens[b : b + 1], s.mask[b : b + 1]) for m, s in sequences.items()}
            want = model.encode(alone, rows)
            assert_close(memory.tokens[b][memory.mask[b]], want.tokens[0][want.mask[0]], rtol=1e-4, atol=1e-5)
            expected_weights = torch.tensor([1.0, 0.0, 0.0]) if HAS_IMAGE[b] else want.modality_weights[0]
            assert_close(memory.modality_weights[b], expected_weights)
    assert memory.mask[3].sum() == 1 + TEXT_LEN[3]  # no image: null token + the question's tokens
    assert memory.mask[0].sum() == 1 + sequences["image"].tokens.shape[1]  # image + question: null + image tokens
    assert memory.modality_weights[:, image_col].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_question_film_options_round_trip_through_a_saved_model(tmp_path):
    fusion = {"n_layers": 0, "n_heads": 2, "vision_film": True, "vision_film_hidden": 16}
    fusion |= {"vision_film_depth": 0, "vision_film_residual": False, "question_memory": False}
    model = OmniModel(
        image_encoder=ConvImageEncoder(channels=8, n_blocks=2, token_pool=8),
        text_encoder=TextEncoder(d_model=16, n_layers=1, n_heads=2, max_len=32, units="word"),
        fusion=fusion,
        decoder=TINY_DECODER,
    ).eval()
    reloaded = OmniModel.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
    assert not reloaded.fusion.question_memory and not reloaded.fusion.vision_film.residual_scale
    assert reloaded.encoders["text"].units == "word" and len(reloaded.fusion.vision_film.mlp) == 1
    batch = _batch().select([0, 3])
    batch.present[:, MODALITIES.index("audio")] = False
    with torch.no_grad():
        assert torch.equal(model.encode(batch).tokens, reloaded.encode(batch).tokens)


def test_linear_head_with_direct_scale_matches_a_plain_computation():
    """``depth=0, residual_scale=False`` (the FiLM paper's generator): scale = gamma, shift = beta, both one linear map
    of the pooled question; rows without a question still get exactly scale 1 and shift 0."""
    torch.manual_seed(0)
    gen = QuestionFilm({"text": 6}, channels=(3, 5), d_hidden=8, depth=0, residual_scale=False)
    assert len(gen.mlp) == 1 and isinstance(gen.mlp[0], nn.Linear)
    assert gen.mlp[0].weight.abs().sum() > 0  # default initialisation, not zero: questions differ from step 0
    text = torch.randn(3, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    film = gen({"text": (text, mask)}, {"text": mask.any(-1)})
    for b in (0, 2):
        out = gen.mlp[0](_reference_pool(gen, "text", text[b][mask[b]]))
        gamma, beta = out.chunk(2)
        assert_close(torch.cat(film.scale, dim=-1)[b], gamma)
        assert_close(torch.cat(film.shift, dim=-1)[b], beta)
    assert all(torch.equal(s[1], torch.ones(s.shape[1])) for s in film.scale)
    assert all(torch.equal(s[1], torch.zeros(s.shape[1])) for s in film.shift)
    deep = QuestionFilm({"text": 6}, channels=(3,), d_hidden=8, depth=2)
    assert sum(isinstance(m, nn.Linear) for m in deep.mlp) == 3 and not deep.mlp[-1].weight.any()
    with pytest.raises(ValueError, match="depth"):
        QuestionFilm({"text": 6}, channels=(3,), depth=-1)
