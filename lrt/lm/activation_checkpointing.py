"""Activation checkpointing through the frozen base, on passes that sit on a KV cache.

Back-propagating answer log-probs into the latents runs the frozen base with autograd over
`[span, answer]` on top of the prompt's cache; for long answers its activations dominate
memory. transformers' gradient checkpointing cannot be used: it only runs in train mode, and
it drops the cache (a recomputed layer would otherwise append its keys a second time). Here
each decoder layer's forward is recomputed in the backward pass from a snapshot of its cache
layer taken before the forward, so the replay sees exactly the cache the forward saw. A
checkpointed pass leaves the cache as it found it: what the pass appended is dropped as soon
as it has been read (a caller that needs the extended cache runs without gradients).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _cache_layer(kwargs: dict[str, Any], index: int) -> Any:
    cache = kwargs.get("cache")
    if cache is None or not hasattr(cache, "layers") or index >= len(cache.layers):
        return None
    return cache.layers[index]


def enable(model: nn.Module) -> None:
    """Checkpoint every decoder layer of `model` (a transformers causal LM) whenever gradients
    are enabled; passes without gradients (encode, decoding) run as before."""
    for index, layer in enumerate(model.get_decoder().layers):
        if getattr(layer, "_lrt_checkpointed", False):
            continue
        original = layer.forward

        def forward(*args: Any, _original=original, _index=index, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            cache_layer = _cache_layer(kwargs, _index)
            saved = dict(vars(cache_layer)) if cache_layer is not None else None

            def run(*inputs: Any) -> Any:
                if cache_layer is None:
                    return _original(*inputs, **kwargs)
                vars(cache_layer).update(saved)  # the replay starts from the forward's cache
                try:
                    return _original(*inputs, **kwargs)
                finally:
                    # The keys and values appended have been read: held by the cache until the
                    # pass is freed they would cost what checkpointing saves (per token, every
                    # layer's K and V), so the layer drops them once the forward and again
                    # once the replay has run; autograd keeps what the layer's backward needs.
                    vars(cache_layer).update(saved)

            return checkpoint(run, *args, use_reentrant=False)

        layer.forward = forward
        layer._lrt_checkpointed = True
