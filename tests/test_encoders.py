"""Encoders: the shared invariant over every registered encoder, masking, freezing, local weights, references."""

from __future__ import annotations

import random
import string

import open_clip
import pytest
import timm
import torch
import torchaudio
from torch.testing import assert_close

from omnifuse.data.tokenizer import ByteTokenizer
from omnifuse.encoders import (
    ConvImageEncoder,
    LogMelFrontend,
    OpenClipImageEncoder,
    OpenClipTextEncoder,
    TextEncoder,
    TimmImageEncoder,
    TokenSequence,
    build_encoder,
    list_encoders,
)
from omnifuse.encoders.layers import TransformerBlock
from omnifuse.encoders.text import word_bucket_ids, word_units

# Tiny open_clip configs (random init): override the named model's towers through create_model kwargs.
OC_VISION = dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32)
OC_TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
OC_TINY = dict(model_name="ViT-S-32", embed_dim=32, vision_cfg=OC_VISION, text_cfg=OC_TEXT)

# One tiny configuration per registered encoder; a new registration must add one (checked below).
TINY = {
    "timm_image": dict(model_name="resnet10t", feature_level=-3),
    "conv_image": dict(channels=8, n_blocks=2, out_channels=12),
    "open_clip_image": OC_TINY,
    "audio": dict(n_mels=32, d_model=32, n_layers=1, n_heads=2, conv_channels=8),
    "timm_audio": dict(model_name="test_vit", n_mels=32, max_frames=64),
    "text": dict(d_model=32, n_layers=1, n_heads=2, max_len=64),
    "open_clip_text": OC_TINY,
}
FREEZABLE = ["timm_image", "open_clip_image", "timm_audio", "open_clip_text"]

B = 3
AUDIO_LENGTHS = [4000, 2000, 0]  # last sample: no audio
TEXT_LENGTHS = [12, 5, 0]  # last sample: no text


def _lengths_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (B, width)


