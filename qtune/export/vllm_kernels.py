"""Which vLLM kernel serves an export: vLLM's own compatibility checks, restated on plain dicts.

vLLM picks a kernel in two steps; this module repeats both from an export's ``quantization_config``
(``config.json``) and the model's shapes, without importing vLLM (it needs a GPU build).

1. **The quantization method**, from the checkpoint's ``quant_method`` and the ``quantization=``
   argument the user gives (``None`` by default). Each ``*Marlin*`` config's
   ``override_quantization_method`` claims the checkpoint when its ``is_*_marlin_compatible``
   holds and the user asked for nothing, ``"marlin"`` or that method by name; an explicit
   ``quantization="gptq"`` / ``"awq"`` forces the plain method even when Marlin qualifies.

   - ``gptq_marlin`` (``vllm/model_executor/layers/quantization/gptq_marlin.py``,
     ``GPTQMarlinConfig.is_gptq_marlin_compatible``): ``quant_method == "gptq"``, ``bits``,
     ``group_size``, ``sym`` and ``desc_act`` all present, ``(bits, sym)`` in ``TYPE_MAP`` =
     {(4, True): uint4b8, (8, True): uint8b128} — **symmetric only** — and
     ``check_marlin_supported(type, group_size)``
     (``utils/marlin_utils.py``): the type in ``query_marlin_supported_quant_types(has_zp=False)``
     (uint4b8, uint8b128 on CUDA capability >= 75) and ``group_size`` in
     ``MARLIN_SUPPORTED_GROUP_SIZES`` = [-1, 32, 64, 128]. Otherwise: ``gptq``, whose
     ``GPTQLinearMethod`` runs ``ops.gptq_gemm`` (the exllama kernel) — the slow path.
   - ``awq_marlin`` (``awq_marlin.py``, ``AWQMarlinConfig.is_awq_marlin_compatible``): CUDA,
     ``quant_method == "awq"``, ``bits`` in {4: uint4, 8: uint8}, ``zero_point`` present, and
     ``check_marlin_supported(type, group_size, has_zp=zero_point)``: with zero points Marlin has
     uint4 only, so 4-bit AWQ with ``zero_point: true`` and a Marlin group size. Otherwise ``awq``
     (``awq.py``, ``AWQLinearMethod``: ``ops.awq_gemm``).

2. **The kernel per linear**, with vLLM's fused linears (``qkv_proj`` = q, k, v stacked;
   ``gate_up_proj``; ``o_proj``; ``down_proj``) as ``(K, N) = (in, out)`` features, one GPU:

   - ``gptq_marlin`` asks ``choose_mp_linear_kernel`` (``vllm/model_executor/kernels/linear/__init__.py``),
     which takes the first of ``_POSSIBLE_KERNELS[CUDA]`` whose ``can_implement`` holds:
     ``CutlassW4A8LinearKernel`` (8-bit activations only: never for these exports),
     ``MacheteLinearKernel`` (``mixed_precision/machete.py``: capability exactly 9.0, the same two
     types, group size in [-1, 64, 128] for fp16/bf16 activations
     (``machete_utils.query_machete_supported_group_sizes``), ``K % 64 == 0`` and ``N % 128 == 0``
     (``check_machete_supports_shape``)), ``MarlinLinearKernel`` (``mixed_precision/marlin.py``:
     the type and group size as above; with act-order (``has_g_idx``) the strict
     ``check_marlin_supports_shape``: ``N % 64 == 0``, ``K % 128 == 0``, ``K % group == 0``;
     without it misaligned tiles are zero-padded, so any shape whose K the group divides),
     ``ConchLinearKernel`` (``conch.py``: group -1 or 128, no act-order, needs the optional
     ``conch-triton-kernels`` package; assumed absent), ``ExllamaLinearKernel`` (``exllama.py``:
     float16 activations, the two types, ``group_size > 0`` dividing K, ``N % (32 / bits) == 0``),
     then ``TritonW4A16LinearKernel`` and ``HummingLinearKernel``, not restated here.
   - ``awq_marlin``: ``AWQMarlinConfig.get_quant_method`` keeps Marlin for a layer only if
     ``check_marlin_supports_layer`` (the strict shape check above) holds, else that layer falls
     back to ``AWQLinearMethod``.

Read from vLLM's main branch as stored for this work (files at commits 055e47c2 for
``mixed_precision/{marlin,machete,exllama,conch}.py``, 00161ce0 ``gptq_marlin.py``, 0322f292
``awq_marlin.py``, 007d5005 ``marlin_utils.py``, 006fc898 ``kernels/linear/__init__.py``). Older
vLLM releases check Marlin's shape strictly with or without act-order (no padding), and had no
Machete; a vLLM this was not read from may choose differently: its log line "Using
<Kernel> for GPTQMarlinLinearMethod" is the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MARLIN_GROUP_SIZES = (-1, 32, 64, 128)  # marlin_utils.MARLIN_SUPPORTED_GROUP_SIZES
GPTQ_MARLIN_TYPES = {(4, True): "uint4b8", (8, True): "uint8b128"}  # GPTQMarlinConfig.TYPE_MAP
AWQ_MARLIN_TYPES = {4: "uint4", 8: "uint8"}  # AWQMarlinConfig.TYPE_MAP
MARLIN_TYPES = {False: ("uint4b8", "uint8b128"), True: ("uint4",)}  # query_marlin_supported_quant_types(has_zp)
MACHETE_GROUP_SIZES = (-1, 64, 128)  # machete_utils.query_machete_supported_group_sizes(fp16/bf16)
FAST = ("MacheteLinearKernel", "MarlinLinearKernel", "AWQMarlinLinearMethod")
SLOW = {"gptq": "GPTQLinearMethod (exllama gptq_gemm)", "awq": "AWQLinearMethod (awq_gemm)"}


def marlin_supported(quant_type: str, group_size: int | None, has_zp: bool = False, capability: int = 90) -> bool:
    """``marlin_utils.check_marlin_supported`` on CUDA."""
    return capability >= 75 and quant_type in MARLIN_TYPES[has_zp] and group_size in MARLIN_GROUP_SIZES


def quantization_method(qcfg: dict, quantization: str | None = None, capability: int = 90) -> str:
    """The method vLLM loads a checkpoint with (step 1 of the module docstring); a ``ValueError``
    names what vLLM refuses."""
    method = str(qcfg.get("quant_method", "")).lower()
    bits, group = qcfg.get("bits"), qcfg.get("group_size")
    if method == "gptq":
        sym, desc_act = qcfg.get("sym"), qcfg.get("desc_act")
        ok = None not in (bits, group, sym, desc_act) and (bits, sym) in GPTQ_MARLIN_TYPES and \
            marlin_supported(GPTQ_MARLIN_TYPES[(bits, sym)], group, False, capability)
        fast, plain = "gptq_marlin", "gptq"
    elif method == "awq":
        zp = qcfg.get("zero_point")
        ok = None not in (bits, group, zp) and bits in AWQ_MARLIN_TYPES and \
            marlin_supported(AWQ_MARLIN_TYPES[bits], group, bool(zp), capability)
        fast, plain = "awq_marlin", "awq"
    else:
        raise ValueError(f"quant_method {method!r}: only gptq and awq checkpoints are restated here")
    if quantization in (None, "marlin", fast):
        if ok:
            return fast
        if quantization is None:
            return plain
        raise ValueError(f"quantization={quantization!r}: vLLM refuses this {method} config for Marlin "
                         f"(bits={bits}, group_size={group}{', sym=' + str(qcfg.get('sym')) if method == 'gptq' else ''})")
    if quantization != plain:
        raise ValueError(f"quantization={quantization!r} does not read a {method} checkpoint")
    return plain


def vllm_linears(model_config: dict) -> dict[str, tuple[int, int]]:
    """vLLM's fused linears of one decoder layer as ``{name: (in K, out N)}`` (qkv and gate/up stacked)."""
    h, inter = model_config["hidden_size"], model_config["intermediate_size"]
    heads = model_config["num_attention_heads"]
    kv = model_config.get("num_key_value_heads") or heads
    d = model_config.get("head_dim") or h // heads
    return {"qkv_proj": (h, (heads + 2 * kv) * d), "o_proj": (heads * d, h),
            "gate_up_proj": (h, 2 * inter), "down_proj": (inter, h)}


