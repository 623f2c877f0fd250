"""Where a training step's time goes: data loading, each encoder, question FiLM, fusion, decoder + loss, optimizer.

    python benchmarks/step_profile.py --config configs/easyvqa.yaml [--steps 20] [--threads 1] [-- extra CLI args]

Builds the task and data module from the config (as ``omnifuse fit`` would), draws training batches, and times each
part forward + backward on its own (inputs of a part detached from the parts before it, so each backward is that
part's alone), then the optimizer step and a whole training step (forward + backward + step). Prints milliseconds
per step, measured after ``--warmup`` steps; a measured figure, never pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


class _Timer:
    """``with timer("part"):`` appends the block's wall time to ``timer.times["part"]``."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self._name = ""

    def __call__(self, name: str) -> _Timer:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.times.setdefault(self._name, []).append(time.perf_counter() - self._start)


def _detach_sequences(sequences):
    from omnifuse.encoders.base import TokenSequence

    return {m: TokenSequence(s.tokens.detach(), s.mask) for m, s in sequences.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("extra", nargs="*", help="extra CLI arguments after --, as for omnifuse fit")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from omnifuse.app.cli import cli_main  # the CLI builds the task and the data module exactly as `fit` does
    from omnifuse.tasks.module import IGNORE_INDEX

    cli = cli_main(["--config", args.config, *args.extra], run=False)
    task, dm = cli.model, cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    model = task.model.train()
    # The recipe's own optimizer (its parameter groups and kernel: fused AdamW where torch has it), not a stand-in.
    optimizer = task.configure_optimizers()["optimizer"]
    torch.set_flush_denormal(True)  # as OmniTask.on_fit_start
    loader = iter(dm.train_dataloader())
    timer = _Timer()

    for _ in range(args.warmup + args.steps):
        with timer("data loading (next batch)"):
            batch = next(loader)
        present = batch.present & model.has_encoder
        # Each part alone, forward + backward; its inputs are detached outputs of the parts before it.
        seqs = {}
        for m in sorted(model.encoders, key=lambda m: m == "image"):  # image last, as OmniModel.encode_modalities
            if not batch.has(m):
                continue
            enc = model.encoders[m]
            if m != "image":
                inputs = (batch.audio, batch.audio_mask) if m == "audio" else (batch.text, batch.text_mask)
                with timer(f"{m} encoder fwd+bwd"):
                    seqs[m] = enc(*inputs)
                    seqs[m].tokens.square().mean().backward()
                continue
            film = None
            if model.fusion.vision_film is not None:
                question = _detach_sequences(seqs)
                with timer("question FiLM generator fwd+bwd"):
                    film = model.fusion.vision_conditioning(question, present)
                    if film is not None:
                        sum(t.sum() for t in film.scale + film.shift).backward()
                if film is not None:
                    film = type(film)(tuple(t.detach() for t in film.scale), tuple(t.detach() for t in film.shift))
            with timer("image encoder fwd+bwd"):
                seqs[m] = enc(batch.image, film=film) if film is not None else enc(batch.image)
                seqs[m].tokens.square().mean().backward()
        seqs = _detach_sequences(seqs)
        with timer("fusion fwd+bwd"):
            memory = model.fusion(seqs, present)
            memory.tokens.square().mean().backward()
        with timer("decoder + loss fwd+bwd"):
            out = model.decoder(
                batch.target_ids[:, :-1], memory.tokens.detach(), memory.mask, attention_mask=batch.target_mask[:, :-1]
            )
            labels = batch.target_ids[:, 1:].masked_fill(~batch.target_mask[:, 1:], IGNORE_INDEX)
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
            (loss + out.router_loss).backward()
        with timer("optimizer step"):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with timer("whole step (fwd+bwd+optimizer, no data)"):
            losses, _, _ = task._losses(batch)
            losses["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    times = timer.times
    print(f"threads={torch.get_num_threads()} batch={dm.batch_size} steps={args.steps} (after {args.warmup} warm-up)")
    parts = [k for k in times if not k.startswith("whole")]
    total_parts = sum(statistics.median(times[k][args.warmup :]) for k in parts)
    for name, values in times.items():
        ms = 1000 * statistics.median(values[args.warmup :])
        share = "" if name.startswith("whole") else f"{100 * ms / 1000 / total_parts:5.1f} %"
        print(f"  {name:42s} {ms:8.1f} ms  {share}")
    print(f"  {'sum of the parts':42s} {1000 * total_parts:8.1f} ms")


if __name__ == "__main__":
    main()
