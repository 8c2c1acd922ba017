"""The recipe schema: one pydantic model per YAML section, ``extra="forbid"`` everywhere.

A recipe is data. Choices are ``Literal`` types built from the registries they select from, so a
typo is an error that names the allowed values, never a silent default. Values derived from
several fields (effective batch size, LoRA scaling) are computed here, once.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qtune.registry.templates import TEMPLATE_CHOICES
from qtune.registry.choices import COMPILE_MODES, CROSS_ENTROPY_MODES, FROZEN_DTYPES, HUB_PREFIX, KERNEL_MODES, RMS_NORM_MODES, ROPE_MODES
from qtune.recipe.distributed_rules import problems as distributed_problems
from qtune.registry.exports import (
    CALIBRATION_TEXTS,
    DEFAULT_MERGE_BASE,
    EXPORT_DEVICES,
    EXPORT_FORMATS,
    FIDELITY_MODES,
    GGUF_TYPES,
    MERGE_BASES,
    QUANT_BITS,
)
from qtune.registry.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, REFERENCES
from qtune.registry.quant import QUANT_METHODS

DType = Literal["bfloat16", "float16", "float32", "auto"]
ComputeDType = Literal["bfloat16", "float16", "float32"]
QuantMethod = Literal[tuple(QUANT_METHODS)]  # nf4 | fp4 | int8 | none
# Keep in step with qtune.data.formats.FORMATS (a test checks it).
DataFormat = Literal["auto", "chat", "sharegpt", "instruction", "prompt_completion", "text"]
ChatTemplate = Literal[TEMPLATE_CHOICES]  # auto | tokenizer | a template qtune knows by name
TrainOn = Literal["assistant", "last_assistant", "all"]
Truncation = Literal["left", "drop"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
# Names are transformers' ``optim`` values; paged 8-bit AdamW is the QLoRA paper's optimizer.
Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd"]
Device = Literal["auto", "cpu", "cuda"]
TrackingBackend = Literal["wandb", "tensorboard", "none"]
OnNonFinite = Literal["stop", "skip"]
Kernels = Literal[tuple(KERNEL_MODES)]  # auto | blocks | triton | bitsandbytes
FrozenDType = Literal[tuple(FROZEN_DTYPES)]  # auto | float32 | compute
CrossEntropy = Literal[tuple(CROSS_ENTROPY_MODES)]  # auto | torch | liger
RMSNorm = Literal[tuple(RMS_NORM_MODES)]
Rope = Literal[tuple(ROPE_MODES)]
Compile = Literal[tuple(COMPILE_MODES)]  # auto | off | layers
ExportFormat = Literal[EXPORT_FORMATS]
MergeBase = Literal[MERGE_BASES]
GGUFType = Literal[GGUF_TYPES]
QuantBits = Literal[QUANT_BITS]
# transformers' TrainingArguments names: fsdp="<sharding> auto_wrap [offload]", ddp_backend.
Strategy = Literal["ddp", "fsdp"]
Backend = Literal["auto", "nccl", "gloo"]
Sharding = Literal["full_shard", "shard_grad_op"]
QuantStorage = Literal["uint8", "bfloat16", "float16", "float32"]
ObjectiveName = Literal[tuple(OBJECTIVES)]  # sft | dpo | orpo | kto | simpo
PreferenceLoss = Literal[tuple(sorted({loss for spec in OBJECTIVES.values() for loss in spec.losses}))]
Reference = Literal[tuple(REFERENCES)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    path: str = Field(description="Hub id, local directory, or a packaged model name (qtune models)")
    dtype: DType = "auto"
    trust_remote_code: bool = False
    revision: Optional[str] = None

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model (Hub id, local directory or packaged name)")
        return v


class QuantSection(Section):
    method: QuantMethod = "nf4"
    double_quant: bool = True
    compute_dtype: ComputeDType = "bfloat16"
    int8_threshold: float = Field(6.0, gt=0, description="LLM.int8 outlier threshold")
    blocksize: Literal[64] = 64  # what bitsandbytes' 4-bit loading uses; named for the kernels
    quant_storage: QuantStorage = Field(
        "uint8", description="dtype the packed 4-bit weights are stored in (bnb_4bit_quant_storage); FSDP needs the compute dtype"
    )


class LoraSection(Section):
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"
    dora: bool = False
    rslora: bool = False

    @property
    def scaling(self) -> float:
        """The factor applied to ``B @ A``: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


