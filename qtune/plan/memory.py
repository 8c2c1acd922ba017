"""Peak memory of a recipe, from its model's shape alone.

Static storage (bytes, exact for what bitsandbytes and peft allocate):

- 4-bit linear of ``n = in·out`` weights (bitsandbytes ``quantize_4bit``, blocksize 64): ``ceil(n/2)``
  packed bytes, the 16-entry float32 code, and one absmax per block of 64 — float32, or with double
  quantization uint8 plus the float32 offset, one float32 absmax per 256 absmax blocks and the
  256-entry float32 code of that second quantization.
- 8-bit linear (LLM.int8): ``n`` int8 bytes plus one float32 row scale (``SCB``) per output row.
- Everything else (embeddings, norms, an untied lm_head, biases) in the load dtype — then
  ``peft.prepare_model_for_kbit_training`` casts every float16/bfloat16 parameter that is not
  4-bit to float32, so a quantized base trains with float32 embeddings, norms and lm_head.
- LoRA: ``r·(in+out)`` float32 per wrapped linear (+ ``out`` for DoRA's magnitude), its float32
  gradient, and the optimizer's state: AdamW 2 float32 per parameter; bitsandbytes' 8-bit AdamW
  2 uint8 + 2 float32 absmax per 256 for tensors of at least 4096 elements (smaller ones keep
  float32 state); the paged variants allocate tensors of at least 1e5 elements in CUDA unified
  memory, outside torch's allocator (listed, not counted in the allocator's peak).

Activations, per token of the micro batch (``N = B·T``), per decoder layer, in elements (their
bytes: :class:`ActDtypes`) — the tensors autograd saves in a Llama block with sdpa attention,
counted with ``torch.autograd.graph.saved_tensors_hooks`` on CPU (tests/plan); under CUDA autocast
(unmeasured here) each LoRA call saves its own compute-dtype copy of its input:

    norm in      h + 1        the residual input and its float32 rsqrt (x and 1/rms)   ×2 norms
    LoRA input   h            the norm output, saved by lora_A (once per norm feeding a LoRA linear)
    attention    2·q + 2·kv   sdpa's q, k, v and output (o_proj's input is the output's storage)
    logsumexp    heads        float32, sdpa's softmax statistics
    MLP          3·I          gate (for silu), silu(gate) and up (for the product)
    down input   I            the product, saved by down_proj's lora_A
    LoRA mid     r            lora_A's output, saved by lora_B, per wrapped linear
    dropout      in·(s+1)     per wrapped linear when lora.dropout > 0: the dropped input and its mask

A frozen multiply (norm weight, 4-bit base matmul) saves nothing of its input. With gradient
checkpointing each layer keeps only its input (``h``) and one layer is recomputed at a time.
Logits: ``B·T·V`` float32 three times at the start of backward (the log-softmax cross-entropy
saved, its gradient, and the logits' gradient), plus the compute-dtype logits when they are not
float32.

Measured against two real training steps of recipes/smollm2-135m-nf4.yaml on CPU (``qtune plan
--measure``, seq 128): plan/measured 1.044 at micro batch 1, 1.005 at 8, 0.934 at 32.

The memory switches (docs/kernels.md, "Memory switches"), as estimated here: ``train.frozen_dtype: compute`` keeps
the float parts and the residual stream in the compute dtype (a norm still saves its float32 upcast);
``train.cross_entropy: liger`` replaces the three B·T·V blocks by liger's hidden-state gradient and one chunk of
logits (about 2 × B·T·h float32); ``train.offload_activations`` on CUDA moves what the forward saves (with
checkpointing: each layer's input) to host memory, listed but not counted. ``qtune plan --measure`` runs them for
real (it builds the model and trains through ``train``'s code); the estimates of the switches are not yet checked
against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

from qtune.plan.shape import Linear, ModelShape, lora_targets

BLOCK_NESTED = 256  # the blocksize of the absmax quantization under double quant
CODE_4BIT = 16 * 4  # the float32 NF4/FP4 code, one per weight
CODE_DYNAMIC = 256 * 4  # the float32 dynamic code of the nested quantization, one per weight
MIN_8BIT_STATE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep float32 optimizer state
BLOCK_8BIT_STATE = 256
MIN_PAGED = 100_000  # bitsandbytes pages only state tensors at least this large
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Item:
    key: str
    label: str
    bytes: int
    note: str = ""
    counted: bool = True  # False: shown, but outside torch's allocator (paged optimizer state)


@dataclass
class Breakdown:
    items: list[Item] = field(default_factory=list)

    def add(self, key: str, label: str, nbytes: float, note: str = "", counted: bool = True) -> None:
        self.items.append(Item(key, label, int(nbytes), note, counted))

    @property
    def total(self) -> int:
        return sum(i.bytes for i in self.items if i.counted)

    def get(self, key: str) -> int:
        return sum(i.bytes for i in self.items if i.key == key)


def quantized_bytes(linear: Linear, method: str, double_quant: bool, blocksize: int) -> tuple[int, int]:
    """(weight bytes, absmax/scale bytes) of one linear as bitsandbytes stores it."""
    n = linear.numel
    if method in ("nf4", "fp4"):
        blocks = ceil(n / blocksize)
        if double_quant:
            return ceil(n / 2), CODE_4BIT + blocks + 4 + ceil(blocks / BLOCK_NESTED) * 4 + CODE_DYNAMIC
        return ceil(n / 2), CODE_4BIT + blocks * 4
    if method == "int8":
        return n, linear.out_features * 4
    raise ValueError(method)


def load_dtype(recipe, shape: ModelShape) -> str:
    """The dtype of the base's unquantized parameters as loaded (qtune.models.load)."""
    if recipe.model.dtype != "auto":
        return recipe.model.dtype
    if recipe.quant.method != "none":
        return recipe.quant.compute_dtype
    return shape.dtype if shape.dtype in DTYPE_BYTES else "float32"