def make_inputs(modality: str, junk: bool = False) -> tuple[torch.Tensor, ...]:
    """Encoder inputs for a small batch; ``junk=True`` puts different random values under every padding position."""
    g = torch.Generator().manual_seed(1 if junk else 0)
    if modality == "image":
        return (torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
    if modality == "audio":
        mask = _lengths_mask(AUDIO_LENGTHS, 4000)
        wave = 0.1 * torch.randn(B, 4000, generator=torch.Generator().manual_seed(0))
        junk_wave = 3.0 * torch.randn(B, 4000, generator=g) if junk else torch.zeros(B, 4000)
        return (torch.where(mask, wave, junk_wave), mask)
    mask = _lengths_mask(TEXT_LENGTHS, 12)
    ids = torch.randint(97, 123, (B, 12), generator=torch.Generator().manual_seed(0))  # a..z bytes
    junk_ids = torch.randint(0, 262, (B, 12), generator=g) if junk else torch.full((B, 12), 256)
    return (torch.where(mask, ids, junk_ids), mask)


@pytest.fixture(scope="module", params=sorted(TINY))
def encoder_name(request) -> str:
    return request.param


def test_every_registered_encoder_has_a_tiny_config():
    assert sorted(TINY) == list_encoders()


def test_unknown_encoder_lists_known_names():
    with pytest.raises(ValueError, match="known encoders: audio, conv_image, open_clip_image"):
        build_encoder("no_such_encoder")


def test_encoder_invariant(encoder_name):
    """Shapes, masks, dtype, zeros under the mask, num_tokens, and gradients to every trainable parameter."""
    enc = build_encoder(encoder_name, **TINY[encoder_name]).train()
    assert enc.registry_name == encoder_name
    assert enc.spec["class_path"] == f"{type(enc).__module__}.{type(enc).__qualname__}"  # base Encoder records it
    inputs = make_inputs(enc.modality)
    out = enc(*inputs)
    assert isinstance(out, TokenSequence)
    tokens, mask = out
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert tokens.dim() == 3 and tokens.shape[0] == B and tokens.shape[2] == enc.out_dim
    assert mask.shape == tokens.shape[:2]
    assert torch.isfinite(tokens).all()
    assert (tokens[~mask] == 0).all()
    if enc.modality == "image":
        assert mask.all() and tokens.shape[1] == enc.num_tokens(32)
    elif enc.modality == "audio":
        assert tokens.shape[1] == enc.num_tokens(4000)
        assert mask[0].sum() > mask[1].sum() > 0 and not mask[2].any()
    elif encoder_name == "text":
        assert tokens.shape[1] == enc.num_tokens(12) and mask.sum(-1).tolist() == TEXT_LENGTHS
    else:  # open_clip_text re-tokenises: [SOT] bpe [EOT]
        texts = [bytes(row[:n].tolist()).decode() for row, n in zip(inputs[0], TEXT_LENGTHS)]
        assert mask.sum(-1).tolist() == [enc.num_tokens(texts[0]), enc.num_tokens(texts[1]), 0]

    tokens.square().mean().backward()
    trainable = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", FREEZABLE)
def test_freeze(name):
    enc = build_encoder(name, **TINY[name], freeze=True).train()
    assert not any(p.requires_grad for p in enc.parameters())
    assert not any(m.training for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    out = enc(*make_inputs(enc.modality))
    assert not out.tokens.requires_grad


@pytest.mark.parametrize("name", ["audio", "timm_audio", "text", "open_clip_text"])
def test_padding_values_do_not_change_any_output_bit(name):
    enc = build_encoder(name, **TINY[name]).eval()
    clean, junk = make_inputs(enc.modality), make_inputs(enc.modality, junk=True)
    assert not torch.equal(clean[0], junk[0])
    with torch.no_grad():
        a, b = enc(*clean), enc(*junk)
    assert_close(a.tokens, b.tokens, rtol=0, atol=0)
    assert torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("name", ["audio", "timm_audio", "text"])
def test_sample_alone_equals_sample_in_padded_batch(name):
    """A clip's valid tokens do not depend on how much padding its batch adds."""
    enc = build_encoder(name, **TINY[name]).eval()
    batch = make_inputs(enc.modality)
    n = (AUDIO_LENGTHS if enc.modality == "audio" else TEXT_LENGTHS)[1]
    with torch.no_grad():
        full = enc(*batch)
        alone = enc(batch[0][1:2, :n], batch[1][1:2, :n])
    valid = full.mask[1]
    assert alone.mask[0].sum() == valid.sum()
    assert_close(alone.tokens[0][alone.mask[0]], full.tokens[1][valid])


def test_spec_augment_only_in_training():
    enc = build_encoder("audio", **TINY["audio"])
    wave, mask = make_inputs("audio")
    with torch.no_grad():
        spec, _ = enc.frontend(wave, mask)
        enc.eval()
        assert torch.equal(enc.spec_augment(spec), spec)
        enc.train()
        assert not torch.equal(enc.spec_augment(spec), spec)


def test_log_mel_matches_torchaudio_reference():
    """Unpadded clip: zero-padded centred STFT -> mel -> dB (top_db 80) -> per-clip standardisation."""
    front = LogMelFrontend(sample_rate=16000, n_mels=40, hop_length=160, win_length=400)
    wave = 0.1 * torch.randn(1, 3200)
    ref = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=400, win_length=400, hop_length=160, n_mels=40, center=True, pad_mode="constant"
    )(wave)
    ref = torchaudio.transforms.AmplitudeToDB("power", top_db=80.0)(ref)
    ref = (ref - ref.mean()) / torch.sqrt(ref.var(unbiased=False) + 1e-5)
    spec, frame_mask = front(wave, torch.ones_like(wave, dtype=torch.bool))
    assert frame_mask.all() and spec.shape == ref.shape == (1, 40, 3200 // 160 + 1)
    assert_close(spec, ref, rtol=1e-4, atol=1e-4)


def test_transformer_block_matches_plain_reference():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2).eval()
    x = torch.randn(2, 5, 16)
    key_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)

    h = block.norm1(x)
    q, k, v = block.attn.qkv(h).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)  # (B, h, N, hs)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16)
    y = x + block.attn.out(att)
    ref = y + block.ffn(block.norm2(y))
    assert_close(block(x, key_mask), ref, rtol=1e-5, atol=1e-5)


