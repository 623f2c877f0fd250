"""Tasks: OmniModel, LightningModules, metrics, constrained decoding, prediction writer, the omnifuse CLI."""