@dataclass(frozen=True)
class ActDtypes:
    """Bytes per element of what a step saves.

    ``residual``: the residual stream, the norms and the MLP's element-wise tensors — float32 on a
    k-bit base whatever the compute dtype (its embeddings and norms are float32 after k-bit
    preparation and bitsandbytes returns its output in its input's dtype; checked on CPU).
    ``matmul``: what LoRA's matmuls and sdpa save of their inputs — the compute dtype under the
    Trainer's CUDA autocast (bf16/fp16), which casts every call's input separately (``copies``).
    """

    residual: int
    matmul: int
    copies: bool


def frozen_in_compute_dtype(recipe, device: str = "cpu") -> bool:
    """A k-bit base whose frozen float parts stay in the load dtype (``train.frozen_dtype: compute``)."""
    from qtune.kernels.dispatch import planned_choice

    return recipe.quant.method != "none" and planned_choice("frozen_dtype", recipe.train.frozen_dtype, device) == "compute"


def act_dtypes(recipe, shape: ModelShape, device: str = "cpu") -> ActDtypes:
    base = 4 if recipe.quant.method != "none" else DTYPE_BYTES[load_dtype(recipe, shape)]
    if frozen_in_compute_dtype(recipe, device):
        base = DTYPE_BYTES[load_dtype(recipe, shape)]
    autocast = device == "cuda" and recipe.quant.compute_dtype != "float32"  # TrainingArguments bf16 / fp16
    matmul = DTYPE_BYTES[recipe.quant.compute_dtype] if autocast else base
    return ActDtypes(base, matmul, autocast and matmul != base)


def weights(recipe, shape: ModelShape, bd: Breakdown, device: str = "cpu") -> None:
    q = recipe.quant
    dtype = load_dtype(recipe, shape)
    bias_numel = sum(l.out_features for l in shape.linears if l.bias)
    other = sum(shape.other_params.values())
    if q.method == "none":
        bd.add("weights", f"base weights ({dtype})", sum(l.numel for l in shape.linears) * DTYPE_BYTES[dtype])
        bd.add("float_parts", f"embeddings, norms{', lm_head' if not shape.tied else ''} ({dtype})",
               (other + bias_numel) * DTYPE_BYTES[dtype])
        return
    w = s = 0
    for l in shape.linears:
        a, b = quantized_bytes(l, q.method, q.double_quant, q.blocksize)
        w, s = w + a, s + b
    bits = "4-bit" if q.method in ("nf4", "fp4") else "8-bit"
    bd.add("weights", f"{bits} {q.method} weights ({len(shape.linears)} linears)", w)
    what = ("absmax float32 /64" if not q.double_quant else "absmax uint8 /64 + double-quant float32 /256×64 + codes") \
        if bits == "4-bit" else "row scales float32 (SCB)"
    bd.add("quant_state", what, s)
    if frozen_in_compute_dtype(recipe, device):
        bd.add("float_parts", f"embeddings, norms{', lm_head' if not shape.tied else ''} ({dtype}, train.frozen_dtype compute)",
               (other + bias_numel) * DTYPE_BYTES[dtype])
        return
    bd.add("float_parts", f"embeddings, norms{', lm_head' if not shape.tied else ''} (float32 after k-bit preparation)",
           (other + bias_numel) * 4, note=f"loaded as {dtype}" if dtype != "float32" else "")


