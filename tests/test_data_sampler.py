"""The training sampler: seeded shuffles and target-balanced draws, sharding over ranks, resuming mid-epoch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from omnifuse.data.datamodule import MultimodalDataModule
from omnifuse.data.records import RecordError
from omnifuse.data.sampler import ResumableSampler, balancing_weights


def test_balancing_weights_against_hand_computed_values():
    keys = ["yes"] * 6 + ["no"] * 3 + ["red"]
    w = balancing_weights(keys, 1.0)
    # power 1: each key's records share 1/3 of the mass (3 distinct keys).
    assert w[:6].sum().item() == pytest.approx(1 / 3) and w[6:9].sum().item() == pytest.approx(1 / 3)
    assert w[9].item() == pytest.approx(1 / 3)
    # power 0.5: weight of one record is count ** -0.5, normalised.
    w = balancing_weights(keys, 0.5)
    raw = [6**-0.5] * 6 + [3**-0.5] * 3 + [1.0]
    assert w.tolist() == pytest.approx([r / sum(raw) for r in raw])
    assert balancing_weights(keys, 0.0).tolist() == pytest.approx([0.1] * 10)
    with pytest.raises(ValueError, match="power"):
        balancing_weights(keys, -1.0)


def test_weighted_epochs_follow_the_weights():
    keys = ["a"] * 900 + ["b"] * 90 + ["c"] * 10
    sampler = ResumableSampler(range(1000), seed=3, weights=balancing_weights(keys, 1.0))
    seen = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == 1000
        seen.update(keys[i] for i in indices)
    # 20,000 draws, each key with probability 1/3: binomial sd is about 67, so 5 sd is 333.
    for key in "abc":
        assert abs(seen[key] - 20000 / 3) < 333


def test_weighted_draws_are_seeded_sharded_and_resumable():
    weights = torch.rand(101, generator=torch.Generator().manual_seed(0))
    one = ResumableSampler(range(101), seed=5, weights=weights)
    one.set_epoch(2)
    epoch2 = list(one)
    assert list(one) == epoch2  # the same (seed, epoch) gives the same epoch
    one.set_epoch(3)
    assert list(one) != epoch2

    # Two ranks deal out, in turn, the stream a single process draws for the same (seed, epoch).
    single = ResumableSampler(range(100), seed=5, weights=weights[:100])
    ranks = [ResumableSampler(range(100), num_replicas=2, rank=r, seed=5, weights=weights[:100]) for r in (0, 1)]
    for s in (single, *ranks):
        s.set_epoch(2)
    stream, r0, r1 = list(single), list(ranks[0]), list(ranks[1])
    assert len(r0) == len(r1) == 50
    assert r0 == stream[0::2] and r1 == stream[1::2]

    # Resuming skips exactly what this rank already consumed.
    ranks[1].start_at(2, 20)
    assert list(ranks[1]) == r1[20:]
    assert list(ranks[1]) == r1  # only the next iteration skips


def test_zero_weight_records_are_never_drawn():
    weights = torch.zeros(1000)
    weights[[3, 500, 999]] = torch.tensor([1.0, 2.0, 1.0])
    sampler = ResumableSampler(range(1000), seed=0, weights=weights)
    drawn = Counter()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        drawn.update(sampler)
    assert set(drawn) == {3, 500, 999}
    assert abs(drawn[500] - 2000) < 5 * (4000 * 0.25) ** 0.5  # p = 1/2 over 4,000 draws


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="one entry per record"):
        ResumableSampler(range(4), weights=torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        ResumableSampler(range(4), weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="not all zero"):
        ResumableSampler(range(4), weights=torch.zeros(4))


def test_datamodule_balances_targets(tmp_path: Path):
    folder = tmp_path / "m"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(folder / "img.png")
    targets = ["yes"] * 40 + ["no"] * 40 + ["circle"] * 4
    kinds = {"yes": "yes/no", "no": "yes/no", "circle": "shape"}
    lines = [
        json.dumps(
            {"id": f"q{i}", "task": "vqa", "image": "img.png", "text": "q?", "target": t, "meta": {"kind": kinds[t]}}
        )
        for i, t in enumerate(targets)
    ]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    by_id = {f"q{i}": t for i, t in enumerate(targets)}

    def drawn(**balance) -> Counter:
        dm = MultimodalDataModule(train_manifest=str(folder / "train.jsonl"), batch_size=12, image_size=8, **balance)
        dm.setup("fit")
        counts = Counter()
        for epoch in range(25):
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)
            counts.update(by_id[i] for b in loader for i in b.ids)
        return counts

    plain = drawn()
    assert plain == Counter({"yes": 1000, "no": 1000, "circle": 100})  # a shuffle: every record once per epoch
    assert drawn(balance_by="target", balance_power=0.0) == plain  # power 0: each record once per epoch
    # 2,100 draws of 1/3 each: sd about 22.
    by_target = drawn(balance_by="target")
    assert all(abs(by_target[k] - 700) < 110 for k in ("yes", "no", "circle"))
    # By meta.kind: yes/no and shape half each, yes and no sharing their half.
    by_kind = drawn(balance_by="meta.kind")
    assert abs(by_kind["circle"] - 1050) < 120 and abs(by_kind["yes"] + by_kind["no"] - 1050) < 120

    with pytest.raises(ValueError, match="balance_power"):
        MultimodalDataModule(train_manifest="x.jsonl", balance_by="target", balance_power=-0.5)
    with pytest.raises(ValueError, match="balance_by"):
        MultimodalDataModule(train_manifest="x.jsonl", balance_by="answers")
    dm = MultimodalDataModule(train_manifest=str(folder / "train.jsonl"), image_size=8, balance_by="meta.view")
    dm.setup("fit")
    with pytest.raises(RecordError, match=r"record 'q0': field 'meta.view': missing"):
        dm.train_dataloader()


@pytest.mark.parametrize(("n", "replicas"), [(100, 1), (101, 2), (7, 3), (2, 5)])
def test_plain_order_is_distributed_samplers(n: int, replicas: int):
    # Reference: torch's own DistributedSampler (seeded shuffle, padded by repetition to a multiple of the ranks).
    for rank in range(replicas):
        ours = ResumableSampler(range(n), num_replicas=replicas, rank=rank, seed=3)
        theirs = DistributedSampler(range(n), num_replicas=replicas, rank=rank, seed=3)
        for epoch in (0, 4):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)


def test_grouping_reorders_an_epoch_into_runs_of_one_key():
    images = [f"img{i // 4}" for i in range(40)]  # 10 images, 4 records each
    plain = ResumableSampler(range(40), seed=1)
    grouped = ResumableSampler(range(40), seed=1, groups=images, group_size=4)
    for s in (plain, grouped):
        s.set_epoch(2)
    order = list(grouped)
    assert sorted(order) == sorted(plain) == list(range(40))  # the same records, once each
    assert order != list(plain)
    # Every image's 4 records form one run, so the epoch is 10 aligned blocks of one image each.
    blocks = [{images[i] for i in order[j : j + 4]} for j in range(0, 40, 4)]
    assert all(len(b) == 1 for b in blocks) and len(set().union(*blocks)) == 10
    # group_size 1 (or no groups) is the plain order.
    off = ResumableSampler(range(40), seed=1, groups=images, group_size=1)
    off.set_epoch(2)
    assert list(off) == list(plain)

    # Two ranks: runs of 2 * 2 records dealt in turn, so each rank sees pairs of one image, aligned.
    ranks = [ResumableSampler(range(40), num_replicas=2, rank=r, seed=1, groups=images, group_size=2) for r in (0, 1)]
    streams = []
    for s in ranks:
        s.set_epoch(2)
        streams.append(list(s))
    assert sorted(streams[0] + streams[1]) == list(range(40))
    for stream in streams:
        assert all(images[stream[j]] == images[stream[j + 1]] for j in range(0, 20, 2))


def test_grouped_weighted_draws_keep_the_drawn_multiset_and_resume():
    weights = torch.rand(60, generator=torch.Generator().manual_seed(0))
    keys = [f"img{i % 7}" if i % 5 else None for i in range(60)]  # every 5th record has no key: a group of its own
    plain = ResumableSampler(range(60), seed=4, weights=weights)
    grouped = ResumableSampler(range(60), seed=4, weights=weights, groups=keys, group_size=3)
    for s in (plain, grouped):
        s.set_epoch(1)
    order = list(grouped)
    assert Counter(order) == Counter(plain)
    # Runs: splitting the order wherever the key changes, no run of a key is longer than 3 unless two of its runs
    # happen to meet, so count maximal runs per key against the fewest the grouping allows, ceil(count / 3).
    per_key = Counter(keys[i] for i in order if keys[i] is not None)
    segments = Counter(keys[order[j]] for j in range(len(order)) if j == 0 or keys[order[j]] != keys[order[j - 1]])
    for key, count in per_key.items():
        assert segments[key] <= -(-count // 3)  # merges only: never more segments than runs
    grouped.start_at(1, 25)
    assert list(grouped) == order[25:]
    with pytest.raises(ValueError, match="one key per record"):
        ResumableSampler(range(60), groups=keys[:5], group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        ResumableSampler(range(60), groups=keys, group_size=0)


def test_datamodule_groups_records_by_image(tmp_path: Path):
    from PIL import Image

    lines = []
    for i in range(8):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(tmp_path / f"img{i}.png")
        lines += [
            json.dumps({"id": f"i{i}q{j}", "task": "vqa", "image": f"img{i}.png", "text": "q?", "target": "a"})
            for j in range(6)
        ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")

    def images_per_batch(**grouping) -> list[int]:
        dm = MultimodalDataModule(train_manifest=str(tmp_path / "train.jsonl"), batch_size=6, image_size=8, **grouping)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        ids = [i for b in loader for i in b.ids]
        assert sorted(ids) == sorted(json.loads(line)["id"] for line in lines)  # every record once per epoch
        return [len({i.split("q")[0] for i in ids[k : k + 6]}) for k in range(0, len(ids), 6)]

    # Each image's 6 records are 2 runs of 3, so a batch of 6 holds exactly 2 runs: at most 2 images.
    assert max(images_per_batch(group_by="image", group_size=3)) <= 2
    assert max(images_per_batch()) > 2
    # shuffle=False keeps the runs in the order their images first appear (both runs of image 0, then of image 1...).
    fixed = ResumableSampler(range(48), shuffle=False, groups=[f"i{k % 8}" for k in range(48)], group_size=3)
    assert list(fixed)[:9] == [0, 8, 16, 24, 32, 40, 1, 9, 17]
    with pytest.raises(ValueError, match="group_by"):
        MultimodalDataModule(train_manifest="x.jsonl", group_by="audio")  # only images are encoded once
    dm = MultimodalDataModule(train_manifest=str(tmp_path / "train.jsonl"), image_size=8, group_by="meta.view")
    dm.setup("fit")
    with pytest.raises(RecordError, match=r"record 'i0q0': field 'meta.view': missing; group_by needs it"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="group_size"):
        MultimodalDataModule(train_manifest="x.jsonl", group_by="image", group_size=0)


def test_domain_weights_against_hand_computed_values():
    from omnifuse.data.sampler import domain_weights

    origin = [0, 0, 0, 1, 2, 2]
    w = domain_weights(origin, [0.2, 0.3, 0.5])
    assert w.tolist() == pytest.approx([0.2 / 3] * 3 + [0.3] + [0.25, 0.25])
    # balanced within each source: source 0 has keys a, a, b -> a and b share its 0.2 equally
    w = domain_weights(origin, [2, 3, 5], keys=["a", "a", "b", "x", "y", "y"])
    assert w.tolist() == pytest.approx([0.05, 0.05, 0.1, 0.3, 0.25, 0.25])
    with pytest.raises(ValueError, match="no training record"):
        domain_weights([0, 0], [0.5, 0.5])


def test_datamodule_draws_train_manifests_by_their_weights(tmp_path: Path):
    """Three train manifests of very different sizes drawn 0.2 / 0.3 / 0.5 (counted from the loader's batches). The
    draws go through the same weighted ResumableSampler as balance_by, whose sharding and resuming are tested above."""
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "img.png")
    sizes = {"a": 200, "b": 20, "c": 5}
    paths = []
    for name, n in sizes.items():
        lines = [
            json.dumps({"id": f"{name}{i}", "task": "vqa", "image": "img.png", "text": "q?", "target": "yes"})
            for i in range(n)
        ]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        paths.append(str(tmp_path / f"{name}.jsonl"))
    dm = MultimodalDataModule(train_manifest=paths, batch_size=25, image_size=8, manifest_weights=[0.2, 0.3, 0.5])
    dm.setup("fit")
    counts = Counter()
    for epoch in range(20):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        counts.update(i[0] for b in loader for i in b.ids)
    total = sum(counts.values())
    assert total == 20 * 225  # an epoch is len(train) draws
    # 4,500 draws: sd of a share <= 0.0075; 4 sd
    for name, share in zip("abc", (0.2, 0.3, 0.5), strict=True):
        assert abs(counts[name] / total - share) < 0.03, (name, counts)
    with pytest.raises(ValueError, match="one weight per train manifest"):
        MultimodalDataModule(train_manifest=paths, manifest_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="positive sum"):
        MultimodalDataModule(train_manifest=paths, manifest_weights=[0, 0, 0])
