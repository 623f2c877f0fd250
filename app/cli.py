"""The ``omnifuse`` command.

``omnifuse fit|validate|test|predict`` is a LightningCLI (tasks, encoders and decoder injected with
``class_path`` / ``init_args``); ``omnifuse prepare ...`` builds datasets; ``omnifuse export`` turns a Lightning
checkpoint into a ``save_pretrained`` folder (config.json + model.safetensors); ``omnifuse score`` scores a predict
output folder against its manifest, overall and per group (``--by meta.voice``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from omnifuse.app import runs, threads
from omnifuse.app.quiet import silence_unactionable_noise
from omnifuse.app.writer import JsonlPredictionWriter
from omnifuse.data.datamodule import MultimodalDataModule
from omnifuse.data.records import RecordError
from omnifuse.finetune.safe_load import (
    CheckpointError,
    UnsafeCheckpointError,
    check_checkpoint,
    scan_checkpoint,
    unpickling_reason,
)

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")


class OmniCLI(LightningCLI):
    """LightningCLI with what the ``omnifuse`` verbs add to Lightning's:

    * every command writes into a run folder of its own under ``trainer.default_root_dir`` (``version_N`` for a fit,
      ``predict_N`` ...; :mod:`omnifuse.app.runs`): loggers and checkpoints without an explicit folder go there, and
      ``--ckpt_path best`` / ``last`` name the newest fit's checkpoints;
    * after ``fit``, the best checkpoint is evaluated on the test split when there is one (``test_results.json``);
    * ``predict`` always writes its results: ``predictions.jsonl`` and ``errors.jsonl`` into ``--output DIR``
      (default: the run folder), unless the config already has a prediction writer.
    """

    def __init__(self, *args, **kwargs) -> None:
        argv = kwargs.get("args")
        self._argv = ["omnifuse", *(sys.argv[1:] if argv is None else argv)]  # for run.json
        super().__init__(*args, **kwargs)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="write into this folder instead of a new <trainer.default_root_dir>/"
            f"{runs.folder_prefix(subcommand)}_N (the one way to reuse a folder)",
        )
        parser.add_argument(
            "--threads",
            type=int | None,
            default=None,
            help="intra-op threads of each process (default: the CPUs this process may use, divided among the DDP "
            "ranks and loader workers on this host; OMNIFUSE_THREADS or OMP_NUM_THREADS if set)",
        )
        if subcommand == "predict":
            parser.add_argument(
                "--output",
                type=str | None,
                default=None,
                help="folder for predictions.jsonl and errors.jsonl (default: the run folder); a job restarted on "
                "the same folder skips the ids already written",
            )
        return parser

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand is not None else self.config
        trainer = config.trainer
        root = Path(trainer.default_root_dir or ".")
        if self.subcommand is None:
            # cli_main(run=False) builds the objects and runs nothing: no run folder is made; "{run_dir}" stands for
            # the root, where Lightning's own versioned layout (csv/version_N/...) keeps runs apart, if used at all.
            self.run_dir = None
            _fill_folders(trainer, root, checkpoints=None)
            return
        try:
            if self.subcommand != "fit":
                config.ckpt_path = runs.resolve_checkpoint(config.get("ckpt_path"), root)
            self.run_dir = runs.choose_run_dir(self.subcommand, root, config.get("run_dir"), config.get("ckpt_path"))
        except runs.RunFolderError as error:
            raise SystemExit(f"omnifuse {self.subcommand}: {error}") from None
        trainer.default_root_dir = str(self.run_dir)
        _fill_folders(trainer, self.run_dir, checkpoints=self.run_dir / "checkpoints")
        if runs.inherited_run_dir() is None:  # the launching process, not a DDP worker
            if self.subcommand == "fit":
                runs.mark_latest(root, self.run_dir)
            runs.write_run_record(self.run_dir, self.subcommand, self._argv)
            print(f"omnifuse {self.subcommand}: run folder {self.run_dir}", flush=True)

    def parse_arguments(self, parser, args) -> None:
        if args is None:
            return super().parse_arguments(parser, args)
        # cli_main(args) is this package's documented Python entry point: Lightning's warning that the process also
        # has command-line arguments (pytest's, a notebook's) tells the caller nothing.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            return super().parse_arguments(parser, args)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        # Lightning leaves weights_only to torch's default, which an environment variable can turn off: a checkpoint
        # is loaded without running code unless the command line says --weights_only false.
        if "weights_only" in self._subcommand_method_arguments[subcommand] and kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True
        return kwargs

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyper-parameters (weights_only=True) before anything else: an unsafe file is
        # refused here, with what it would have imported named (found without unpickling it). So is an unsafe
        # init_from, which would otherwise fail inside jsonargparse's model building, reported as a page of type
        # alternatives, after a run folder was made.
        subcommand = self.config.get("subcommand")
        init_from = self.config.get(f"{subcommand}.model.init_args.init_from") if subcommand else None
        if isinstance(init_from, str) and Path(init_from).suffix == ".ckpt" and Path(init_from).is_file():
            check_checkpoint(init_from)
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None and Path(ckpt_path).is_file():  # not "last"/"best"/"hpc": a file to be read
            scan_checkpoint(ckpt_path)
        # Lightning lays the checkpoint's hyper-parameters over the whole model config, so `--model.generation.*`
        # on the command line (and a recipe's generation block) would be silently replaced by what the model was
        # trained with. How to decode is the caller's choice, not the architecture's: it is put back afterwards.
        key = f"{subcommand}.model.init_args.generation"
        generation = self.config.get(key) if subcommand else None
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as error:  # a legacy-format file the scan cannot read, refused by the load
            raise UnsafeCheckpointError(ckpt_path, unpickling_reason(error)) from None
        if generation is not None and key in self.config:  # (a task without generation settings has no such key)
            self.config[key] = generation

    def _run_subcommand(self, subcommand: str) -> None:
        threads.configure(
            self.config[subcommand].get("threads"),
            ranks_per_host=self.trainer.num_devices,
            loader_workers=getattr(self.datamodule, "num_workers", 0) or 0,
        )
        try:
            super()._run_subcommand(subcommand)
        except pickle.UnpicklingError as error:  # the Trainer's own weights_only load refused the checkpoint
            raise UnsafeCheckpointError(self.config_init[subcommand].get("ckpt_path"), unpickling_reason(error)) from None

    def before_predict(self) -> None:
        output = self.config[self.subcommand].get("output")
        writers = [c for c in self.trainer.callbacks if isinstance(c, BasePredictionWriter)]
        if writers:
            if output is not None:
                for writer in writers:
                    if isinstance(writer, JsonlPredictionWriter):
                        writer.output_dir = Path(output)
            return
        self.trainer.callbacks.append(JsonlPredictionWriter(output_dir=str(output or self.run_dir)))

    def after_fit(self) -> None:
        datamodule = self.datamodule
        if getattr(datamodule, "test_manifest", None) is None:  # nothing to test on (prepare alone builds no test set)
            return
        if self.trainer.interrupted:
            return
        # The monitored checkpoint's best file, wherever it sits in the callback list (Lightning's "best" would take
        # the first ModelCheckpoint, which may be an unmonitored LatestCheckpoint).
        checkpoints = [c for c in self.trainer.callbacks if isinstance(c, ModelCheckpoint) and c.best_model_path]
        best = next((c for c in checkpoints if c.monitor), checkpoints[0] if checkpoints else None)
        ckpt_path = best.best_model_path if best is not None else None
        results = self.trainer.test(self.model, datamodule=datamodule, ckpt_path=ckpt_path)
        if self.trainer.is_global_zero and results:
            summary = ", ".join(
                f"{k.removeprefix('test/')}={v * 100:.2f}%" if "accuracy" in k or "match" in k or "validity" in k
                else f"{k.removeprefix('test/')}={v:.4f}"
                for k, v in sorted(results[0].items())
                if not k.startswith("test/weight_")
            )
            print(f"omnifuse test ({'best' if ckpt_path else 'final'} checkpoint): {summary}")
            _write_results(Path(self.trainer.default_root_dir), ckpt_path, results[0])

    def after_test(self) -> None:
        if self.trainer.is_global_zero and self.trainer.callback_metrics:
            metrics = {k: v for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
            _write_results(Path(self.trainer.default_root_dir), self.config[self.subcommand].get("ckpt_path"), metrics)


def _fill_folders(trainer, run_dir: Path, checkpoints: Path | None) -> None:
    """Point loggers and callbacks at the run folder: ``{run_dir}`` in any of their string settings (the shipped
    recipes write ``save_dir: "{run_dir}"``) becomes the run folder, and a checkpoint callback with no ``dirpath``
    gets ``<run folder>/checkpoints``. Folders a config spells out are the user's choice and stay."""
    specs = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    specs = [*specs, *(trainer.callbacks or [])]
    for spec in specs:
        init_args = getattr(spec, "init_args", None)
        if init_args is None:
            continue
        for key, value in vars(init_args).items():
            if isinstance(value, str) and runs.PLACEHOLDER in value:
                setattr(init_args, key, value.replace(runs.PLACEHOLDER, str(run_dir)))
        unset = "dirpath" in init_args and init_args.dirpath is None
        if checkpoints is not None and unset and issubclass(_class(spec.class_path), ModelCheckpoint):
            init_args.dirpath = str(checkpoints)


