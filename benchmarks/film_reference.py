"""The plain FiLM network of issue 29 (Perez et al. 2018, sized for easy-VQA), as a yardstick for the main recipe.

    python benchmarks/film_reference.py --seeds 0 3 [--steps 1500] [--text gru|transformer] [--head linear|mlp]
        [--threads 1] [--val 1024]

Question: word embeddings -> a GRU (last state) or a 2-layer transformer (attention-pooled, 4 heads); image: 64x64 ->
two stride-2 3x3 convolutions -> three residual blocks of 32 channels, each ``x + ReLU(FiLM(BN(conv3x3(ReLU(
conv1x1(x))))))`` with a per-channel scale and shift from the question; global max pool; MLP classifier over the
answers. Adam 1e-3, batch 64, learning rate decayed by a cosine to 0 over ``--steps``. ``--head linear``: the FiLM
parameters are a linear map of the question summary, ``scale = gamma`` from a default initialisation (the paper's);
``--head mlp``: LayerNorm, two GELU hidden layers and a zero-initialised last layer, ``scale = 1 + gamma`` (what the
omnifuse generator did before ``vision_film_depth``). This is not omnifuse (no decoder, a classifier over the 13
answers): it shows how fast the binding of yes/no questions to the image can be on this data, so the recipe's
design can be judged against it. Prints validation accuracy (first ``--val`` validation questions, never test) every
250 steps per seed, and the first step at which validation yes/no reached 99 %.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

DATA = Path("datasets/easyvqa")  # `omnifuse fit --config configs/easyvqa.yaml` prepares it on first use


def words(text: str) -> list[str]:
    return text.replace("?", " ?").split()


class Data:
    """Manifest records as tensors: images (N, 3, 64, 64) in [0, 1], word ids (N, L), lengths, answer ids."""

    def __init__(self, records: list[dict], vocab: dict[str, int], answers: dict[str, int], images: dict) -> None:
        def image(path: str) -> torch.Tensor:
            if path not in images:
                with Image.open(DATA / path) as im:
                    array = np.array(im.convert("RGB").resize((64, 64)))
                images[path] = torch.from_numpy(array).permute(2, 0, 1).float() / 255
            return images[path]

        width = max(len(words(r["text"])) for r in records)
        self.q = torch.zeros(len(records), width, dtype=torch.long)
        for i, r in enumerate(records):
            ids = [vocab[w] for w in words(r["text"])]
            self.q[i, : len(ids)] = torch.tensor(ids)
        self.lengths = (self.q > 0).sum(1)
        self.x = torch.stack([image(r["image"]) for r in records])
        self.y = torch.tensor([answers[r["target"]] for r in records])
        self.kinds = [r["meta"]["answer_type"] for r in records]


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c, affine=False)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv2(F.relu(self.conv1(x))))
        return x + F.relu(h * scale[:, :, None, None] + shift[:, :, None, None])


class FilmNet(nn.Module):
    def __init__(
        self, vocab: int, answers: int, text: str, head: str, c: int = 32, d: int = 128, pooled_norm: bool = False
    ) -> None:
        super().__init__()
        self.text, self.head, self.c = text, head, c
        self.embed = nn.Embedding(vocab, d // 2 if text == "gru" else d, padding_idx=0)
        if text == "gru":
            self.gru = nn.GRU(d // 2, d, batch_first=True)
        else:
            self.pos = nn.Parameter(torch.randn(64, d) * 0.02)
            layer = nn.TransformerEncoderLayer(d, 4, 4 * d, 0.0, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.scores = nn.Linear(d, 4)
            self.summary = nn.Linear(4 * d, d)
        out = 2 * 3 * c
        if head == "linear":
            self.film = nn.Linear(d, out)
        else:
            self.film = nn.Sequential(
                nn.LayerNorm(d),
                nn.Linear(d, 2 * d),
                nn.GELU(),
                nn.Linear(2 * d, 2 * d),
                nn.GELU(),
                nn.Linear(2 * d, out),
            )
            nn.init.zeros_(self.film[-1].weight)
            nn.init.zeros_(self.film[-1].bias)
        conv = [nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        self.stem = nn.Sequential(*conv, nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.ModuleList([Block(c) for _ in range(3)])
        # pooled_norm: LayerNorm over the pooled feature's channels first, as omnifuse's fusion does to every token.
        self.classifier = nn.Sequential(
            nn.LayerNorm(c) if pooled_norm else nn.Identity(), nn.Linear(c, d), nn.ReLU(), nn.Linear(d, answers)
        )

    def question(self, q: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.text == "gru":
            out, _ = self.gru(self.embed(q))
            return out[torch.arange(len(q)), lengths - 1]
        valid = q > 0
        h = self.norm(self.encoder(self.embed(q) + self.pos[: q.shape[1]], src_key_padding_mask=~valid))
        w = self.scores(h).masked_fill(~valid[..., None], float("-inf")).softmax(1)  # (B, L, 4)
        return self.summary(torch.einsum("blq,bld->bqd", w, h).flatten(1))

    def forward(self, x: torch.Tensor, q: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        film = self.film(self.question(q, lengths)).view(len(q), 3, 2, self.c)
        scale = film[:, :, 0] if self.head == "linear" else 1 + film[:, :, 0]
        x = self.stem(x * 2 - 1)
        for i, block in enumerate(self.blocks):
            x = block(x, scale[:, i], film[:, i, 1])
        return self.classifier(x.amax(dim=(2, 3)))


def run(seed: int, args: argparse.Namespace, train: Data, val: Data, vocab: int, answers: int) -> int | None:
    torch.manual_seed(seed)
    net = FilmNet(vocab, answers, args.text, args.head, pooled_norm=args.pooled_norm)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    g = torch.Generator().manual_seed(seed)
    order, pos, bind, start = torch.randperm(len(train.y), generator=g), 0, None, time.perf_counter()
    for step in range(1, args.steps + 1):
        if pos + 64 > len(order):
            order, pos = torch.randperm(len(train.y), generator=g), 0
        idx = order[pos : pos + 64]
        pos += 64
        net.train()
        loss = F.cross_entropy(net(train.x[idx], train.q[idx], train.lengths[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps:
            net.eval()
            with torch.no_grad():
                right = (net(val.x, val.q, val.lengths).argmax(1) == val.y).tolist()
            yes_no = [r for r, k in zip(right, val.kinds) if k == "yes/no"]
            acc, yn = 100 * sum(right) / len(right), 100 * sum(yes_no) / max(len(yes_no), 1)
            if bind is None and yn >= 99.0:
                bind = step
            print(
                f"seed {seed} step {step:>5}: val {acc:6.2f} %  yes/no {yn:6.2f} %  ({time.perf_counter() - start:.0f} s)"
            )
    return bind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--text", choices=("gru", "transformer"), default="gru")
    parser.add_argument("--head", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--pooled-norm", action="store_true", help="LayerNorm the pooled feature before the classifier")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val", type=int, default=1024, help="validation questions scored (the first N)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_records = [json.loads(line) for line in (DATA / "vqa_train.jsonl").open()]
    val_records = [json.loads(line) for line in (DATA / "vqa_val.jsonl").open()][: args.val]
    vocab = {w: i + 1 for i, w in enumerate(sorted({w for r in train_records + val_records for w in words(r["text"])}))}
    answers = {a: i for i, a in enumerate(sorted({r["target"] for r in train_records}))}
    images: dict = {}
    train, val = Data(train_records, vocab, answers, images), Data(val_records, vocab, answers, images)
    binds = {seed: run(seed, args, train, val, len(vocab) + 1, len(answers)) for seed in args.seeds}
    print(
        f"text={args.text} head={args.head}: validation yes/no >= 99 % at step "
        + ", ".join(f"seed {s}: {b if b is not None else 'never'}" for s, b in binds.items())
    )


if __name__ == "__main__":
    main()