def test_timm_feature_level_and_resize():
    cnn = TimmImageEncoder("resnet10t", feature_level=-3)  # easy-VQA 64x64 -> 8x8 tokens
    assert cnn.num_tokens(64) == 64 and cnn(torch.rand(1, 3, 64, 64)).tokens.shape == (1, 64, cnn.out_dim)
    vit = TimmImageEncoder("test_vit", img_size=32)  # fixed-size model: inputs are resized to 32x32
    assert vit.normalize.size == (32, 32)
    assert vit(torch.rand(2, 3, 64, 64)).tokens.shape == (2, vit.num_tokens(64), vit.out_dim)


@pytest.mark.parametrize("size", [64, 30, 17])
@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_conv_tower_token_count_for_any_image_size(stem, size):
    enc = ConvImageEncoder(channels=8, n_blocks=1, token_pool=2, stem=stem)
    assert enc(torch.rand(2, 3, size, size)).tokens.shape == (2, enc.num_tokens(size), 8)


def test_patch_stem_is_a_linear_map_of_each_4x4_patch():
    """The patch stem's conv, against a plain reference: cut the image into non-overlapping 4x4 patches (a loop), flatten
    each (channel, row, column) and multiply by the conv weight as a matrix; then BatchNorm and ReLU as in training."""
    torch.manual_seed(0)
    enc = ConvImageEncoder(channels=8, n_blocks=1, stem="patch", channels_last=True).train()
    x = torch.rand(2, 3, 18, 17)  # 4x4 patches; the last rows and columns (2 and 1) are dropped, as by a stride-4 conv
    pixels = enc.normalize(x)
    weight = enc.stem[0].weight.detach().reshape(8, 48)
    grid = torch.empty(2, 8, 4, 4)
    for i in range(4):
        for j in range(4):
            patch = pixels[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(2, 48)
            grid[:, :, i, j] = patch @ weight.T
    mean, var = grid.mean((0, 2, 3), keepdim=True), grid.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = torch.relu((grid - mean) / torch.sqrt(var + enc.stem[1].eps))
    assert_close(enc.stem(pixels.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-5)
    assert len(enc.stem) == 3 and enc.num_tokens((18, 17)) == 4  # token_pool 2 over the 4x4 grid: 2x2


def test_conv_stem_keeps_its_parameter_names():
    """``stem="conv"`` (the default) builds the same modules as before the option: old checkpoints still load."""
    names = [
        n for n, _ in ConvImageEncoder(channels=8, n_blocks=1, n_stem=3).named_parameters() if n.startswith("stem")
    ]
    assert names == ["stem.0.weight", "stem.1.weight", "stem.1.bias", "stem.3.weight", "stem.4.weight", "stem.4.bias",
                     "stem.6.weight", "stem.7.weight", "stem.7.bias"]  # fmt: skip
    with pytest.raises(ValueError, match="stem must be 'conv' or 'patch'"):
        ConvImageEncoder(stem="pixels")


def test_pretrained_must_be_a_local_file(tmp_path):
    with pytest.raises(ValueError, match="local weights file"):
        TimmImageEncoder("resnet10t", pretrained=True)
    with pytest.raises(FileNotFoundError):
        OpenClipImageEncoder(**OC_TINY, pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown timm model"):
        TimmImageEncoder("not_a_timm_model")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_local_weights_reproduce_the_original_model(tmp_path, suffix):
    torch.manual_seed(0)
    original = timm.create_model("resnet10t", pretrained=False).eval()
    path = tmp_path / f"resnet10t{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(original.state_dict(), str(path))
    else:
        torch.save(original.state_dict(), path)
    enc = TimmImageEncoder("resnet10t", pretrained=str(path)).eval()
    images = torch.rand(2, 3, 64, 64)
    cfg = timm.data.resolve_data_config({}, model=original)
    x = (images - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = original.forward_features(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        out = enc(images)
    assert_close(out.tokens, ref)


def test_open_clip_local_weights_reproduce_the_original_model(tmp_path):
    torch.manual_seed(0)
    kwargs = {k: v for k, v in OC_TINY.items() if k != "model_name"}
    original = open_clip.create_model("ViT-S-32", pretrained=None, pretrained_text=False, **kwargs).eval()
    path = tmp_path / "clip.pt"
    torch.save(original.state_dict(), path)

    # Visual tower: tokens = ln_post of the patch tokens, as open_clip's own output_tokens path returns them.
    image_enc = OpenClipImageEncoder(**OC_TINY, pretrained=str(path)).eval()
    images = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    original.visual.output_tokens = True
    with torch.no_grad():
        _, ref_tokens = original.visual((images - mean) / std)
        assert_close(image_enc(images).tokens, ref_tokens)

    # Text tower: the EOT token, projected, is open_clip's own text embedding.
    text_enc = OpenClipTextEncoder(**OC_TINY, pretrained=str(path)).eval()
    texts = ["what colour is the shape?", "a small red circle on the left"]
    ids = torch.full((2, 40), 256)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = torch.tensor(list(text.encode()))
        mask[row, : len(text)] = True
    with torch.no_grad():
        out = text_enc(ids, mask)
        ref = original.encode_text(open_clip.get_tokenizer("ViT-S-32")(texts))
        eot = out.mask.sum(-1) - 1
        pooled = out.tokens[torch.arange(2), eot] @ original.text_projection
    assert_close(pooled, ref)


def _reference_word_buckets(text: str, buckets: int) -> list[int]:
    """Plain-Python reference: split the UTF-8 bytes on ASCII whitespace/punctuation; every byte of a word gets
    ``1 + (sum((byte + 1) * 257**i) mod (2**31 - 1)) % buckets``, separators 0."""
    data = text.encode("utf-8")
    separators = set(b" \t\n\r\x0b\x0c") | {ord(c) for c in string.punctuation}
    out, word = [], []
    for byte in list(data) + [None]:
        if byte is None or byte in separators:
            h = sum((b + 1) * pow(257, i, 2**31 - 1) for i, b in enumerate(word)) % (2**31 - 1)
            out += [1 + h % buckets] * len(word)
            word = []
            if byte is not None:
                out.append(0)
        else:
            word.append(byte)
    return out


def test_word_buckets_match_a_plain_reference():
    rng = random.Random(0)
    pieces = ["red", "Red", "naïve", "日本", "😀x", "shape", "a", "", " ", "  ", ",", "?", "-", "\t", "\n", "12"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(200)]
    texts += ["is there a red shape in the image?", "red red, blue! naïve"]
    tok = ByteTokenizer()
    encoded = [tok.encode(t) for t in texts]
    width = max(map(len, encoded)) + 2  # right padding with pad ids
    ids = torch.full((len(texts), width), tok.pad_id)
    mask = torch.zeros(len(texts), width, dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
        mask[i, : len(e)] = True
    got = word_bucket_ids(ids, mask, 1000)
    for i, text in enumerate(texts):
        assert got[i, : len(encoded[i])].tolist() == _reference_word_buckets(text, 1000), text
        assert not got[i, len(encoded[i]) :].any()  # padding is never in a word
    # The same word lands in the same bucket wherever it stands.
    first = got[-2].tolist()
    assert first[11] == got[-1, 0] == got[-1, 4]  # "red" in both texts


def test_text_encoder_with_word_buckets_keeps_the_masking_invariants():
    enc = TextEncoder(d_model=32, n_layers=1, n_heads=2, max_len=64, word_buckets=64).eval()
    clean, junk = make_inputs("text"), make_inputs("text", junk=True)
    with torch.no_grad():
        a, b = enc(*clean), enc(*junk)
        alone = enc(clean[0][1:2, :5], clean[1][1:2, :5])
    assert_close(a.tokens, b.tokens, rtol=0, atol=0)  # junk under the mask changes nothing, word hashes included
    assert_close(alone.tokens[0], a.tokens[1][:5])
    plain = TextEncoder(d_model=32, n_layers=1, n_heads=2, max_len=64).eval()
    plain.load_state_dict(enc.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(plain(*clean).tokens[0], a.tokens[0])  # the word embedding is used
    with pytest.raises(ValueError, match="word_buckets"):
        TextEncoder(word_buckets=-1)


def _reference_units(ids: list[int]) -> list[list[int]]:
    """Plain-Python reference for ``word_units``: the positions of each unit (a word of non-separator bytes, one
    punctuation byte, or one non-byte id); whitespace in none."""
    whitespace = set(b" \t\n\r\x0b\x0c")
    punctuation = {ord(c) for c in string.punctuation}
    units, word = [], []
    for pos, i in enumerate(ids):
        if i < 256 and i not in whitespace and i not in punctuation:
            word.append(pos)
            continue
        if word:
            units.append(word)
            word = []
        if i >= 256 or i in punctuation:
            units.append([pos])
    return units + ([word] if word else [])


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows)) + 2
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


def test_word_units_match_a_plain_reference():
    rng = random.Random(1)
    pieces = ["red", "naïve", "日本", "a", " ", "  ", ",", "?", "--", "\t", "12"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 10))) for _ in range(200)]
    tok = ByteTokenizer()
    rows = [tok.encode(t, add_bos=rng.random() < 0.5, add_eos=rng.random() < 0.5) for t in texts]
    ids, mask = _padded(rows, tok.pad_id)
    unit, starts = word_units(ids, mask)
    for i, row in enumerate(rows):
        expected = [-1] * ids.shape[1]
        for k, positions in enumerate(_reference_units(row)):
            for pos in positions:
                expected[pos] = k
        assert unit[i].tolist() == expected, texts[i]
        assert starts[i].nonzero().flatten().tolist() == [p[0] for p in _reference_units(row)]


def test_word_units_text_encoder_inputs_match_a_plain_loop():
    """Each unit's input is the mean of its ids' embeddings + its word's hashed embedding + its position."""
    enc = TextEncoder(d_model=16, n_layers=0, n_heads=2, max_len=32, word_buckets=50, units="word").eval()
    tok = ByteTokenizer()
    texts = ["is there a red shape?", "what  color, is it", "x"]
    rows = [tok.encode(t) for t in texts]
    ids, mask = _padded(rows, tok.pad_id)
    buckets = word_bucket_ids(ids, mask, 50)
    with torch.no_grad():
        got, got_mask = enc._word_inputs(ids, mask)
        for i, row in enumerate(rows):
            units = _reference_units(row)
            assert got_mask[i].tolist() == [k < len(units) for k in range(got.shape[1])]
            for k, positions in enumerate(units):
                want = enc.embed(ids[i, positions]).mean(0) + enc.word_embed(buckets[i, positions[0]]) + enc.pos[k]
                assert_close(got[i, k], want)
    assert got.shape[1] == 6  # "is there a red shape ?"


def test_word_unit_text_encoder_keeps_the_masking_invariants():
    enc = TextEncoder(d_model=32, n_layers=1, n_heads=2, max_len=64, word_buckets=64, units="word").eval()
    tok = ByteTokenizer()
    rows = [tok.encode(t) for t in ["is there a red shape?", "what color is the circle", "no", "   "]]
    ids, mask = _padded(rows, tok.pad_id)
    junk = torch.where(mask, ids, torch.randint(0, 262, ids.shape, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        a, b = enc(ids, mask), enc(junk, mask)
        alone = enc(ids[1:2, : len(rows[1])], mask[1:2, : len(rows[1])])
    assert_close(a.tokens, b.tokens, rtol=0, atol=0)
    assert a.mask.sum(1).tolist() == [6, 5, 1, 0]  # the whitespace-only text has no token
    assert not a.tokens[~a.mask].any()
    assert_close(alone.tokens[0], a.tokens[1, :5])
    with pytest.warns(UserWarning, match="cut to max_len=3"):
        short = TextEncoder(d_model=32, n_layers=1, n_heads=2, max_len=3, units="word")(ids, mask)
    assert short.tokens.shape[1] == 3
    # A batch with no word at all gives no token (and no error); a text longer in bytes than max_len is read whole
    # when its words fit (the word hashes then need more powers than the buffer holds).
    with torch.no_grad():
        empty = enc(*_padded([tok.encode("  "), tok.encode(" ")], tok.pad_id))
        long_ids, long_mask = _padded([tok.encode("a b " * 20)], tok.pad_id)  # 80 bytes, 40 words
        long = enc(long_ids, long_mask)
    assert empty.tokens.shape == (2, 0, 32) and empty.mask.shape == (2, 0)
    assert long_ids.shape[1] > enc.max_len and long.mask.sum() == 40 and long.tokens.isfinite().all()
    with pytest.raises(ValueError, match="units"):
        TextEncoder(units="letters")
