"""``MultimodalDataModule``: manifests -> DataLoaders of ``MultimodalBatch`` for Lightning (and LightningCLI)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader

from omnifuse.data.augment import AugmentConfig
from omnifuse.data.collate import Collator
from omnifuse.data.curriculum import CurriculumConfig, difficulties, easiest_first, pool
from omnifuse.data.dataset import ManifestDataset
from omnifuse.data.records import INPUT_FIELDS, Record, RecordError
from omnifuse.data.sampler import ResumableSampler, balancing_weights, domain_weights
from omnifuse.data.tokenizer import ByteTokenizer

_LIGHTNING_MID_EPOCH_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"

PREPARERS: tuple[str, ...] = ("easyvqa",)
# Written into the run folder when ``skip_bad_records`` leaves records out.
SKIPPED_FILE = "skipped_records.jsonl"


def record_field_key(record: Record, field: str, option: str) -> str:
    """The value of ``field`` (``target``, ``task``, ``image`` or ``meta.<key>``) of ``record`` as a hashable key; a
    ``meta`` key the record lacks is a ``RecordError`` naming the record, the field and ``option`` that needs it."""
    if field in ("target", "task", "image"):
        value = getattr(record, field)
        value = str(value) if field == "image" and value is not None else value
    else:
        key = field.removeprefix("meta.")
        if key not in (record.meta or {}):
            raise RecordError(record.id, field, f"missing; {option} needs it on every training record")
        value = record.meta[key]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _check_field_option(option: str, value: str | None, fields: tuple[str, ...]) -> None:
    """``value`` must be None, one of ``fields`` or ``meta.<key>``."""
    if value is not None and value not in fields and not value.startswith("meta."):
        names = ", ".join(repr(f) for f in fields)
        raise ValueError(f"{option} must be {names} or 'meta.<key>', got {value!r}")


def _union_of_manifests(
    paths: list[str], skip_bad: bool = False
) -> tuple[list[Record], list[RecordError], dict[str, int]]:
    """The records of several training/evaluation manifests, in order, (with ``skip_bad``) the invalid ones left
    out, and the index in ``paths`` of the manifest each record id came from. Each manifest is checked on its own first (a bad record raises ``RecordError`` naming it and its manifest);
    an id found in two manifests is an error too (or, with ``skip_bad``, its later copy is left out)."""
    records: list[Record] = []
    skipped: list[RecordError] = []
    first_in: dict[str, str] = {}
    for path in paths:
        try:
            checked = ManifestDataset(path, mode="fit", skip_bad=skip_bad)
        except RecordError as e:  # say which of the listed manifests holds the bad record (once)
            where = "" if repr(str(path)) in e.reason else f" (in {path!r})"
            raise RecordError(e.record_id, e.field, e.reason + where) from None
        skipped += [RecordError(e.record_id, e.field, f"{e.reason} (in {path!r})") for e in checked.skipped]
        for record in checked.records:
            if record.id in first_in:
                error = RecordError(record.id, "id", f"duplicate id: in {first_in[record.id]!r} and in {path!r}")
                if not skip_bad:
                    raise error
                skipped.append(error)
                continue
            first_in[record.id] = path
            records.append(record)
    index = {path: i for i, path in reversed(list(enumerate(paths)))}
    return records, skipped, {rid: index[path] for rid, path in first_in.items()}


class MultimodalDataModule(L.LightningDataModule):
    """Train / val / test / predict manifests (JSONL) loaded by ``ManifestDataset`` and collated by ``Collator``.

    Train, val and test data are strict (a bad record raises ``RecordError`` naming it); predict data is forgiving
    (bad records reach the prediction writer through ``batch.failed``).

    Args:
        train_manifest: JSONL manifest for training (None: no training data), or a list of manifests trained on as one
            (records in the order listed; an id may appear in only one of them). A list mixes datasets without writing
            a new file, e.g. the mixed views plus the spoken questions (``configs/finetune_vqa_to_mixed.yaml``).
        val_manifest: JSONL manifest for validation (or a list, as for training).
        test_manifest: JSONL manifest for testing (or a list, as for training).
        predict_manifest: JSONL manifest for batch inference (targets optional).
        batch_size: training batch size.
        eval_batch_size: batch size for val / test / predict (default: ``batch_size``).
        num_workers: DataLoader worker processes (0 loads in the main process).
        image_size: images are resized to ``image_size x image_size`` (bilinear).
        sample_rate: audio is resampled to this rate in Hz.
        max_audio_seconds: audio is cut to this many seconds.
        max_text_len: text (question / prompt) is cut to this many tokens.
        max_target_len: target sequences (task token + bytes + eos) are cut to this many tokens.
        prepare: name of a dataset builder (``"easyvqa"``) run by ``prepare_data`` when a manifest file is missing.
        prepare_dir: output folder of that builder.
        prepare_parts: parts to build (easy-VQA: ``vqa``, ``spoken``, ``caption``, ``json``); default: the parts whose
            manifests are missing, told from their file names (``caption_train.jsonl`` -> ``caption``).
        prepare_limit_images: build from only the first N images of each official split (quick runs and tests).
        limit_train: use a deterministic random subset of this many training records.
        limit_val: the same for validation.
        limit_test: the same for test.
        seed: seed of those subsets and of the training shuffle.
        balance_by: a record field (``target``, ``task`` or ``meta.<key>``) whose values are balanced in training:
            records are drawn with probability proportional to ``count(value) ** -balance_power`` (with replacement,
            ``len(train)`` draws per epoch). None is a plain shuffle. A record without the field is an error.
        balance_power: 1 makes every distinct value equally frequent, 0 keeps the plain shuffle, values between
            soften the imbalance. easy-VQA is 74 % yes/no questions; ``balance_by: meta.answer_type`` gives yes/no,
            colour and shape questions a third each, and that is what lets the model learn shapes (see README).
        manifest_weights: with a list of train manifests, the share of training draws each one gets (e.g.
            ``[0.3, 0.7]``; normalised): records are drawn with replacement, a manifest's weight spread evenly over its
            records (or, with ``balance_by``, balanced within it), seeded, sharded over DDP ranks and resumable like
            ``balance_by``. None: the manifests are one pool, each record as likely as any other.
        augment: label-safe training augmentation (``data.augment: {brightness: 0.2, contrast: 0.2, translate: 4,
            translate_tasks: [vqa]}``; text noise, which is not label-safe, only with ``text_noise_tasks``;
            :mod:`omnifuse.data.augment` says what each may change and where it is allowed); the training split only.
            A jittered image is a new image each time, so ``group_by: image`` finds no duplicates to encode once.
            None: off.
        group_by: ``image`` or ``meta.<key>``: training batches hold runs of about ``group_size`` records
            that share this field (see ``ResumableSampler``); the model encodes an image shared within a batch once,
            so with ~10 questions per image ``group_by: image`` cuts the image tower's share of a step by up to
            ``group_size``x. An epoch still uses the same records; only which ones share a batch changes. None: off.
        group_size: records per run (``1`` turns grouping off).
        curriculum: train on the easiest records first (``data.curriculum: {score: text_length, start: 0.25, epochs:
            2}``; the score may also be ``target_length``, ``meta.<key>`` or ``file:<path>`` of per-record losses from
            a reference model): epoch ``e`` draws from the easiest fraction ``c(e)`` of the records, growing to all
            of them by epoch ``epochs`` (:mod:`omnifuse.data.curriculum`). None: off.
        skip_bad_records: what a bad train / val / test record does. Every record is validated, and every image and
            audio file decoded once, in ``setup`` (before the first step), so a bad one never stops training
            mid-epoch. False (default): the first one raises ``RecordError`` naming the record, the field and the
            reason (with how many more there are). True: they are left out, listed on the console and in
            ``<default_root_dir>/skipped_records.jsonl`` (``{"split", "id", "error"}`` per record).
    """

    def __init__(
        self,
        train_manifest: str | list[str] | None = None,
        val_manifest: str | list[str] | None = None,
        test_manifest: str | list[str] | None = None,
        predict_manifest: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 64,
        sample_rate: int = 16000,
        max_audio_seconds: float = 8.0,
        max_text_len: int = 256,
        max_target_len: int = 512,
        prepare: str | None = None,
        prepare_dir: str = "datasets/easyvqa",
        prepare_parts: list[str] | None = None,
        prepare_limit_images: int | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        seed: int = 0,
        balance_by: str | None = None,
        balance_power: float = 1.0,
        manifest_weights: list[float] | None = None,
        augment: AugmentConfig | None = None,
        group_by: str | None = None,
        group_size: int = 4,
        curriculum: CurriculumConfig | None = None,
        skip_bad_records: bool = False,
    ) -> None:
        super().__init__()
        if prepare is not None and prepare not in PREPARERS:
            raise ValueError(f"unknown dataset builder {prepare!r}; known builders: {', '.join(PREPARERS)}")
        self.save_hyperparameters()
        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.test_manifest = test_manifest
        self.predict_manifest = predict_manifest
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.sample_rate = sample_rate
        self.max_audio_seconds = max_audio_seconds
        self.prepare = prepare
        self.prepare_dir = prepare_dir
        self.prepare_parts = prepare_parts
        self.prepare_limit_images = prepare_limit_images
        self.limits = {"train": limit_train, "val": limit_val, "test": limit_test}
        self.seed = seed
        _check_field_option("balance_by", balance_by, ("target", "task"))
        if balance_power < 0:
            raise ValueError(f"balance_power must be >= 0, got {balance_power}")
        self.balance_by = balance_by
        self.balance_power = balance_power
        if manifest_weights is not None:
            n = len(train_manifest) if isinstance(train_manifest, (list, tuple)) else 1
            if len(manifest_weights) != n or n < 2:
                raise ValueError(
                    f"manifest_weights needs one weight per train manifest (a list of at least 2); got "
                    f"{len(manifest_weights)} weights for {n} manifest(s)"
                )
            if any(w < 0 for w in manifest_weights) or sum(manifest_weights) <= 0:
                raise ValueError(f"manifest_weights must be >= 0 with a positive sum, got {manifest_weights}")
        self.manifest_weights = manifest_weights
        self.augment = AugmentConfig(**augment) if isinstance(augment, dict) else augment
        self._train_origin: dict[str, int] = {}
        _check_field_option("group_by", group_by, ("image",))
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_by = group_by
        self.group_size = group_size
        self.curriculum = CurriculumConfig(**curriculum) if isinstance(curriculum, dict) else curriculum
        self.skip_bad_records = skip_bad_records
        # Records left out per split (skip_bad_records), as reported.
        self.skipped: dict[str, list[RecordError]] = {}
        self.tokenizer = ByteTokenizer()
        self.collator = Collator(self.tokenizer, max_text_len=max_text_len, max_target_len=max_target_len)
        # Ids the prediction writer already wrote in an earlier, interrupted run (set by JsonlPredictionWriter).
        self.skip_predict_ids: set[str] = set()
        # (epoch, batches done) from a checkpoint being resumed (set by load_state_dict, used by train_dataloader).
        self._resume_at: tuple[int, int] | None = None
        self.datasets: dict[str, ManifestDataset] = {}

    # ---------------------------------------------------------------------------------------------------- building

    def _manifests(self) -> list[str]:
        out: list[str] = []
        for m in (self.train_manifest, self.val_manifest, self.test_manifest, self.predict_manifest):
            out.extend([m] if isinstance(m, str) else m or [])
        return out

    def _parts_for(self, missing: list[str]) -> list[str]:
        from omnifuse.data.easyvqa import PARTS

        if self.prepare_parts:
            return list(self.prepare_parts)
        parts = {Path(m).name.split("_", 1)[0] for m in missing}
        return [p for p in PARTS if p in parts] or list(PARTS)

    def prepare_data(self) -> None:
        """Build missing manifests with the configured builder (Lightning calls this on one process per node), and
        rebuild the parts that an older version of the builder wrote (their build info records the version)."""
        if self.prepare is None:
            return
        from omnifuse.data.easyvqa import BUILD_INFO_FILE, BUILD_VERSION, prepare_easyvqa

        missing = [m for m in self._manifests() if not Path(m).is_file()]
        parts = self._parts_for(missing) if missing else []
        # Only a version change triggers a rebuild of existing files: other settings (seed, image limit) may differ on
        # purpose, and files the builder never wrote (no build-info entry) are the user's.
        info_path = Path(self.prepare_dir) / BUILD_INFO_FILE
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        root = Path(self.prepare_dir).resolve()
        stale = []
        for m in self._manifests():
            part = Path(m).name.split("_", 1)[0]
            ours = Path(m).resolve().parent == root and part in info
            if ours and info[part].get("version") != BUILD_VERSION and part not in parts + stale:
                stale.append(part)
        if parts:
            prepare_easyvqa(self.prepare_dir, parts=parts, seed=self.seed, limit_images=self.prepare_limit_images)
        for part in stale:  # rebuilt with the settings it was built with
            built = info[part]
            prepare_easyvqa(self.prepare_dir, parts=[part], seed=built["seed"], limit_images=built["limit_images"])

    def _dataset(self, split: str, manifest: str | list[str] | None) -> ManifestDataset | None:
        if manifest is None:
            return None
        paths = [manifest] if isinstance(manifest, str) else list(manifest)
        if not paths or (split == "predict" and len(paths) > 1):
            raise ValueError(f"{split}_manifest must be one path{'' if split == 'predict' else ' or a non-empty list'}")
        for path in paths:
            if not Path(path).is_file():
                hint = "" if self.prepare else " (set prepare='easyvqa' to build easy-VQA manifests)"
                raise FileNotFoundError(f"{split} manifest not found: {path!r}{hint}")
        skipped: list[RecordError] = []
        if len(paths) == 1:
            source = paths[0]
        else:
            source, skipped, origin = _union_of_manifests(paths, skip_bad=self.skip_bad_records)
            if split == "train":
                self._train_origin = origin  # record id -> which train manifest (manifest_weights)
        dataset = ManifestDataset(
            source,
            mode="predict" if split == "predict" else "fit",
            image_size=self.image_size,
            sample_rate=self.sample_rate,
            max_audio_seconds=self.max_audio_seconds,
            limit=self.limits.get(split),
            seed=self.seed,
            skip_ids=self.skip_predict_ids if split == "predict" else (),
            skip_bad=self.skip_bad_records and split != "predict",
            augment=self.augment if split == "train" else None,
        )
        if split != "predict":
            # Fail (or skip) now, before the first step, rather than when the batch holding a broken file comes up.
            dataset.check_files()
            skipped += dataset.skipped
            if skipped:
                self._report_skipped(split, skipped)
        return dataset

    def _report_skipped(self, split: str, skipped: list[RecordError]) -> None:
        """List the records ``skip_bad_records`` left out: on the console and in ``skipped_records.jsonl``."""
        self.skipped.setdefault(split, []).extend(skipped)
        trainer = self.trainer
        if trainer is not None and not trainer.is_global_zero:
            return
        shown = "\n".join(f"  {e}" for e in skipped[:10]) + (f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        where = ""
        if trainer is not None:
            path = Path(trainer.default_root_dir) / SKIPPED_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                for e in skipped:
                    fh.write(json.dumps({"split": split, "id": e.record_id, "error": e.detail}, ensure_ascii=False) + "\n")
            where = f" (all of them in {path})"
        print(f"omnifuse: skip_bad_records: left out {len(skipped)} bad {split} record(s){where}:\n{shown}", flush=True)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (fit: train + val; validate: val; test: test; predict: predict)."""
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
            None: ("train", "val", "test", "predict"),
        }[stage]
        manifests = {
            "train": self.train_manifest,
            "val": self.val_manifest,
            "test": self.test_manifest,
            "predict": self.predict_manifest,
        }
        for split in wanted:
            # Predict is rebuilt every time: skip_predict_ids may have changed since the last call (resumed jobs).
            if split in self.datasets and split != "predict":
                continue
            dataset = self._dataset(split, manifests[split])
            if dataset is not None:
                self.datasets[split] = dataset
        if stage == "fit" and "train" not in self.datasets:
            raise ValueError("fit needs a train_manifest")

    def check_inputs(self, readable: Iterable[str]) -> None:
        """Train / val / test records must have an input among ``readable`` (the modalities the model has encoders
        for; the task calls this in its ``setup``): a record with none would be learned or scored from no input at
        all. Such a record raises ``RecordError``, or is left out and reported with ``skip_bad_records``."""
        readable = set(readable)
        for split, dataset in self.datasets.items():
            if split == "predict":
                continue
            errors = []
            for record in dataset.records:
                has = [m for m in INPUT_FIELDS if getattr(record, m) is not None]
                if not readable.intersection(has):
                    reason = (
                        f"the model has no encoder for {' or '.join(has)}, and the record has no other input (the "
                        f"model reads {', '.join(m for m in INPUT_FIELDS if m in readable)})"
                    )
                    errors.append(RecordError(record.id, has[0], reason))
            dataset.refuse(errors, "unreadable")
            if errors:
                self._report_skipped(split, errors)

    # -------------------------------------------------------------------------------------------------- loaders

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"no {split} data: set {split}_manifest (and call setup)")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=self._train_sampler(self.datasets[split]) if shuffle else None,
            # Worker seeds come from this generator, not the global RNG, so starting a loader (e.g. after a resume)
            # does not shift the draws of dropout and modality dropout.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=self.collator,
            persistent_workers=self.num_workers > 0,
        )

    def _train_sampler(self, dataset: ManifestDataset) -> ResumableSampler:
        # Seeded by (seed, epoch), sharded over the ranks, started where a resumed checkpoint left off.
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        weights = None
        balancing = self.balance_by is not None and self.balance_power > 0
        if self.manifest_weights is not None:
            weights = domain_weights(
                [self._train_origin[r.id] for r in dataset.records],
                self.manifest_weights,
                [record_field_key(r, self.balance_by, "balance_by") for r in dataset.records] if balancing else None,
                self.balance_power,
            )
        elif balancing:
            # Training datasets hold only valid records (fit mode is strict), so records line up with indices.
            keys = [record_field_key(r, self.balance_by, "balance_by") for r in dataset.records]
            weights = balancing_weights(keys, self.balance_power)
        groups = None
        if self.group_by is not None and self.group_size > 1:
            # A record without an image (group_by: image) is a group of its own.
            groups = [
                None if self.group_by == "image" and r.image is None else record_field_key(r, self.group_by, "group_by")
                for r in dataset.records
            ]
        pools = None
        if self.curriculum is not None:
            easiest, cfg = easiest_first(difficulties(dataset.records, self.curriculum)), self.curriculum

            def pools(epoch: int) -> list[int]:  # the records epoch `epoch` may draw from
                return pool(easiest, cfg.competence(epoch))

        sampler = ResumableSampler(
            dataset, num_replicas=world, rank=rank, seed=self.seed, weights=weights, groups=groups,
            group_size=self.group_size, pools=pools,
        )  # fmt: skip
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            sampler.start_at(epoch, batches * self.batch_size)
            self._resume_at = None
        return sampler

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the data (saved in every checkpoint), so that ``fit --ckpt_path`` after a kill
        mid-epoch continues with the next batch instead of restarting the epoch."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        epoch = trainer.current_epoch
        if done >= trainer.num_training_batches:
            epoch, done = epoch + 1, 0
        return {"train_epoch": int(epoch), "train_batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "train_epoch" in state_dict:
            self._resume_at = (int(state_dict["train_epoch"]), int(state_dict["train_batches_done"]))
            # Lightning warns that a mid-epoch resume is unreliable unless the DataLoader object itself is stateful;
            # here the data module restarts the sampler at the next batch (tests/test_resume.py checks the losses).
            warnings.filterwarnings("ignore", message=_LIGHTNING_MID_EPOCH_WARNING, category=PossibleUserWarning)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # An empty list tells Lightning there is no validation loop.
        return self._loader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        # Rebuilt here too: the prediction writer's setup, which Lightning runs after this module's, may just have
        # named the ids a resumed job already wrote (skip_predict_ids).
        if self.predict_manifest is not None and self.skip_predict_ids:
            self.datasets["predict"] = self._dataset("predict", self.predict_manifest)
        return self._loader("predict")
