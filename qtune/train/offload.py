"""``train.offload_activations``: the tensors autograd saves in the forward wait in CPU memory until backward.

The implementation is PyTorch's own, :func:`torch.autograd.graph.save_on_cpu`: every tensor saved for backward is
copied to (pinned) host memory when the forward saves it and back to its device when backward unpacks it. qtune
enters it around the forward of each training micro batch only (:meth:`QtuneTrainer.compute_loss`), so:

- with gradient checkpointing (peft's reentrant checkpointing), what the forward saves is each layer's input, the
  checkpoint: those go to the host, and the layer recomputed in backward keeps its own saves on the device (the
  recompute runs outside the forward, so outside the hooks);
- without it, every saved activation goes to the host.

On CPU the same hooks run and ``Tensor.cpu()`` of a CPU tensor is that tensor: nothing is copied and nothing is
saved, and training is unchanged — so the switch runs (and is tested) anywhere, and says so in ``train``'s model line.
"""

from __future__ import annotations

import contextlib


def saved_on_host(device_type: str):
    """The context the forward of a micro batch on ``device_type`` runs in when activations are offloaded."""
    import torch

    return torch.autograd.graph.save_on_cpu(pin_memory=device_type == "cuda")


def maybe_offloaded(enabled: bool, device_type: str):
    return saved_on_host(device_type) if enabled else contextlib.nullcontext()