def mp_linear_kernel(bits: int, group_size: int, act_order: bool, k: int, n: int, capability: int = 90,
                     act_dtype: str = "float16") -> str:
    """``choose_mp_linear_kernel`` for one ``gptq_marlin`` linear (step 2)."""
    group = group_size
    if act_order and group == -1:
        act_order = False  # GPTQMarlinConfig.__init__: one group per row makes act-order moot
    half = act_dtype in ("float16", "bfloat16")
    if capability == 90 and half and group in MACHETE_GROUP_SIZES and k % 64 == 0 and n % 128 == 0:
        return "MacheteLinearKernel"
    if capability >= 75 and group in MARLIN_GROUP_SIZES:
        divides = group == -1 or k % group == 0
        if (n % 64 == 0 and k % 128 == 0 and divides) if act_order else divides:
            return "MarlinLinearKernel"
    if capability >= 60 and act_dtype == "float16" and group > 0 and k % group == 0 and n % (32 // bits) == 0:
        return "ExllamaLinearKernel"
    return "TritonW4A16LinearKernel or later (not restated)"


@dataclass
class KernelChoice:
    method: str  # gptq_marlin | gptq | awq_marlin | awq
    kernels: dict[str, list[str]] = field(default_factory=dict)  # kernel -> vLLM linears (per decoder layer) it serves

    @property
    def fast(self) -> bool:
        """Every linear on a Marlin/Machete kernel."""
        return bool(self.kernels) and all(k in FAST for k in self.kernels)

    def summary(self) -> str:
        parts = [f"{k} ({', '.join(names)})" for k, names in self.kernels.items()]
        return f"{self.method}: " + ("; ".join(parts) if parts else "no linears given")


def vllm_kernel(qcfg: dict, model_config: dict | None = None, quantization: str | None = None,
                capability: int = 90, act_dtype: str = "float16") -> KernelChoice:
    """The method and per-linear kernels vLLM selects for an export (defaults: an H100/H200, capability
    9.0, float16 activations as qtune's exports store, one GPU, no ``quantization=``)."""
    method = quantization_method(qcfg, quantization, capability)
    choice = KernelChoice(method)
    for name, (k, n) in (vllm_linears(model_config) if model_config else {}).items():
        if method == "gptq_marlin":
            kernel = mp_linear_kernel(qcfg["bits"], qcfg["group_size"], bool(qcfg["desc_act"]), k, n, capability, act_dtype)
        elif method == "awq_marlin":
            g = qcfg["group_size"]
            strict = n % 64 == 0 and k % 128 == 0 and (g == -1 or k % g == 0)  # check_marlin_supports_layer
            kernel = "AWQMarlinLinearMethod" if strict else SLOW["awq"]
        else:
            kernel = SLOW[method]
        choice.kernels.setdefault(kernel, []).append(name)
    return choice


def card_line(qcfg: dict, model_config: dict) -> str:
    """One line for an export's model card: what vLLM will run this export with, and how to get Marlin."""
    k = vllm_kernel(qcfg, model_config)
    line = f"vLLM (H100/H200, float16, no `quantization=` argument) loads this as `{k.method}`: " + "; ".join(
        f"{kernel} for {', '.join(names)}" for kernel, names in k.kernels.items())
    if not k.fast:
        if k.method == "gptq":
            line += " — Marlin needs a symmetric grid (`qtune export --sym`)"
        elif qcfg.get("desc_act") and k.method == "gptq_marlin":
            line += " — with act-order Marlin needs in-features that are multiples of 128 (`--no-act-order` pads instead)"
        else:
            line += " — Marlin needs in-features that are multiples of 128 and out-features of 64"
    return line + "."