def _class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _write_results(run_dir: Path, ckpt_path: str | None, metrics: dict) -> None:
    """``test_results.json`` in the run folder: the checkpoint tested and every test metric."""
    values = {k: float(v) for k, v in metrics.items()}
    (run_dir / "test_results.json").write_text(json.dumps({"checkpoint": ckpt_path, "metrics": values}, indent=2) + "\n")


def cli_main(args: list[str] | None = None, run: bool = True) -> OmniCLI:
    """Entry point tests call directly: ``cli_main(["fit", "--config", path, ...])``."""
    silence_unactionable_noise()
    inherited = os.environ.get(runs.ENV)
    try:
        return OmniCLI(
            # Any LightningModule: the generating tasks (omnifuse.tasks.VQATask, CaptionTask, StructuredTask) and the
            # contrastive scorer (omnifuse.tasks.contrastive.ContrastiveTask) share the verbs, the data module and the run folders.
            L.LightningModule,
            MultimodalDataModule,
            subclass_mode_model=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    finally:
        # The run folder is handed to the DDP workers this command starts, not to the next command of this process.
        if inherited is None:
            os.environ.pop(runs.ENV, None)
        else:
            os.environ[runs.ENV] = inherited


def _loaded_checkpoint(path: str) -> dict | None:
    """A ``.ckpt`` file read once (without running its code); None for an export folder."""
    if not path.endswith(".ckpt") or not Path(path).is_file():
        return None
    from omnifuse.finetune.safe_load import load_checkpoint

    return load_checkpoint(path)


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnifuse export", description=export_main.__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by omnifuse fit")
    parser.add_argument("--out", required=True, help="output folder for config.json + model.safetensors")
    parser.add_argument(
        "--adapters-only",
        action="store_true",
        help="write only the LoRA adapters of a LoRA fine-tuning checkpoint (out/adapters.safetensors, or --out "
        "itself when it ends in .safetensors); load them with omnifuse.finetune.lora.load_lora_adapters",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8: weights quantized for CPU inference (linears and experts run int8 kernels; the routers stay "
        "fp32); the folder loads like any other, for inference only",
    )
    args = parser.parse_args(argv)
    if args.adapters_only:
        if args.quantize:
            parser.error("--quantize applies to a whole model, not to --adapters-only")
        from omnifuse.finetune.lora import export_adapters

        written = export_adapters(args.checkpoint, args.out)
    elif (checkpoint := _loaded_checkpoint(args.checkpoint)) is not None and "omnifuse_scorer_config" in checkpoint:
        if args.quantize:
            parser.error("--quantize applies to generating models, not to a contrastive scorer")
        from omnifuse.tasks.clip_scorer import ClipScorer

        written = ClipScorer.from_checkpoint(checkpoint).save_pretrained(args.out)
    else:
        from omnifuse.tasks.model import OmniModel

        if checkpoint is not None:
            model = OmniModel.from_checkpoint(checkpoint, source=args.checkpoint).eval()
        else:
            model = OmniModel.from_pretrained(args.checkpoint).eval()
        if args.quantize:
            from omnifuse.tasks.quantize import quantize_int8

            quantize_int8(model)
        written = model.save_pretrained(args.out)
    print(f"exported {args.checkpoint} -> {written}")
    return 0


export_main.__doc__ = (
    "Export a Lightning checkpoint as a save_pretrained folder (config.json + model.safetensors), or a contrastive "
    "scorer checkpoint as a scorer folder (scorer.json + model.safetensors) for omnifuse curate."
)


def _lightning(verb: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        cli_main([verb, *argv])
        return 0

    return run


def _lazy(module: str, function: str = "main") -> Callable[[list[str]], int]:
    # Imported when the verb runs, so `omnifuse --help` and `omnifuse score` do not pay for the whole stack.
    return lambda argv: importlib.import_module(module).__dict__[function](argv)


#: Every verb of the ``omnifuse`` command: name -> (what runs it, one line for ``omnifuse --help``).
VERBS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "fit": (_lightning("fit"), "train from a YAML recipe (LightningCLI), then test the best checkpoint"),
    "validate": (_lightning("validate"), "evaluate a checkpoint on the validation manifest"),
    "test": (_lightning("test"), "evaluate a checkpoint on the test manifest"),
    "predict": (_lightning("predict"), "batch inference over a JSONL manifest -> predictions.jsonl + errors.jsonl"),
    "prepare": (_lazy("omnifuse.data.prepare"), "build a dataset's manifests (easy-VQA, spoken questions, ...)"),
    "export": (export_main, "checkpoint -> save_pretrained folder (config.json + model.safetensors) or adapters"),
    "score": (_lazy("omnifuse.app.score"), "score a predict folder against its manifest, overall and per group"),
    "plot": (_lazy("omnifuse.app.plots"), "charts of modality weights and expert routing from a predict folder"),
    "serve": (_lazy("omnifuse.app.serve"), "online inference over HTTP: dynamic batching, a web page, /metrics"),
    "prune": (_lazy("omnifuse.app.prune"), "drop the least used routed experts (calibration manifest) -> smaller model"),
    "curate": (_lazy("omnifuse.app.curate"), "filter a manifest by CLIP score, drop near-duplicates; a report of each"),
}


def _usage() -> str:
    width = max(map(len, VERBS))
    rows = "\n".join(f"  {verb.ljust(width)}  {help_}" for verb, (_, help_) in VERBS.items())
    return f"usage: omnifuse <verb> [options]     (omnifuse <verb> --help for a verb's options)\n\nverbs:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"omnifuse: unknown verb {verb!r}\n\n{_usage()}", end="", file=sys.stderr)
        return 2
    try:
        if from_command_line and verb in LIGHTNING_VERBS:
            # LightningCLI reads sys.argv itself: handing it sys.argv[1:] as well makes it warn that "args" and
            # command-line arguments were both given, on every run.
            cli_main(None)
            return 0
        threads.configure()
        return VERBS[verb][0](rest)
    except (CheckpointError, RecordError, threads.ThreadSettingError) as error:  # refused input: one line
        print(f"omnifuse {verb}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
