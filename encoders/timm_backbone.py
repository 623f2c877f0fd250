"""A timm model reduced to a feature extractor: one feature level out, as a (B, C, h, w) map.

Shared by the timm image encoder and the AST-style timm audio encoder. Weights are random or come from a local file
(``pretrained_cfg_overlay=dict(file=...)``); the hub is never contacted.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence

import timm
import torch
from torch import nn

from omnifuse.encoders.base import FilmParams, apply_film
from omnifuse.encoders.utils import as_2tuple, resolve_local_weights


class TimmBackbone(nn.Module):
    """``timm.create_model(model_name)`` cut after ``feature_level`` and returning that level's feature map.

    Args:
        model_name: any timm model name (``timm.list_models()``).
        pretrained: False/None for random init, or a local weights file (``.safetensors``/``.pth``/``.bin``).
        feature_level: which ``forward_intermediates`` level to output (``-1`` = last; for CNNs ``-2``/``-3`` are
            earlier, higher-resolution stages; for ViTs they are earlier blocks). Layers after it are pruned, so
            every remaining parameter receives gradients.
        img_size: input size passed to models that take one (ViT-like; CNNs ignore it).
        in_chans: input channels (1 for spectrograms).
        model_kwargs: forwarded to ``timm.create_model`` (e.g. ``drop_path_rate``, ``dynamic_img_size``).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool | str | None = False,
        feature_level: int = -1,
        img_size: int | tuple[int, int] | None = None,
        in_chans: int = 3,
        **model_kwargs,
    ) -> None:
        super().__init__()
        if not timm.is_model(model_name.split(".")[0]):
            raise ValueError(f"unknown timm model {model_name!r}; see timm.list_models()")
        weights = resolve_local_weights(pretrained)
        kwargs = dict(model_kwargs)
        if in_chans != 3:
            kwargs["in_chans"] = in_chans
        if weights is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=weights))
        else:
            kwargs["pretrained"] = False
        model = None
        if img_size is not None:
            try:
                model = timm.create_model(model_name, img_size=img_size, **kwargs)
            except TypeError:  # CNNs take no img_size: any input size works for them
                model = None
        if model is None:
            model = timm.create_model(model_name, **kwargs)

        self.model_name = model_name
        self.feature_level = feature_level
        self.uses_intermediates = hasattr(model, "forward_intermediates")
        if self.uses_intermediates:
            if hasattr(model, "prune_intermediate_layers"):
                model.prune_intermediate_layers(indices=[feature_level], prune_norm=False, prune_head=True)
            params = inspect.signature(model.forward_intermediates).parameters
            self._has_norm_arg = "norm" in params
            self.supports_attn_mask = "attn_mask" in params and hasattr(model, "num_prefix_tokens")
        else:
            if feature_level != -1:
                raise ValueError(f"{model_name} has no forward_intermediates; only feature_level=-1 is available")
            model.reset_classifier(0)
            self._has_norm_arg = False
            self.supports_attn_mask = False
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.data_config = timm.data.resolve_model_data_config(model)
        # A model needs a fixed input size when its config says so and it was not built with dynamic_img_size.
        self.fixed_input_size = bool(model.pretrained_cfg.get("fixed_input_size", False)) and not getattr(
            model, "dynamic_img_size", False
        )
        if img_size is not None:
            self.default_size = as_2tuple(img_size)
        else:
            self.default_size = as_2tuple(tuple(self.data_config["input_size"][-2:]))
        self.in_chans = in_chans
        self._probe_cache: dict[tuple[int, int], tuple[int, tuple[int, int]]] = {}
        self.out_dim, _ = self._probe(self.default_size)

    def output_level(self) -> int | None:
        """Index into ``model.feature_info`` of the level this backbone returns (None: the model has no feature_info)."""
        info = getattr(self.model, "feature_info", None)
        if not info or not self.uses_intermediates:
            return None
        return self.feature_level % len(info)

    def film_stages(self, levels: Sequence[int] | None = None) -> list[tuple[str, int]]:
        """(module name, channels) of the stages FiLM can modulate: ``feature_info`` levels ``levels`` (default: every
        level after the stem, up to and including the one returned). Empty when the model has no ``feature_info``."""
        out = self.output_level()
        if out is None:
            return []
        info = self.model.feature_info
        chosen = list(range(1, out + 1)) if levels is None else [lvl % len(info) for lvl in levels]
        for lvl in chosen:
            if not 0 <= lvl <= out:
                raise ValueError(f"film level {lvl} is not computed: {self.model_name} stops at level {out}")
        return [(info[lvl]["module"], int(info[lvl]["num_chs"])) for lvl in chosen]

    @contextlib.contextmanager
    def film_hooks(self, modules: Sequence[str], film: FilmParams | None) -> Iterator[None]:
        """While active, the output of each named module ``modules[s]`` is FiLM-modulated by ``film`` stage ``s``
        (forward hooks: works for any timm model whose stages are modules). ``film=None``: nothing is hooked."""
        if film is None:
            yield
            return
        if len(film.scale) != len(modules) or len(film.shift) != len(modules):
            raise ValueError(f"film has {len(film.scale)} stages, the backbone modulates {len(modules)}")
        handles = []
        try:
            for name, scale, shift in zip(modules, film.scale, film.shift):

                def hook(_module, _inputs, output, scale=scale, shift=shift):
                    return apply_film(output, scale, shift)

                handles.append(self.model.get_submodule(name).register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _probe(self, size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        """(channels, (h, w)) of the feature map for an input of ``size``, from one no-grad eval forward (cached)."""
        size = tuple(size)
        if size not in self._probe_cache:
            was_training = self.training
            self.eval()
            try:
                p = next(self.model.parameters())
                with torch.no_grad():
                    out = self(torch.zeros(1, self.in_chans, *size, dtype=p.dtype, device=p.device))
            finally:
                self.train(was_training)
            self._probe_cache[size] = (int(out.shape[1]), (int(out.shape[2]), int(out.shape[3])))
        return self._probe_cache[size]

    def feature_shape(self, size: tuple[int, int]) -> tuple[int, int]:
        """Feature-map grid (h, w) for an input of spatial ``size`` (H, W)."""
        return self._probe(as_2tuple(size))[1]

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, C, H, W) -> feature map (B, D, h, w).

        ``token_mask`` (B, h*w) bool, row-major over the output grid: where the model supports attention masks
        (timm ViTs), tokens attend only to True positions (and the prefix/class tokens). Rows without any True
        position attend everywhere (callers mask those outputs). Ignored by models without attention masks.
        """
        if not self.uses_intermediates:
            feats = self.model.forward_features(x)
            if feats.dim() == 3:  # (B, prefix + h*w, D) from a transformer without forward_intermediates
                raise NotImplementedError(f"{self.model_name}: token models need forward_intermediates")
            return feats
        kwargs = dict(indices=[self.feature_level], intermediates_only=True, output_fmt="NCHW")
        if self._has_norm_arg:
            kwargs["norm"] = True
        if token_mask is not None and self.supports_attn_mask:
            keep = token_mask | ~token_mask.any(dim=-1, keepdim=True)  # (B, h*w), never all False
            prefix = keep.new_ones(keep.shape[0], self.num_prefix_tokens)
            kwargs["attn_mask"] = torch.cat([prefix, keep], dim=1)[:, None, None, :]  # (B, 1, 1, P + h*w)
        return self.model.forward_intermediates(x, **kwargs)[0]