class DataSource(Section):
    """One training source: a local file or folder (jsonl/json/parquet/csv), or ``hf:<dataset id>``."""

    path: str = Field(description="file, folder, or hf:<org/name> for a Hub dataset")
    weight: float = Field(1.0, gt=0, description="rows are repeated (>1) or subsampled (<1) by this factor")
    format: Optional[DataFormat] = Field(None, description="overrides data.format for this source")
    split: str = Field("train", description="split of a Hub dataset")

    @property
    def is_hub(self) -> bool:
        return self.path.startswith(HUB_PREFIX)


class DataSection(Section):
    train: list[DataSource] = Field(min_length=1, description="sources, relative to the recipe; a plain string is a path")
    eval: Optional[DataSource] = Field(None, description="held-out file; else data.eval_fraction of train")
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    format: DataFormat = "auto"
    chat_template: ChatTemplate = Field("auto", description="auto: the model's own, else its family's, else chatml (said in one line)")
    system_prompt: Optional[str] = None
    train_on: TrainOn = Field("assistant", description="tokens with a loss: every assistant turn, the last one, or all")
    max_length: int = Field(512, ge=8)
    truncation: Truncation = Field(
        "left", description="left: cut the oldest tokens, never the last response; drop: drop rows that do not fit"
    )
    packing: bool = Field(False, description="pack short examples into max_length rows (attention never crosses examples)")
    max_untrained_fraction: float = Field(
        0.05, ge=0, le=1, description="train refuses when more rows than this share have no trained token"
    )
    cache: bool = Field(True, description="reuse tokenized data from QTUNE_CACHE (~/.cache/qtune) when nothing changed")
    max_examples: Optional[int] = Field(None, ge=1)
    max_eval_examples: Optional[int] = Field(None, ge=1)

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        v = [v] if isinstance(v, (str, dict)) else v
        return [{"path": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("eval", mode="before")
    @classmethod
    def _path_or_source(cls, v):
        return {"path": v} if isinstance(v, str) else v


class TrainSection(Section):
    objective: ObjectiveName = Field(
        DEFAULT_OBJECTIVE,
        description="sft, or a preference objective (dpo, "
        "orpo, kto, simpo) on pairs or labelled completions; its parameters are the preference section",
    )
    max_steps: Optional[int] = Field(None, ge=1)
    epochs: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(4, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0, lt=1)
    scheduler: Scheduler = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: Optimizer = "adamw_torch"
    gradient_checkpointing: bool = True
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    eval_steps: Optional[int] = Field(None, ge=1, description="also evaluates before and after")
    save_steps: Optional[int] = Field(None, ge=1)
    keep_checkpoints: int = Field(3, ge=1, description="the newest N complete checkpoints are kept, older ones deleted")
    on_nan: OnNonFinite = Field(
        "stop", description="a step whose loss or gradients are NaN/inf: stop (keep the last good checkpoint) or skip its update"
    )
    output_dir: str = "runs/qtune"
    device: Device = "auto"
    kernels: Kernels = Field(
        "auto",
        description="4-bit LoRA layers: whole-block autograd nodes (blocks), the "
        "per-linear Triton path, bitsandbytes, or auto (the mode measured fastest on that kind of device: bitsandbytes today)",
    )
    frozen_dtype: FrozenDType = Field(
        "auto",
        description="dtype of a 4-bit base's frozen embeddings, lm_head and norms: float32 (peft's upcast; the residual "
        "stream and every checkpointed layer input float32), compute (quant.compute_dtype: half those bytes in bf16), "
        "or auto (float32 until a measurement on that device kind says otherwise)",
    )
    cross_entropy: CrossEntropy = Field(
        "auto",
        description="the loss: torch (float32 tokens x vocab logits materialised), liger (liger-kernel's fused linear + "
        "cross-entropy, no logits kept; pip install 'qtune[fast]'), or auto (torch until measured)",
    )
    rms_norm: RMSNorm = Field(
        "auto",
        description="the RMSNorms: torch, liger (liger-kernel's fused kernel on "
        "the model instance; CUDA only), or auto (torch until measured)",
    )
    rope: Rope = Field(
        "auto",
        description="the rotary embedding: torch, liger (liger-kernel's fused kernel in "
        "each attention module), or auto (torch until measured)",
    )
    compile: Compile = Field(
        "auto",
        description="torch.compile: layers (each decoder layer compiled in "
        "place), off, or auto (off until measured faster on that kind of device)",
    )
    offload_activations: bool = Field(
        False,
        description="keep the saved activations (with checkpointing: each "
        "layer's input) in pinned CPU memory until backward (torch.autograd.graph.save_on_cpu); on CPU the same hooks run and save nothing",
    )

    @property
    def effective_batch_size(self) -> int:
        """Rows per optimizer step on one process."""
        return self.micro_batch_size * self.grad_accumulation

    def global_batch_size(self, world_size: int) -> int:
        """Rows per optimizer step over all processes: micro batch x grad accumulation x world size."""
        return self.effective_batch_size * world_size


class PreferenceSection(Section):
    """The parameters of a preference objective (``train.objective``); each objective reads the fields its registry
    entry names (qtune.registry.objectives), and a field changed from its default for an objective that ignores it
    is refused."""

    beta: float = Field(
        0.1,
        gt=0,
        description="dpo/kto: strength of the pull toward the reference; orpo: weight of the odds-ratio term (lambda); simpo: reward scale",
    )
    loss_type: Optional[PreferenceLoss] = Field(
        None, description="dpo: sigmoid (default), hinge, ipo, robust, ...; kto: kto (default) or apo_zero_unpaired"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="dpo (robust, exo_pair) and simpo: the assumed share of flipped preference labels"
    )
    reference: Reference = Field(
        "adapter_disabled",
        description="dpo/kto: the reference log-probs: "
        "adapter_disabled (each step, no second copy of the base) or precomputed (once, before training)",
    )
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin")
    cpo_alpha: float = Field(0.0, ge=0, description="simpo: weight of an NLL term on chosen (0: SimPO as published; 1: CPO-SimPO)")
    desirable_weight: float = Field(1.0, gt=0, description="kto: loss weight of the desirable (label true) completions")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: loss weight of the undesirable (label false) completions")


class DistributedSection(Section):
    """More than one process (GPU), through torchrun; the Trainer does the DDP/FSDP wrapping."""

    strategy: Strategy = Field("ddp", description="ddp: each rank holds the whole (4-bit) base; fsdp: the base is sharded")
    nproc: int = Field(1, ge=1, description="processes per node `qtune train` launches through torchrun (--nproc overrides)")
    backend: Backend = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    sharding: Sharding = Field(
        "full_shard",
        description="fsdp only: full_shard re-shards each layer after its forward; shard_grad_op keeps it gathered until backward",
    )
    cpu_offload: bool = Field(False, description="fsdp only: keep parameters and gradients in CPU memory between uses")


class TrackingSection(Section):
    backend: TrackingBackend = "none"
    project: str = "qtune"
    run_name: Optional[str] = None


class CalibrationMix(Section):
    """General text mixed into the calibration blocks, so the quantizer also fits inputs beyond the task."""

    source: str = Field(
        description=f"a JSONL file in the recipe's data format, a text file or folder (.txt/.md/.rst), "
        f"or a bundled text: {', '.join(CALIBRATION_TEXTS)}"
    )
    fraction: float = Field(gt=0, lt=1, description="share of export.calibration.samples cut from it (rounded to whole blocks)")


class CalibrationSection(Section):
    source: str = Field("train", description="train, eval, or a JSONL file in the recipe's data format")
    samples: int = Field(128, ge=1)
    seq_len: int = Field(256, ge=16)
    seed: int = 0
    mix: Optional[CalibrationMix] = Field(None, description="general text mixed in (default: none, the recipe's data only)")


class ExportSection(Section):
    formats: list[ExportFormat] = Field(default_factory=lambda: ["merged"], min_length=1)
    base: MergeBase = DEFAULT_MERGE_BASE
    bits: QuantBits = 4
    group_size: int = Field(64, description="input columns per scale; -1 for one group per row")
    sym: bool = Field(False, description="GPTQ symmetric grid: vLLM's Marlin kernels need it; it cost accuracy on SmolLM2 (docs/export.md)")
    act_order: bool = Field(True, description="GPTQ desc_act: quantize the most activated columns first")
    damp: float = Field(0.01, gt=0, lt=1)
    grid_search: bool = Field(True, description="GPTQ: per group, the shrunk range with the least rounding error")
    gguf_types: list[GGUFType] = Field(default_factory=lambda: ["Q8_0"], min_length=1)
    calibration: CalibrationSection = CalibrationSection()
    device: Literal[EXPORT_DEVICES] = Field("auto", description="where layers are merged, quantized and measured")
    fidelity: bool = Field(True, description="measure perplexity and eval loss of every export")
    fidelity_tokens: Optional[int] = Field(
        None, ge=1, description="eval-text tokens scored per model (default: 1024 on CPU, 65536 on a GPU)"
    )
    fidelity_examples: Optional[int] = Field(
        None, ge=0, description="eval conversations scored per model, 0 for all (default: 32 on CPU, all on a GPU)"
    )
    fidelity_mode: Literal[FIDELITY_MODES] = Field(
        "auto", description="auto: in memory when the model fits (its planned peak in 80% of the free memory), else layers; memory; layers"
    )
    threads: Optional[int] = Field(
        None, ge=1, le=4096, description="CPU threads of the export (default: PyTorch's); changes speed, not results"
    )

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v != -1 and v < 8:
            raise ValueError("must be -1 (one group per row) or at least 8")
        return v


class Recipe(Section):
    model: ModelSection
    quant: QuantSection = QuantSection()
    lora: LoraSection = LoraSection()
    data: DataSection
    train: TrainSection = TrainSection()
    tracking: TrackingSection = TrackingSection()
    export: Optional[ExportSection] = None
    distributed: DistributedSection = DistributedSection()
    preference: PreferenceSection = PreferenceSection()

    @model_validator(mode="after")
    def _paged_optim_needs_cuda(self) -> "Recipe":
        if self.optimizer_is_paged and self.train.device == "cpu":
            raise ValueError(
                f"train.optimizer: '{self.train.optimizer}' pages optimizer state to GPU memory and "
                "needs CUDA (given train.device: cpu); use adamw_torch on CPU"
            )
        return self

    @model_validator(mode="after")
    def _preference_fits(self) -> "Recipe":
        spec = OBJECTIVES[self.train.objective]
        # fields away from their defaults (a dumped recipe.yaml repeats every default, so "set" cannot be the test)
        changed = {n for n, f in PreferenceSection.model_fields.items() if getattr(self.preference, n) != f.default}
        if spec.rows == "sft":
            if changed:
                raise ValueError(
                    f"preference: set, but train.objective is '{self.train.objective}'; "
                    f"set train.objective to one of {', '.join(o for o in OBJECTIVES if o != 'sft')}, or remove the section"
                )
            return self
        ignored = sorted(changed - spec.params)
        if ignored:
            raise ValueError(
                "\n".join(
                    f"preference.{name}: train.objective '{self.train.objective}' does not use it "
                    f"(it reads {', '.join(sorted(spec.params))}); remove it"
                    for name in ignored
                )
            )
        loss = self.preference.loss_type
        if loss is not None and loss not in spec.losses:
            raise ValueError(f"preference.loss_type: '{loss}' is not a loss of {self.train.objective} (one of {', '.join(spec.losses)})")
        if self.data.packing:
            raise ValueError(
                f"data.packing: a preference objective ('{self.train.objective}') scores whole "
                f"completions, so rows cannot be packed; set data.packing: false"
            )
        return self

    @model_validator(mode="after")
    def _distributed_fits(self) -> "Recipe":
        found = distributed_problems(self)
        if found:
            raise ValueError("\n".join(found))
        return self

    @property
    def optimizer_is_paged(self) -> bool:
        return self.train.optimizer.startswith("paged_")
