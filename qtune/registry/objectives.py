"""``train.objective``: what a run optimizes, each name and its loss variants defined here once.

The recipe schema's choices and its ``preference`` section's rules read this; :mod:`qtune.train.objectives`
registers each name's data step and Trainer (TRL's for the preference objectives). ``rows`` says which rows
an objective reads: ``sft`` the formats of :mod:`qtune.data.formats`, ``pairs`` ``{prompt, chosen, rejected}``,
``unpaired`` ``{prompt, completion, label}`` (:mod:`qtune.data.preference`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectiveSpec:
    about: str
    rows: str  # sft | pairs | unpaired
    losses: tuple[str, ...] = ()  # preference.loss_type choices; the first is the default
    reference: bool = False  # the loss compares with a reference model (the adapter-disabled base)
    params: frozenset[str] = frozenset()  # the preference fields this objective reads


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "sft": ObjectiveSpec("next-token loss on the trained tokens of each row (data.train_on)", "sft"),
    "dpo": ObjectiveSpec(
        "Direct Preference Optimization (TRL DPOTrainer): chosen over rejected, relative to the reference",
        "pairs", ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "exo_pair", "apo_zero", "apo_down"),
        reference=True, params=frozenset({"beta", "loss_type", "label_smoothing", "reference"})),
    "orpo": ObjectiveSpec(
        "Odds Ratio Preference Optimization (TRL ORPOTrainer): NLL on chosen plus an odds-ratio term; no reference",
        "pairs", params=frozenset({"beta"})),
    "kto": ObjectiveSpec(
        "Kahneman-Tversky Optimization (TRL KTOTrainer): unpaired desirable/undesirable completions vs the reference",
        "unpaired", ("kto", "apo_zero_unpaired"), reference=True,
        params=frozenset({"beta", "loss_type", "reference", "desirable_weight", "undesirable_weight"})),
    "simpo": ObjectiveSpec(
        "SimPO (TRL CPOTrainer, loss_type simpo): length-normalized chosen-over-rejected with a target margin; no reference",
        "pairs", params=frozenset({"beta", "label_smoothing", "simpo_gamma", "cpo_alpha"})),
}
DEFAULT_OBJECTIVE = "sft"
REFERENCES: dict[str, str] = {  # preference.reference, for objectives with a reference model
    "adapter_disabled": "log-probs of the policy with its adapter switched off (TRL's frozen 'ref' copy of the initial "
                        "adapter), computed each step: no second copy of the base",
    "precomputed": "log-probs of the reference computed once over the data before training (TRL precompute_ref_log_probs); "
                   "no reference forward during training",
}
