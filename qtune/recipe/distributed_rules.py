"""What a ``distributed`` section may be combined with, checked before anything is launched.

Each rule looks at one combination and returns a one-line error naming the field and the fix, or
None. FSDP shards only floating-point tensors of one dtype per wrapped unit (bitsandbytes'
FSDP-QLoRA guide: the packed 4-bit weights must be *stored* in the compute dtype,
``bnb_4bit_quant_storage``). bitsandbytes' 8-bit and paged optimizers do not take FSDP's sharded
parameters (FSDP2 hands them DTensors; bitsandbytes issues #89 and #1633, both open for 0.50). accelerate (1.15)
turns FSDP on only for GPU-like
devices: on CPU the same arguments would quietly give DDP.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from qtune.registry.quant import FOUR_BIT

# What every rule takes: a validated qtune.recipe.schema.Recipe. Not imported, not even for type checking: the
# schema runs these rules in its own validator, so importing it here would close a loop (schema -> rules -> schema).
Recipe = Any

BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


def _fsdp(r: Recipe) -> bool:
    return r.distributed.strategy == "fsdp"


def fsdp_needs_float_storage(r: Recipe) -> Optional[str]:
    q = r.quant
    if _fsdp(r) and q.method in FOUR_BIT and q.quant_storage != q.compute_dtype:
        return (f"quant.quant_storage: fsdp can shard 4-bit weights only when they are stored in the compute dtype "
                f"(given {q.quant_storage}); set quant.quant_storage={q.compute_dtype}")
    return None


def fsdp_cannot_shard_int8(r: Recipe) -> Optional[str]:
    if _fsdp(r) and r.quant.method == "int8":
        return ("quant.method: fsdp cannot shard bitsandbytes' int8 weights; use quant.method=nf4 with "
                f"quant.quant_storage={r.quant.compute_dtype}, or distributed.strategy=ddp")
    return None


def fsdp_needs_uniform_dtype(r: Recipe) -> Optional[str]:
    if _fsdp(r) and r.quant.method in FOUR_BIT and r.model.dtype not in ("auto", r.quant.compute_dtype):
        return (f"model.dtype: fsdp needs the unquantized weights in the compute dtype {r.quant.compute_dtype}, "
                f"like the stored 4-bit ones (given {r.model.dtype}); set model.dtype=auto")
    return None


def fsdp_has_no_triton_path(r: Recipe) -> Optional[str]:
    if _fsdp(r) and r.train.kernels == "triton":
        return ("train.kernels: qtune's Triton 4-bit path reads whole packed weights, which fsdp shards; "
                "use train.kernels=bitsandbytes (or auto)")
    return None


def fsdp_keeps_one_dtype(r: Recipe) -> Optional[str]:
    if _fsdp(r) and r.train.frozen_dtype == "float32":
        return ("train.frozen_dtype: fsdp keeps every weight in the compute dtype (no float32 upcast of embeddings, "
                "lm_head and norms); use train.frozen_dtype=auto or compute")
    return None


def fsdp_has_no_bnb_optimizer(r: Recipe) -> Optional[str]:
    if _fsdp(r) and r.train.optimizer in BNB_OPTIMIZERS:
        return (f"train.optimizer: '{r.train.optimizer}' (bitsandbytes) cannot step FSDP's sharded parameters; "
                "use train.optimizer=adamw_torch with distributed.strategy=fsdp")
    return None


def fsdp_needs_cuda(r: Recipe) -> Optional[str]:
    if _fsdp(r) and r.train.device == "cpu":
        return ("distributed.strategy: fsdp needs CUDA GPUs (given train.device: cpu; accelerate shards on "
                "accelerators only and would quietly run DDP); use distributed.strategy=ddp on CPU")
    return None


def nccl_needs_cuda(r: Recipe) -> Optional[str]:
    if r.distributed.backend == "nccl" and r.train.device == "cpu":
        return "distributed.backend: nccl needs CUDA GPUs (given train.device: cpu); use distributed.backend=gloo or auto"
    return None


def fsdp_options_need_fsdp(r: Recipe) -> Optional[str]:
    # by value, not by "was it typed": a dumped recipe (recipe.yaml) spells out every default and must reload
    d = r.distributed
    given = [f for f, off in (("sharding", d.sharding == "full_shard"), ("cpu_offload", not d.cpu_offload)) if not off]
    if given and not _fsdp(r):
        return (f"distributed.{given[0]}: applies to distributed.strategy=fsdp only (given {d.strategy}); "
                f"remove it or set distributed.strategy=fsdp")
    return None


def storage_needs_four_bit(r: Recipe) -> Optional[str]:
    if r.quant.quant_storage != "uint8" and r.quant.method not in FOUR_BIT:
        return f"quant.quant_storage: only 4-bit weights (nf4, fp4) have a storage dtype (given quant.method={r.quant.method}); remove it"
    return None


RULES: list[Callable[[Recipe], Optional[str]]] = [
    fsdp_needs_float_storage,
    fsdp_cannot_shard_int8,
    fsdp_needs_uniform_dtype,
    fsdp_has_no_triton_path,
    fsdp_keeps_one_dtype,
    fsdp_has_no_bnb_optimizer,
    fsdp_needs_cuda,
    nccl_needs_cuda,
    fsdp_options_need_fsdp,
    storage_needs_four_bit,
]


def problems(recipe: Recipe) -> list[str]:
    """Every rule's error for ``recipe``, in the order of :data:`RULES`."""
    return [msg for rule in RULES if (msg := rule(recipe)) is not None]
