"""OmniModel internals: each distinct image of a batch is encoded once."""

from __future__ import annotations

import torch

from omnifuse.encoders import TimmImageEncoder
from omnifuse.tasks.model import encode_distinct_images


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder and records the batch sizes it is called with."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[int] = []

    def forward(self, images: torch.Tensor):
        self.calls.append(images.shape[0])
        return self.inner(images)


def _images_with_duplicates() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.rand(3, 3, 32, 32, generator=g)
    return torch.stack([a, b, a, c, b, a, torch.zeros_like(a), torch.zeros_like(a)])  # 4 distinct images in 8 rows


def test_distinct_images_are_encoded_once_with_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    encoder = CountingEncoder(TimmImageEncoder("resnet10t", feature_level=-3)).eval()  # eval: BatchNorm per sample
    images = _images_with_duplicates()
    weight = torch.randn(8, 16, encoder.inner.out_dim)

    def loss_and_grads(fn):
        encoder.zero_grad()
        sequence = fn()
        (sequence.tokens * weight).sum().backward()
        return sequence, [p.grad.clone() for p in encoder.parameters()]

    reference, reference_grads = loss_and_grads(lambda: encoder(images))  # the plain call on all 8 rows
    dedup, dedup_grads = loss_and_grads(lambda: encode_distinct_images(encoder, images))
    assert encoder.calls == [8, 4]
    torch.testing.assert_close(dedup.tokens, reference.tokens, rtol=1e-5, atol=1e-5)
    assert torch.equal(dedup.mask, reference.mask)
    for got, want in zip(dedup_grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # copies' gradients add up in one encoding


def test_a_batch_without_duplicates_is_passed_through_unchanged():
    encoder = CountingEncoder(TimmImageEncoder("resnet10t", feature_level=-3)).train()
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    out = encode_distinct_images(encoder, images)
    torch.manual_seed(2)
    encoder.train()
    reference = encoder(images)
    assert encoder.calls == [5, 5]
    assert torch.equal(out.tokens, reference.tokens)  # same rows, same order: even training-mode BatchNorm agrees


def test_images_that_differ_only_past_their_first_values_are_not_merged():
    encoder = CountingEncoder(TimmImageEncoder("resnet10t", feature_level=-3)).eval()
    a = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3))
    b = a.clone()
    b[2, 31, 31] += 0.5  # the very last value differs
    images = torch.stack([a, b, a])
    out = encode_distinct_images(encoder, images)
    assert encoder.calls == [2]  # a and b both encoded, the second a reused
    reference = encoder(images)
    torch.testing.assert_close(out.tokens, reference.tokens, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.tokens[0], out.tokens[1])