def lora_params(recipe, shape: ModelShape) -> list[int]:
    """Element counts of every LoRA parameter tensor peft creates (A, B, and DoRA's magnitude)."""
    r = recipe.lora.rank
    sizes = []
    for l in lora_targets(shape, recipe.lora.target_modules):
        sizes += [r * l.in_features, l.out_features * r] + ([l.out_features] if recipe.lora.dora else [])
    return sizes


def optimizer_state(recipe, sizes: list[int], bd: Breakdown) -> None:
    name = recipe.train.optimizer
    if name == "sgd":
        bd.add("optimizer", "optimizer state (SGD, no momentum)", 0)
        return
    eight = name in ("adamw_8bit", "paged_adamw_8bit")
    paged = name.startswith("paged_")

    def state(n: int) -> int:
        if eight and n >= MIN_8BIT_STATE:
            return 2 * n + 2 * ceil(n / BLOCK_8BIT_STATE) * 4
        return 8 * n

    resident = sum(state(n) for n in sizes if not (paged and n >= MIN_PAGED))
    bd.add("optimizer", f"optimizer state ({name})", resident)
    if paged:
        bd.add("optimizer_paged", "paged optimizer state (CUDA unified memory, outside torch's allocator)",
               sum(state(n) for n in sizes if n >= MIN_PAGED), counted=False)


def lora(recipe, shape: ModelShape, bd: Breakdown) -> None:
    sizes = lora_params(recipe, shape)
    n = sum(sizes)
    bd.add("lora", f"LoRA weights ({n:,} float32)", 4 * n)
    bd.add("lora_grads", "LoRA gradients (float32)", 4 * n)
    optimizer_state(recipe, sizes, bd)


def _stages(recipe, shape: ModelShape, device: str) -> list[tuple[bool, float]]:
    """(wraps a LoRA linear, bytes saved per token) for the four stages of one decoder layer, in order."""
    d = act_dtypes(recipe, shape, device)
    h, I, r = shape.hidden, shape.intermediate, recipe.lora.rank
    wrapped = {l.name.split(".layers.0.", 1)[1]: l for l in lora_targets(shape, recipe.lora.target_modules)
               if ".layers.0." in l.name}

    def lora_part(names: tuple[str, ...]) -> float:
        ls = [wrapped[n] for n in names if n in wrapped]
        dropout = sum(l.in_features for l in ls) * (d.residual + 1) if recipe.lora.dropout > 0 else 0
        return r * len(ls) * d.matmul + dropout

    def lora_input(names: tuple[str, ...]) -> float:  # one shared norm output, or one autocast copy per call
        n = sum(1 for x in names if x in wrapped)
        return (n * d.matmul if d.copies else min(n, 1) * d.residual) * h

    qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    gate_up = ("mlp.gate_proj", "mlp.up_proj")
    norm = h * d.residual + 4  # a norm's residual input and its float32 rsqrt
    down_in = (I * d.matmul if "mlp.down_proj" in wrapped else 0)
    return [
        (any(n in wrapped for n in qkv),
         norm + lora_input(qkv) + (2 * shape.q_dim + 2 * shape.kv_dim) * d.matmul + 4 * shape.heads + lora_part(qkv)),
        ("self_attn.o_proj" in wrapped, lora_part(("self_attn.o_proj",))),  # its input is sdpa's output, counted
        (any(n in wrapped for n in gate_up), norm + lora_input(gate_up) + 3 * I * d.residual + lora_part(gate_up)),
        ("mlp.down_proj" in wrapped, down_in + lora_part(("mlp.down_proj",))),
    ]


def per_layer_token_bytes(recipe, shape: ModelShape, device: str = "cpu") -> float:
    """Bytes autograd saves per token in one decoder layer (see the module docstring)."""
    return sum(b for _, b in _stages(recipe, shape, device))


def first_layer_token_bytes(recipe, shape: ModelShape, device: str = "cpu") -> float:
    """Layer 0 without checkpointing: the embeddings are frozen, so nothing before its first LoRA linear
    needs a gradient and nothing there is saved (the o_proj input, sdpa's output otherwise, then is)."""
    stages = _stages(recipe, shape, device)
    d = act_dtypes(recipe, shape, device)
    first = next((i for i, (w, _) in enumerate(stages) if w), len(stages))
    residual = shape.hidden * d.residual + 4  # a norm's input and rsqrt: no gradient yet
    extra = {0: -residual, 1: shape.q_dim * d.matmul, 2: -residual}.get(first, 0)
    return extra + sum(b for _, b in stages[first:])


