"""Fidelity of one export command: how each model is held, the expected time, the reused reference.

Every model an export measures (the merged reference, each quantized format, each GGUF file) is
given tensor by tensor (``weights(name)``). Its planned peak (:func:`fidelity_peak`, the planner's
eval terms) decides how it runs:

- ``memory``: the whole model materialized once (:func:`qtune.export.layerwise.resident_model`),
  every tensor read, merged or dequantized once — when its peak fits in 80% of the memory free now;
- ``layers``: one decoder layer at a time (:func:`qtune.export.layerwise.lazy_model`), each layer
  read again for every forward pass — only when the model does not fit.

Windows and conversations go through the model ``batch`` at a time, the largest batch (up to 8)
whose peak fits as well. ``export.fidelity_mode`` forces either path. Before the first model the
expected time is printed: forward tokens x 2 x parameters over a timed matmul's speed, per model.

The merged (and trained) model's scores come from :mod:`qtune.export.reference` when an earlier
export stored them from the same inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MAX_BATCH = 8
MEMORY_SHARE = 0.8  # of the memory free when fidelity starts


@dataclass
class Plan:
    mode: str  # "memory" | "layers"
    batch: int
    peak: int  # bytes, planned for that mode and batch
    budget: int  # bytes free x MEMORY_SHARE
    sizes: dict  # model_sizes()


def fidelity_peak(sizes: dict, batch: int, seq: int, dtype_bytes: int, resident: bool) -> int:
    """Bytes of a no-grad forward of ``batch`` rows of ``seq`` tokens through a model in ``dtype_bytes`` floats,
    held whole (``resident``) or as its outer parts plus one decoder layer (:func:`lazy_model`), with one
    layer's intermediates and three ``B·T·V`` float32 blocks (the logits, their float32 copy and its
    log-softmax): the terms of :func:`qtune.plan.memory.eval_peak` for an unquantized model. (The planner's
    package sits above ``train``, which runs exports, so it cannot be imported from here.)"""
    n = batch * seq
    weights = sizes["params"] if resident else sizes["params"] - (sizes["layers"] - 1) * sizes["layer"]
    working = n * (3 * sizes["intermediate"] + 2 * sizes["hidden"]) * 4
    return dtype_bytes * weights + working + 3 * 4 * n * sizes["vocab"]


def model_sizes(config) -> dict:
    """Parameters (a tied head counted once), one decoder layer's, and the widths :func:`fidelity_peak` needs."""
    from qtune.export.layerwise import skeleton
    from qtune.export.sequential import decoder_layers

    model = skeleton(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {"params": sum(p.numel() for p in model.parameters()),
            "layer": sum(p.numel() for p in decoder_layers(model)[1][0].parameters()),
            "layers": text.num_hidden_layers, "hidden": text.hidden_size, "intermediate": text.intermediate_size,
            "vocab": model.get_output_embeddings().out_features}


def available_memory(device: str) -> int:
    """Bytes free for a new allocation now: CUDA's free memory, or the host's MemAvailable."""
    import os

    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def largest_batch(fits, limit: int) -> int:
    """The largest ``b`` in ``[1, limit]`` with ``fits(b)`` (monotone), at least 1."""
    return max([b for b in range(1, limit + 1) if fits(b)] or [1])


def plan(config, settings, device: str, dtype_bytes: int, forced: str = "auto") -> Plan:
    """How to run fidelity for a model of ``config`` (see the module docstring)."""
    sizes = model_sizes(config)
    seq = max(settings.window, 128)
    budget = int(available_memory(device) * MEMORY_SHARE)
    resident = forced == "memory" or (forced == "auto" and fidelity_peak(sizes, 1, seq, dtype_bytes, True) <= budget)
    batch = largest_batch(lambda b: fidelity_peak(sizes, b, seq, dtype_bytes, resident) <= budget, MAX_BATCH)
    return Plan("memory" if resident else "layers", batch, fidelity_peak(sizes, batch, seq, dtype_bytes, resident),
                budget, sizes)


def seconds_per_model(inputs, p: Plan, device: str, dtype) -> float:
    """Expected seconds to score one model: 2 FLOPs per parameter per forward token, at the speed of a timed
    ``(window, hidden) @ (hidden, intermediate)`` matmul."""
    import torch

    x = torch.randn(inputs.settings.window, p.sizes["hidden"], device=device, dtype=dtype)
    w = torch.randn(p.sizes["hidden"], p.sizes["intermediate"], device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    x @ w
    sync()
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < 0.1:
        x @ w
        calls += 1
    sync()
    flops = 2 * x.shape[0] * w.numel() * calls / (time.perf_counter() - t0)
    return 2 * p.sizes["params"] * inputs.forward_tokens / flops


class Scorer:
    """The fidelity figures of every model of one export, on the export device: float32 on CPU (the
    figures small models are checked against), the recipe's compute dtype on a GPU."""

    def __init__(self, run_dir, weights, tokenizer, s, device, say, exports: int, trained: bool = False):
        """``exports``: how many exported models will be scored; ``trained``: whether the trained model will be too
        (the merged export is compared with it)."""
        import torch

        from qtune.export.fidelity import FidelitySettings, prepare

        self.run_dir, self.weights, self.say, self.device = run_dir, weights, say, device
        self.config, self.recipe, self.base = weights.config, weights.recipe, s.base
        self.dtype = torch.float32 if device.type == "cpu" else getattr(torch, weights.recipe.quant.compute_dtype)
        settings = FidelitySettings(max_tokens=s.fidelity_tokens, examples=s.fidelity_examples).for_device(device.type)
        self.plan = plan(self.config, settings, device.type, self.dtype.itemsize, s.fidelity_mode)
        if self.plan.peak > self.plan.budget:
            say(f"fidelity: planned peak {self.plan.peak / 2**30:.2f} GiB exceeds {self.plan.budget / 2**30:.2f} GiB "
                f"(80% of the free memory) even {'held' if self.plan.mode == 'memory' else 'one layer at a time'}")
        settings.batch_size = self.plan.batch
        self.inputs = prepare(tokenizer, self.recipe, settings)
        self.cached = {m: self._stored(m) for m in ("merged", "trained")}
        needed = ["merged"] + (["trained"] if trained and self.base != "dequantized" else [])
        models = exports + sum(self.cached[m] is None for m in needed)
        per = seconds_per_model(self.inputs, self.plan, device.type, self.dtype)
        how = "held in memory" if self.plan.mode == "memory" else "one layer at a time (the model does not fit)"
        reused = [m for m in needed if self.cached[m] is not None]
        say(f"fidelity: {settings.max_tokens} eval-text tokens and "
            f"{len(self.inputs.rows)} eval conversations ({self.inputs.forward_tokens} tokens through the model) "
            f"per model, {models} model(s), {how}, batch {self.plan.batch}, on {device.type} in "
            f"{str(self.dtype).removeprefix('torch.')}: expected ~{per * models:.0f}s"
            f"{' + reading every layer once per forward pass' if self.plan.mode == 'layers' else ''}"
            f"{'; reference scores reused for ' + ', '.join(reused) if reused else ''} "
            f"(bound it: --fidelity-tokens N --fidelity-examples N; skip it: --no-fidelity)")
        self.seconds = 0.0

    def _key(self, model: str) -> dict:
        from qtune.export.reference import reference_key

        return reference_key(self.run_dir, self.recipe, model, self.base, self.inputs.settings.key(),
                             self.device.type, str(self.dtype).removeprefix("torch."))

    def _stored(self, model: str) -> dict | None:
        from qtune.export.reference import stored

        return stored(self.run_dir, self._key(model))

    def of(self, weights) -> dict:
        """Perplexity and eval loss of the model ``weights(name)`` gives, run as planned."""
        from qtune.export.fidelity import measure
        from qtune.export.layerwise import lazy_model, resident_model, return_freed_memory

        t0 = time.perf_counter()
        build = resident_model if self.plan.mode == "memory" else lazy_model
        model = build(self.config, weights, self.device, self.dtype)
        out = measure(model, self.inputs)
        del model
        return_freed_memory()
        took = time.perf_counter() - t0
        self.seconds += took
        out["measured"] = {"mode": self.plan.mode, "batch": self.plan.batch, "seconds": round(took, 1)}
        return out

    def _reference(self, model: str, weights) -> dict:
        from qtune.export.reference import store

        if self.cached[model] is None:
            self.cached[model] = self.of(weights)
            store(self.run_dir, self._key(model), self.cached[model])
        return self.cached[model]

    def reference(self) -> dict:
        """The merged model's scores: stored by an earlier export from the same inputs, or measured and stored."""
        return self._reference("merged", self.weights)

    def trained(self) -> dict:
        """The trained model's (the adapter merged into the dequantized base, which equals it)."""
        from qtune.export.layerwise import MergedWeights

        if self.base == "dequantized":
            return self.reference()
        return self._reference("trained", MergedWeights(self.run_dir, "dequantized", self.device))

