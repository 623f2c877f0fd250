"""A model folder (``OmniModel.save_pretrained``, ``omnifuse export``): the model's config and its weights.

Its own module so that ``OmniModel`` (which writes the format) and ``init_from`` (which reads it) share the names
without OmniModel importing Lightning.
"""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