def activations(recipe, shape: ModelShape, batch: int, seq: int, bd: Breakdown, device: str = "cpu") -> None:
    d = act_dtypes(recipe, shape, device)
    n = batch * seq
    per_token = per_layer_token_bytes(recipe, shape, device)
    rope = 2 * seq * shape.head_dim * d.residual  # cos and sin, shared by the layers
    labels = 8 * n
    final_norm = (shape.hidden * d.residual + 4) * n
    offload = recipe.train.offload_activations and device == "cuda"  # on CPU host memory is where they are
    if recipe.train.gradient_checkpointing:
        kept = shape.layers * shape.hidden * d.residual * n  # each checkpointed layer's input
        bd.add("activations", f"activations, checkpointed ({shape.layers} layer inputs"
               f"{' offloaded' if offload else ''} + 1 layer recomputed)",
               (0 if offload else kept) + per_token * n + final_norm + rope + labels)
        if offload:
            bd.add("offloaded", "checkpointed layer inputs in pinned host memory (train.offload_activations)", kept,
                   counted=False)
    else:
        total = ((shape.layers - 1) * per_token + first_layer_token_bytes(recipe, shape, device)) * n
        if offload:  # backward brings them back a tensor at a time: about one layer's on the device
            bd.add("activations", "activations, offloaded (one layer back on the device at a time)",
                   per_token * n + final_norm + rope + labels)
            bd.add("offloaded", "saved activations in pinned host memory (train.offload_activations)", total,
                   counted=False)
            return
        bd.add("activations", f"activations ({shape.layers} layers × {per_token / 1024:.1f} KiB/token)",
               total + final_norm + rope + labels)


def logits(recipe, shape: ModelShape, batch: int, seq: int, bd: Breakdown, device: str = "cpu") -> None:
    """Three float32 B·T·V blocks, plus the 16-bit logits the float32 copy is made from (autocast, 16-bit base)."""
    from qtune.kernels.dispatch import planned_choice

    if planned_choice("cross_entropy", recipe.train.cross_entropy, device) == "liger":
        bd.add("logits", "liger fused linear + cross-entropy (no B·T·V logits: hidden-state gradient + one chunk, "
               "~2 × B·T·h float32)", 8 * batch * seq * shape.hidden)
        return
    n = batch * seq * shape.vocab
    d = act_dtypes(recipe, shape, device)
    extra = 2 * n if (d.matmul != 4 or d.residual != 4) else 0
    bd.add("logits", f"logits + loss (3 × B·T·V float32{' + 16-bit logits' if extra else ''})", 12 * n + extra)


def static(recipe, shape: ModelShape, device: str = "cpu") -> Breakdown:
    bd = Breakdown()
    weights(recipe, shape, bd, device)
    lora(recipe, shape, bd)
    return bd


def train_peak(recipe, shape: ModelShape, batch: int, seq: int, device: str = "cpu") -> Breakdown:
    """The allocator's peak in a training step: static storage + saved activations + the logits block."""
    bd = static(recipe, shape, device)
    activations(recipe, shape, batch, seq, bd, device)
    logits(recipe, shape, batch, seq, bd, device)
    return bd


def base_bytes(recipe, shape: ModelShape) -> int:
    bd = Breakdown()
    weights(recipe, shape, bd)
    return bd.total


def eval_peak(recipe, shape: ModelShape, batch: int, seq: int) -> int:
    """No-grad forward (qtune.eval.loss): the weights, LoRA, one layer's intermediates and three B·T·V copies."""
    s = act_dtypes(recipe, shape).residual  # eval runs outside the Trainer's autocast
    n = batch * seq
    working = n * (3 * shape.intermediate + 2 * shape.hidden) * s
    return base_bytes(recipe, shape) + 4 * sum(lora_params(recipe, shape)) + working + 3 * 4 * n * shape.vocab + (
        s * n * shape.vocab if s != 4 else 0)


def merge_peak(shape: ModelShape) -> int:
    """``qtune merge`` (qtune.export.merge): the base in float32 on CPU plus one linear's ``B·A`` delta."""
    return 4 * shape.params + 4 * max(l.numel for l in shape.linears)


def calibration_peak(recipe, shape: ModelShape) -> int:
    """GPTQ/AWQ (qtune.export.sequential): the merged float32 model, one layer's calibration inputs and
    outputs, every linear input of that layer (AWQ's scale search), and GPTQ's float32 Hessians."""
    c = recipe.export.calibration if recipe.export is not None else None
    samples, seq = (c.samples, c.seq_len) if c is not None else (128, 256)
    tokens = samples * seq
    layer = shape.layer_linears()
    hidden_states = 2 * tokens * shape.hidden * 4
    linear_inputs = tokens * (3 * shape.hidden + shape.intermediate) * 4  # q/k/v share, o, gate/up share, down
    hessians = sum(l.in_features ** 2 for l in layer.values()) * 4
    return 4 * shape.params + hidden_states + linear_inputs + hessians
