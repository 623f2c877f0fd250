"""The ``omnifuse`` command.

``omnifuse fit|validate|test|predict`` is a LightningCLI (tasks, encoders and decoder injected with
``class_path`` / ``init_args``); ``omnifuse prepare ...`` builds datasets; ``omnifuse export`` turns a Lightning
checkpoint into a ``save_pretrained`` folder (config.json + model.safetensors); ``omnifuse score`` scores a predict
output folder against its manifest, overall and per group (``--by meta.voice``).
"""

from __future__ import annotations

import argparse
import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from omnifuse.data.datamodule import MultimodalDataModule
from omnifuse.tasks.module import OmniTask


class OmniCLI(LightningCLI):
    """LightningCLI that, after ``fit``, evaluates the best checkpoint on the test split when there is one."""

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
        "itself when it ends in .safetensors); load them with omnifuse.tasks.lora.load_lora_adapters",
    )
    args = parser.parse_args(argv)
    if args.adapters_only:
        from omnifuse.tasks.lora import export_adapters

        written = export_adapters(args.checkpoint, args.out)
    else:
        from omnifuse.tasks.model import OmniModel

        written = OmniModel.from_pretrained(args.checkpoint).save_pretrained(args.out)
    print(f"exported {args.checkpoint} -> {written}")
    return 0


export_main.__doc__ = "Export a Lightning checkpoint as a save_pretrained folder (config.json + model.safetensors)."


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prepare":
        from omnifuse.data.prepare import main as prepare_main

        return prepare_main(argv[1:])
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    if argv and argv[0] == "score":
        from omnifuse.tasks.score import main as score_main

        return score_main(argv[1:])
    if argv and argv[0] == "plot":
        from omnifuse.tasks.plots import main as plot_main

        return plot_main(argv[1:])
    # From the console script LightningCLI reads sys.argv itself: handing it sys.argv[1:] as well makes it warn that
    # "args" and command-line arguments were both given, on every run.
    cli_main(None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
