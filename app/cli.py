"""The ``omnifuse`` command.

``omnifuse fit|validate|test|predict`` is a LightningCLI (tasks, encoders and decoder injected with
``class_path`` / ``init_args``); ``omnifuse prepare ...`` builds datasets; ``omnifuse export`` turns a Lightning
checkpoint into a ``save_pretrained`` folder (config.json + model.safetensors); ``omnifuse score`` scores a predict
output folder against its manifest, overall and per group (``--by meta.voice``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from omnifuse.app.quiet import silence_unactionable_noise
from omnifuse.app.writer import JsonlPredictionWriter
from omnifuse.data.datamodule import MultimodalDataModule
from omnifuse.tasks.module import OmniTask

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")


class OmniCLI(LightningCLI):
    """LightningCLI that, after ``fit``, evaluates the best checkpoint on the test split when there is one, and whose
    ``predict`` always writes its results: ``--output DIR`` (default ``<default_root_dir>/predict``) gets
    ``predictions.jsonl`` and ``errors.jsonl`` unless the config already has a prediction writer."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument(
                "--output",
                type=str | None,
                default=None,
                help="folder for predictions.jsonl and errors.jsonl (default: <trainer.default_root_dir>/predict); "
                "a job restarted on the same folder skips the ids already written",
            )
        return parser

    def parse_arguments(self, parser, args) -> None:
        if args is None:
            return super().parse_arguments(parser, args)
        # cli_main(args) is this package's documented Python entry point: Lightning's warning that the process also
        # has command-line arguments (pytest's, a notebook's) tells the caller nothing.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            return super().parse_arguments(parser, args)

    def before_predict(self) -> None:
        output = self.config[self.subcommand].get("output")
        writers = [c for c in self.trainer.callbacks if isinstance(c, BasePredictionWriter)]
        if writers:
            if output is not None:
                for writer in writers:
                    if isinstance(writer, JsonlPredictionWriter):
                        writer.output_dir = Path(output)
            return
        default = Path(self.trainer.default_root_dir) / "predict"
        self.trainer.callbacks.append(JsonlPredictionWriter(output_dir=str(output or default)))

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


def cli_main(args: list[str] | None = None, run: bool = True) -> OmniCLI:
    """Entry point tests call directly: ``cli_main(["fit", "--config", path, ...])``."""
    silence_unactionable_noise()
    return OmniCLI(
        OmniTask,
        MultimodalDataModule,
        subclass_mode_model=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


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
    args = parser.parse_args(argv)
    if args.adapters_only:
        from omnifuse.finetune.lora import export_adapters

        written = export_adapters(args.checkpoint, args.out)
    else:
        from omnifuse.tasks.model import OmniModel

        written = OmniModel.from_pretrained(args.checkpoint).save_pretrained(args.out)
    print(f"exported {args.checkpoint} -> {written}")
    return 0


export_main.__doc__ = "Export a Lightning checkpoint as a save_pretrained folder (config.json + model.safetensors)."


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
    if from_command_line and verb in LIGHTNING_VERBS:
        # LightningCLI reads sys.argv itself: handing it sys.argv[1:] as well makes it warn that "args" and
        # command-line arguments were both given, on every run.
        cli_main(None)
        return 0
    return VERBS[verb][0](rest)


if __name__ == "__main__":
    sys.exit(main())
