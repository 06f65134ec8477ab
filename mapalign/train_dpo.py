"""Preference fine-tuning: the original DPO baseline on an HH-RLHF harmless/helpful mixture, and MAP-DPO.

    # the original baseline (not MAP-derived): modelsDPO/{model}-{n}sample-{β}beta-{p}harmless
    python trainDPO.py train_dpo --sample_size=2000 --beta=0.1 --harmless_ratio=0.3 [--data_source_path=hh/]
    # MAP-DPO: preference pairs ranked by λᵀr among several samples per prompt of a results file
    python trainDPO.py train_map_dpo --file_path=results/smollm2-135m-builtin.json \
        --value_list=sentiment,harmlessness --lam_list=0.8,1.5 --beta=1.0 --use_lora=True

MAP-DPO and the MAP target. For a prompt x, gendata's samples-per-prompt option gives M samples
y_1..y_M ~ p0(·|x), each scored by every value. With R = λᵀr, DPO's population optimum for pairs whose
labels follow the Bradley-Terry model P(y_i ≻ y_j) = σ(R_i − R_j) is

    β·log p(y|x)/p0(y|x) = R(x,y) + const(x),   i.e.   p ∝ p0·exp(λᵀr/β),

which at β = 1 is exactly p_λ. Pairing options (--pairing):
  * "soft" (default): every pair of distinct samples of a prompt, both orientations, weighted by the
    Bradley-Terry probabilities σ(±λᵀΔr) (soft labels, SoftDPOTrainer). Same optimum as "bradley_terry"
    without its label noise; with the sigmoid loss and β = 1 it aims at p_λ.
  * "bradley_terry": every pair of distinct samples of a prompt, one label drawn (seeded) with
    probability σ(λᵀΔr). Same optimum, noisier labels.
  * "best_worst": per prompt, chosen = argmax λᵀr, rejected = argmin (the 2025 refactor's choice, with
    λᵀr instead of one reward). Hard labels are Bradley-Terry with an infinite reward scale: training
    long enough drives the policy past p_λ toward the best-of-M mode. Strong signal per pair; good for
    small budgets. --margin drops prompts whose gap λᵀ(r_best − r_worst) is ≤ margin.
  * "all": every pair with gap > margin, ordered by λᵀr: hard labels again (same caveat), more pairs.
Losses: DPO's --loss_type list (sigmoid, hinge, ipo, robust, ...; weights via --loss_weights) and KTO
(--loss_type=kto or apo_zero_unpaired, through KTOTrainer: a sample is desirable when its λᵀr exceeds
its prompt's mean λᵀr by more than --margin, undesirable when below by more than --margin; this is a
heuristic labelling, and KTO's optimum is not p_λ). Only "sigmoid" with bradley_terry pairs and β = 1
targets p_λ exactly; the others are offered as the preference losses TRL supports.

Exact samples. Pairs are trained on the token ids that were sampled: the prompt tokenised alone, as
generation saw it, then the continuation's ids (records' `continuation_ids` when present; otherwise
the continuation text tokenised on its own, never prompt + stripped text re-tokenised). EOS is kept
only where the sample ended with it: a continuation cut at max_new_tokens gets none (TRL's DPOTrainer
would append EOS to every text, teaching the model to stop where it was merely truncated).

Iterated MAP-DPO (--palette=c1,c2,...): rounds of (sample pairs from the current policy on the
training prompts, score, soft-label DPO toward the current λ), with λ corrected between rounds from
the policy's realized levels on held-out prompts (primaldual.py), until the palette is met.
"""
import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mapalign import arguments
from mapalign import configs
from mapalign import dpodata
from mapalign import models
from mapalign import records
from mapalign import training
from mapalign.configs import option
from mapalign.errors import InputError

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
KTO_LOSSES = ("kto", "apo_zero_unpaired")
PAIRINGS = ("soft", "bradley_terry", "best_worst", "all")


# ---------------------------------------------------------------------------------------------
# Configs: PreferenceConfig is what build_preference_trainer reads; each command extends it.

@dataclass(kw_only=True)
class PreferenceConfig(training.TrainerConfig):
    """DPO / KTO settings shared by both commands (TRL's DPOConfig / KTOConfig fields of the same names)."""
    beta: float = option(0.1, "DPO/KTO β (the KL weight: the policy targets p0·exp(r/β))")
    loss_type: str = option("sigmoid", "DPO loss(es), comma-separated (sigmoid, hinge, ipo, robust, ...), or kto / "
                                       "apo_zero_unpaired (KTOTrainer); see the module docstring")
    loss_weights: Optional[str] = option(None, "weights of several --loss_type losses, comma-separated (TRL's)")
    label_smoothing: float = option(0.0, "DPO label smoothing ε (TRL's; robust/cDPO losses)")
    desirable_weight: float = option(1.0, "KTO: weight of desirable examples' loss")
    undesirable_weight: float = option(1.0, "KTO: weight of undesirable examples' loss")
    learning_rate: float = option(5e-5, "optimizer learning rate (5e-5, the transformers default the original's "
                                        "TRL, mid-2024, used for DPO)")
    num_train_epochs: float = option(1, "passes over the pairs (the original's 1)")
    per_device_train_batch_size: int = option(2, "pairs per device per forward/backward pass (the original's 2)")
    gradient_accumulation_steps: int = option(10, "passes per optimizer step (the original's 10)")
    max_length: int = option(1024, "tokens of prompt + completion kept (TRL truncates longer ones)")
    use_chat_template: Optional[bool] = option(None, "format prompts with the chat template (default: when the "
                                                     "model has one)")


# the hyperparameters recorded in map_training.json (`hyperparameters`)
HYPERPARAMETERS = ("loss_weights", "label_smoothing", "desirable_weight", "undesirable_weight", "learning_rate",
                   "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                   "use_chat_template", "report_to", "bf16", "gradient_checkpointing", "logging_steps", "save_steps",
                   "max_steps")


@dataclass(kw_only=True)
class DPOBaselineConfig(PreferenceConfig):
    """train_dpo: the original DPO baseline on a seeded HH-RLHF harmless/helpful mixture (--use_lora trains a
    fresh LoRA adapter; the original instead loaded an existing adapter folder)."""
    sample_size: int = option(doc="rows drawn from HH-RLHF in total (the original grid used 2000)")
    beta: float = option(doc="DPO β (original grid 0.1, 0.5)")
    harmless_ratio: float = option(doc="p, the harmless-base share; helpful-base gets 1 − p")
    save_path: Optional[str] = option(None, "output folder; default modelsDPO/{model}-{sample_size}sample-{beta}beta-"
                                            "{p}harmless, as the original")
    model_name: str = option(models.DEFAULT_MODEL, "base model (the original: facebook/opt-1.3b = opt1.3b; default "
                                                   "the embedded SmolLM2)")
    data_source_path: Optional[str] = option(None, "local HH-RLHF copy (see genDPOdata); default the hub (needs it "
                                                   "cached offline)")
    split: str = option("train", "HH-RLHF split")
    max_words: int = option(50, "words kept per field (50, as the original)")


@dataclass(kw_only=True)
class MAPDPOConfig(PreferenceConfig):
    """train_map_dpo: MAP-DPO from a results file with several samples per prompt (module docstring)."""
    file_path: str = option(doc="results file (gendata with samples per prompt; rewards added for every value)")
    lam_list: Optional[str] = option(None, "λ, one per value of --value_list (same order)")
    value_list: Optional[str] = option(None, "the values λ weights (comma-separated; all = the task's values)")
    model_name: Optional[str] = option(None, "the model that generated the file (p0 and the starting policy); "
                                             "default: the results file's metadata model_name")
    save_path: Optional[str] = option(None, "default modelsDPO/{file stem}-lam_{λ}-val_{values}-{pairing}-{loss} "
                                            "(pal_{c} with --palette)")
    pairing: str = option("soft", "soft | bradley_terry | best_worst | all (module docstring)")
    margin: float = option(0.0, "best_worst/all: keep a pair only when its λᵀr gap exceeds this; KTO: the labelling "
                                "margin around the prompt's mean λᵀr")
    max_pairs_per_prompt: Optional[int] = option(None, "keep at most this many pairs per prompt (seeded); None = all")
    beta: float = option(1.0, "DPO β; 1.0 with soft or bradley_terry pairs and the sigmoid loss aims at p_λ")
    use_chat_template: Optional[bool] = option(None, "default: the results file's metadata, else auto")
    lambda_file: Optional[str] = option(
        None, "a λ target from alignValues.py instead of lam_list (results/alignValues.jsonl, last entry): its "
              "sampling config and base model must match the results file's (the pairs are samples of that file), "
              "else the run is refused unless allow_mismatch (recorded as a warning)")
    allow_mismatch: bool = option(False, "train even when the λ file's sampling config or base model differs")
    palette: Optional[str] = option(
        None, "target levels c1,c2,...: iterated MAP-DPO (module docstring). Each of palette_rounds rounds trains "
              "on soft-label pairs toward the current λ (round 1: the file's samples; later rounds: fresh samples "
              "of the current policy, as many per prompt as the file has), then measures the realized levels on "
              "the file's last palette_prompts prompts (held out from training; palette_samples samples each) and "
              "updates λ; stops once every value is within palette_tol_se standard errors. num_train_epochs and "
              "max_steps apply to each round")
    palette_rounds: int = option(3, "--palette: rounds of (sample, pair, train, update λ)")
    palette_prompts: int = option(8, "--palette: held-out prompts (the file's last N)")
    palette_samples: int = option(4, "--palette: samples per held-out prompt per round")
    dual_update: str = option("exact", "--palette: exact (dual solve on importance weights) or ascent")
    dual_step: float = option(1.0, "--palette: η of --dual_update=ascent")
    palette_tol_se: float = option(2.0, "--palette: stop once every value is within this many standard errors")


def parse_loss_type(loss_type):
    """('dpo' | 'kto', list of loss names) from "sigmoid", "ipo,hinge", a list, or "kto"."""
    losses = arguments.str_list(loss_type, "loss_type")
    unknown = [x for x in losses if x not in DPO_LOSSES + KTO_LOSSES]
    if unknown:
        raise InputError(f"unknown --loss_type {unknown}; DPO losses: {', '.join(DPO_LOSSES)}; "
                         f"KTO losses (KTOTrainer, one at a time): {', '.join(KTO_LOSSES)}")
    if any(x in KTO_LOSSES for x in losses):
        if len(losses) > 1:
            raise InputError(f"--loss_type={losses}: a KTO loss cannot be combined with others")
        return "kto", losses
    return "dpo", losses


# ---------------------------------------------------------------------------------------------
# MAP preference data

def map_scores(recs, values, lam, source="records"):
    """(k, n) rewards of `values`, the (n,) MAP reward λᵀr and (n,) prompt groups of records."""
    rewards = records.reward_matrix(recs, values, source=source)
    return rewards, np.asarray(lam, dtype=np.float64) @ rewards, records.prompt_groups(recs)


def map_preference_pairs(recs, values, lam, pairing="soft", margin=0.0, max_pairs_per_prompt=None,
                         seed=0, source="records"):
    """Preference pairs from several samples per prompt, ranked by λᵀr (see the module docstring).

    Args:
        recs: records (prompt, continuation or generated, prompt_id, one float per value).
        values, lam: the aligned values and λ (same order).
        pairing: "soft" | "bradley_terry" | "best_worst" | "all".
        margin: best_worst/all keep a pair only when its λᵀr gap exceeds this (ignored by soft and
            bradley_terry, where dropping close pairs would bias the labels).
        max_pairs_per_prompt: keep at most this many pairs per prompt (random, seeded); None = all.
        seed: seeds label draws and pair subsampling.
    Returns:
        list of dicts {prompt (raw), chosen, rejected, prompt_id, gap (λᵀr chosen − rejected)}; "soft" pairs
        also carry soft_label = σ(gap), the probability that `chosen` is preferred (chosen is the higher
        λᵀr of the two). Records' prompt_ids/continuation_ids, when present, are passed on as
        prompt_ids/chosen_ids/rejected_ids. Pairs whose two continuations are identical (same token ids
        when known, else same text) are skipped (they carry no gradient).
    """
    if pairing not in PAIRINGS:
        raise InputError(f"--pairing must be one of {PAIRINGS}; got {pairing!r}")
    _, score, groups = map_scores(recs, values, lam, source=source)
    rng = np.random.default_rng(seed)
    texts = [records.continuation_of(r) for r in recs]
    same = [tuple(r["continuation_ids"]) if "continuation_ids" in r else t for r, t in zip(recs, texts)]
    members = {}
    for j, g in enumerate(groups):
        members.setdefault(int(g), []).append(j)
    if all(len(m) < 2 for m in members.values()):
        raise InputError(f"{source} has one sample per prompt; MAP-DPO needs several (generate with gendata's "
                         "samples-per-prompt option, e.g. 4 or more).")
    pairs = []
    for idx in members.values():
        candidates = []
        if pairing == "best_worst":
            best = max(idx, key=lambda j: score[j])
            worst = min(idx, key=lambda j: score[j])
            if score[best] - score[worst] > margin:
                candidates.append((best, worst))
        else:
            for a in range(len(idx)):
                for b in range(a + 1, len(idx)):
                    i, j = idx[a], idx[b]
                    gap = score[i] - score[j]
                    if pairing == "all":
                        if abs(gap) > margin:
                            candidates.append((i, j) if gap > 0 else (j, i))
                    elif pairing == "soft":
                        candidates.append((i, j) if gap >= 0 else (j, i))
                    else:  # Bradley-Terry label: i wins with probability σ(gap)
                        p_i = 0.5 * (1.0 + np.tanh(0.5 * gap))
                        candidates.append((i, j) if rng.random() < p_i else (j, i))
        candidates = [(c, r) for c, r in candidates if same[c] != same[r]]
        if max_pairs_per_prompt is not None and len(candidates) > int(max_pairs_per_prompt):
            keep = rng.choice(len(candidates), size=int(max_pairs_per_prompt), replace=False)
            candidates = [candidates[k] for k in sorted(keep)]
        for c, r in candidates:
            pair = {"prompt": recs[c]["prompt"], "chosen": texts[c], "rejected": texts[r],
                    "prompt_id": int(records.prompt_id(recs[c], c)), "gap": float(score[c] - score[r])}
            if pairing == "soft":
                pair["soft_label"] = float(0.5 * (1.0 + np.tanh(0.5 * pair["gap"])))
            if "continuation_ids" in recs[c] and "continuation_ids" in recs[r]:
                pair["chosen_ids"] = list(recs[c]["continuation_ids"])
                pair["rejected_ids"] = list(recs[r]["continuation_ids"])
                if "prompt_ids" in recs[c]:
                    pair["prompt_ids"] = list(recs[c]["prompt_ids"])
            pairs.append(pair)
    if not pairs:
        raise InputError(f"no preference pair left from {source} (pairing={pairing!r}, margin={margin}); "
                         "lower --margin or generate more samples per prompt.")
    return pairs


def map_kto_examples(recs, values, lam, margin=0.0, source="records"):
    """KTO examples: a sample is desirable (label True) when its λᵀr exceeds its prompt's mean λᵀr by
    more than `margin`, undesirable when below by more than `margin`. Returns dicts
    {prompt (raw), completion, label, prompt_id}."""
    _, score, groups = map_scores(recs, values, lam, source=source)
    means = {}
    for g in np.unique(groups):
        means[int(g)] = float(score[groups == g].mean())
    out = []
    for j, r in enumerate(recs):
        diff = score[j] - means[int(groups[j])]
        if abs(diff) > margin:
            out.append({"prompt": r["prompt"], "completion": records.continuation_of(r), "label": bool(diff > 0),
                        "prompt_id": int(records.prompt_id(r, j))})
    labels = {e["label"] for e in out}
    if labels != {True, False}:
        raise InputError(f"KTO needs desirable and undesirable samples; {source} gave labels {labels} "
                         "(need several samples per prompt and a --margin below the reward spread).")
    return out


def unpair(pairs):
    """Preference pairs -> KTO examples (chosen desirable, rejected undesirable)."""
    out = []
    for p in pairs:
        out.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        out.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    return out


# ---------------------------------------------------------------------------------------------
# Training

def exact_token_ids(tokenizer, examples, formatted_prompts, chat, max_new_tokens=None):
    """(prompt_ids, chosen_ids, rejected_ids) lists for MAP pairs, as sampled (module docstring).

    Ids already in the examples (prompt_ids, chosen_ids, rejected_ids: the sampler's) are used as they are.
    Otherwise the formatted prompt is tokenised alone (as generation tokenised it) and each continuation
    text alone; EOS is appended only to a continuation shorter than max_new_tokens (it stopped), never to
    one that reached it (truncated), nor to any when max_new_tokens is unknown (None).
    """
    eos = tokenizer.eos_token_id

    def completion(text):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        stopped = max_new_tokens is not None and len(ids) < int(max_new_tokens)
        return ids + [eos] if stopped and eos is not None else ids

    out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for e, formatted in zip(examples, formatted_prompts):
        out["prompt_ids"].append(list(e["prompt_ids"]) if "prompt_ids" in e else
                                 tokenizer(formatted, add_special_tokens=not chat)["input_ids"])
        out["chosen_ids"].append(list(e["chosen_ids"]) if "chosen_ids" in e else completion(e["chosen"]))
        out["rejected_ids"].append(list(e["rejected_ids"]) if "rejected_ids" in e else completion(e["rejected"]))
    return out


@functools.cache
def dpo_classes():
    """(SoftLabelCollator, TokenizedDPOTrainer, SoftDPOTrainer), built on first use (TRL imports are slow)."""
    import torch
    import torch.nn.functional as F
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class SoftLabelCollator(DataCollatorForPreference):
        """TRL's preference collator, plus the per-pair soft label."""

        def torch_call(self, examples):
            out = super().torch_call(examples)
            out["soft_label"] = torch.tensor([float(e["soft_label"]) for e in examples])
            return out

    class TokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on datasets that already hold prompt_ids/chosen_ids/rejected_ids: TRL's preparation
        (which appends EOS to every text and re-tokenises prompt + completion) is skipped for them."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                if args.max_length is not None and args.truncation_mode == "keep_start":
                    dataset = dataset.filter(lambda e: len(e["prompt_ids"]) < args.max_length)
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    class SoftDPOTrainer(TokenizedDPOTrainer):
        """DPO with soft labels: each pair (y_a, y_b) is used in both orientations, weighted by q = σ(λᵀΔr)
        and 1 − q (the dataset's `soft_label` column):

            loss = −q·log σ(β·δ) − (1 − q)·log σ(−β·δ),   δ = log π/π0 (y_a) − log π/π0 (y_b),

        the expected sigmoid DPO loss under Bradley-Terry labels, without sampling them. Its minimiser is
        β·δ = λᵀΔr on every pair, i.e. β·log π/π0 = λᵀr + const: p ∝ p0·exp(λᵀr/β). Only the sigmoid
        loss is defined here; the data pipeline, reference handling and logging are TRL's."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.loss_types != ["sigmoid"]:
                raise InputError(f"soft labels are defined for --loss_type=sigmoid only; got {self.loss_types}. "
                                 "Use --pairing=bradley_terry with other losses.")

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "soft_label" not in self._signature_columns:
                self._signature_columns = list(self._signature_columns) + ["soft_label"]

        def _compute_loss(self, model, inputs, return_outputs):
            mode = "train" if self.model.training else "eval"
            q = inputs["soft_label"].float()
            batch = {k: v for k, v in inputs.items() if k != "soft_label"}
            model_kwargs = {k: v for k, v in batch.items()
                            if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
            completion_mask = batch["completion_mask"]
            labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
            seq_len = completion_mask.size(1) - 1
            chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
            if "ref_chosen_logps" in batch:
                ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            else:
                ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model or self.model, batch)
            delta = (chosen_logps - ref_chosen) - (rejected_logps - ref_rejected)
            q = q.to(delta.device)
            loss = (-q * F.logsigmoid(self.beta * delta) - (1 - q) * F.logsigmoid(-self.beta * delta)).mean()
            margins = (self.beta * delta).detach()
            metrics = self._metrics[mode]
            metrics["rewards/margins"].append(self.accelerator.gather(margins).mean().item())
            # agreement: the pair's preferred side (q > ½) is the one the policy favours
            agree = ((margins > 0) == (q > 0.5)).float()
            metrics["rewards/accuracies"].append(self.accelerator.gather(agree).mean().item())
            metrics["soft_label/mean"].append(self.accelerator.gather(q).mean().item())
            if return_outputs:
                return loss, outputs
            return loss

    return SoftLabelCollator, TokenizedDPOTrainer, SoftDPOTrainer


def build_preference_trainer(model, tokenizer, examples, output_dir, config=None, ref_model=None, peft_config=None,
                             callbacks=None, max_new_tokens=None, **settings):
    """A DPOTrainer (pairs: prompt/chosen/rejected) or KTOTrainer (prompt/completion/label) on `examples`.

    `config` is a PreferenceConfig (or a command's config; default PreferenceConfig()), `settings` override
    its fields (e.g. loss_type="ipo", beta=1.0, seed=1). Raw prompts are formatted for the model here (chat
    template when it has one, or as `use_chat_template` says). `ref_model` is the explicit frozen reference;
    with a PEFT adapter it may be None (the adapter-disabled base is the reference). MAP pairs
    (map_preference_pairs) are trained on their exact token ids (exact_token_ids; `max_new_tokens` is the
    samples' generation length, for deciding which text-only samples stopped); soft-label pairs use
    SoftDPOTrainer.
    """
    cfg = dataclasses.replace(config or PreferenceConfig(), **settings)
    use_chat_template = cfg.use_chat_template
    from datasets import Dataset
    kind, losses = parse_loss_type(cfg.loss_type)
    prompts = models.format_prompts(tokenizer, [e["prompt"] for e in examples], use_chat_template=use_chat_template)
    map_pairs = kind == "dpo" and all("gap" in e for e in examples)
    soft = map_pairs and any("soft_label" in e for e in examples)
    if kind == "dpo":
        if any("chosen" not in e for e in examples):
            raise InputError("DPO losses need preference pairs (prompt, chosen, rejected)")
        if map_pairs:
            chat = prompts != [e["prompt"] for e in examples]
            data = exact_token_ids(tokenizer, examples, prompts, chat, max_new_tokens=max_new_tokens)
            if soft:
                data["soft_label"] = [float(e.get("soft_label", 1.0)) for e in examples]
        else:
            data = {"prompt": prompts, "chosen": [e["chosen"] for e in examples],
                    "rejected": [e["rejected"] for e in examples]}
    else:
        if any("chosen" in e for e in examples):
            examples = unpair(examples)
            prompts = models.format_prompts(tokenizer, [e["prompt"] for e in examples],
                                            use_chat_template=use_chat_template)
        data = {"prompt": prompts, "completion": [e["completion"] for e in examples],
                "label": [e["label"] for e in examples]}
    dataset = Dataset.from_dict(data)
    extra = {}
    common = training.trainer_kwargs(
        cfg, output_dir, learning_rate=float(cfg.learning_rate), num_train_epochs=float(cfg.num_train_epochs),
        per_device_train_batch_size=int(cfg.per_device_train_batch_size),
        gradient_accumulation_steps=int(cfg.gradient_accumulation_steps), beta=float(cfg.beta),
        max_length=int(cfg.max_length))
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer
        weights = None if cfg.loss_weights is None else arguments.float_list(cfg.loss_weights, "loss_weights")
        args = DPOConfig(loss_type=losses, loss_weights=weights, label_smoothing=float(cfg.label_smoothing), **common)
        trainer_cls = DPOTrainer
        if map_pairs:
            collator_cls, tokenized_cls, soft_cls = dpo_classes()
            trainer_cls = soft_cls if soft else tokenized_cls
            if soft:
                extra["data_collator"] = collator_cls(pad_token_id=tokenizer.pad_token_id, max_length=args.max_length,
                                                      truncation_mode=args.truncation_mode)
    else:
        from trl import KTOConfig, KTOTrainer
        args = KTOConfig(loss_type=losses[0], desirable_weight=float(cfg.desirable_weight),
                         undesirable_weight=float(cfg.undesirable_weight), **common)
        trainer_cls = KTOTrainer
    return trainer_cls(model=model, ref_model=None if peft_config is not None else ref_model, args=args,
                       train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                       callbacks=callbacks, **extra)


def hyperparameters(cfg, **extra):
    """The `hyperparameters` entry of map_training.json: the HYPERPARAMETERS fields of cfg, plus extra."""
    return dict({k: getattr(cfg, k) for k in HYPERPARAMETERS}, **extra)


def _train_and_save(cfg, model_name, examples, save_path, metadata, max_new_tokens=None):
    """Train `model_name` on `examples` as cfg says and save it with `metadata` (+ the trainer's settings)."""
    training.set_seed(cfg.seed)
    model, tokenizer = models.load_model_and_tokenizer(model_name, device="cpu", dtype=cfg.dtype)
    model.train()
    ref_model = None if cfg.use_lora else training.frozen_copy(model)
    trainer = build_preference_trainer(model, tokenizer, examples, save_path, cfg, ref_model=ref_model,
                                       peft_config=training.peft_config(cfg), max_new_tokens=max_new_tokens)
    extra = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    metadata.update(trainer=type(trainer).__name__, loss_type=parse_loss_type(cfg.loss_type)[1], beta=float(cfg.beta),
                    num_examples=len(examples), use_lora=bool(cfg.use_lora), lora=training.lora_metadata(cfg),
                    hyperparameters=hyperparameters(cfg, **extra))
    trainer.train(resume_from_checkpoint=training.resume_checkpoint(save_path, cfg.resume_from_checkpoint))
    metadata["log_history"] = trainer.state.log_history
    return training.save_trained(trainer, tokenizer, save_path, metadata, merge_lora=cfg.merge_lora)


def train_dpo(*args, **flags):
    """The original DPO baseline: DPO on a seeded mixture of HH-RLHF harmless (share p) and helpful pairs.
    The flags are DPOBaselineConfig's fields (below; sample_size, beta and harmless_ratio may be given
    positionally, in that order); an unknown flag is refused. Returns the save_path (model, tokenizer and
    map_training.json)."""
    return run_dpo(configs.config_from_flags(DPOBaselineConfig, flags, args))


def run_dpo(cfg):
    """train_dpo with the settings of `cfg`, a DPOBaselineConfig; returns the save_path."""
    p = float(cfg.harmless_ratio)
    save_path = cfg.save_path
    if save_path is None:
        save_path = os.path.join("modelsDPO", f"{models.model_short_name(cfg.model_name)}-{int(cfg.sample_size)}"
                                              f"sample-{float(cfg.beta)}beta-{p}harmless")
    if training.is_finished(save_path) and not cfg.overwrite:
        print(f"{save_path} already holds a finished DPO model; pass --overwrite=True to retrain.")
        return save_path
    data = dpodata.gen_mixed_preference_data({"harmless": p, "helpful": 1.0 - p}, cfg.sample_size, cfg.split,
                                             data_source_path=cfg.data_source_path, max_words=cfg.max_words)
    examples = data.to_list()
    metadata = training.base_metadata("DPO baseline (HH-RLHF mixture)", cfg.model_name, cfg.seed,
                                      sample_size=int(cfg.sample_size), harmless_ratio=p, split=cfg.split,
                                      data_source_path=cfg.data_source_path, max_words=int(cfg.max_words))
    return _train_and_save(cfg, cfg.model_name, examples, save_path, metadata)


def train_map_dpo(*args, **flags):
    """MAP-DPO: preference fine-tuning toward p_λ from a results file with several samples per prompt.
    The flags are MAPDPOConfig's fields (below; file_path may be given positionally); an unknown flag is
    refused. Returns the save_path."""
    return run_map_dpo(configs.config_from_flags(MAPDPOConfig, flags, args))


def run_map_dpo(cfg):
    """train_map_dpo with the settings of `cfg`, a MAPDPOConfig; returns the save_path."""
    from mapalign import primaldual
    file_path, model_name, save_path = cfg.file_path, cfg.model_name, cfg.save_path
    values, lam, target, c = primaldual.training_target(cfg.lam_list, cfg.value_list, cfg.lambda_file, cfg.palette)
    kind, losses = parse_loss_type(cfg.loss_type)
    recs = records.load_records(file_path)
    meta = records.load_metadata(file_path)
    file_sampling, file_model = primaldual.sampling_of_results(file_path)
    if model_name is None:
        model_name = file_model or (target or {}).get("base_model")
        if not model_name:
            raise InputError(f"{file_path!r} has no metadata naming its model; pass --model_name (the model that "
                             "generated the samples: it is p0 and the starting policy).")
    if cfg.use_chat_template is None:  # train on the prompts formatted as the samples were generated
        cfg = dataclasses.replace(cfg, use_chat_template=meta.get(
            "use_chat_template", (meta.get("sampling") or {}).get("use_chat_template")))
    # the pairs are the file's samples: the λ target must have been fitted on samples drawn the same way
    requested = dict(file_sampling or {}, use_chat_template=cfg.use_chat_template)
    sampling, model_name, notes = primaldual.resolve_sampling(
        target if target is not None else {"sampling": file_sampling, "base_model": file_model} if file_sampling
        else None, requested, model_name, cfg.allow_mismatch)
    if save_path is None:
        stem = os.path.splitext(os.path.basename(file_path))[0]
        what = f"pal={records.lam_string(c)}" if c is not None else f"lam={records.lam_string(lam)}"
        save_path = os.path.join("modelsDPO", training.sanitize(
            f"{stem}-{what}-val={','.join(values)}-{cfg.pairing}-{'+'.join(losses)}"))
    if training.is_finished(save_path) and not cfg.overwrite:
        print(f"{save_path} already holds a finished MAP-DPO model; pass --overwrite=True to retrain.")
        return save_path
    metadata = training.base_metadata(
        "MAP-DPO" if c is None else "iterated MAP-DPO (primal-dual)", model_name, cfg.seed, values=values,
        lam=None if lam is None else [float(x) for x in lam], results_file=file_path, pairing=cfg.pairing,
        margin=float(cfg.margin), max_pairs_per_prompt=cfg.max_pairs_per_prompt, sampling=sampling,
        lambda_file=cfg.lambda_file, lambda_target=target, target_warnings=notes,
        allow_mismatch=bool(cfg.allow_mismatch),
        target="p ∝ p0·exp(λᵀr/β) (= p_λ at β = 1) for the sigmoid loss with soft or bradley_terry pairs",
        num_prompts=len(set(records.prompt_groups(recs).tolist())), num_samples=len(recs))
    if c is not None:
        if kind != "dpo":
            raise InputError("--palette (iterated MAP-DPO) needs a DPO loss (sigmoid with soft pairs)")
        return _iterated_map_dpo(cfg, recs, values, lam, c, model_name, save_path, metadata, sampling)
    if kind == "kto":
        examples = map_kto_examples(recs, values, lam, margin=cfg.margin, source=file_path)
    else:
        examples = map_preference_pairs(recs, values, lam, pairing=cfg.pairing, margin=cfg.margin,
                                        max_pairs_per_prompt=cfg.max_pairs_per_prompt, seed=cfg.seed, source=file_path)
    return _train_and_save(cfg, model_name, examples, save_path, metadata, max_new_tokens=sampling["max_new_tokens"])


def _iterated_map_dpo(cfg, recs, values, lam, c, model_name, save_path, metadata, sampling):
    """Iterated MAP-DPO with primal-dual λ (train_map_dpo --palette); returns the save_path."""
    from mapalign import decoding
    from mapalign import primaldual
    from mapalign import values as value_registry
    groups = records.prompt_groups(recs)
    order = sorted(set(groups.tolist()))
    n_held = int(cfg.palette_prompts)
    if len(order) <= n_held:
        raise InputError(f"--palette_prompts={cfg.palette_prompts} leaves no training prompt: the file has "
                         f"{len(order)}")
    held = set(order[-n_held:])
    train_recs = [r for r, g in zip(recs, groups) if int(g) not in held]
    first_of = {}
    for r, g in zip(recs, groups):
        first_of.setdefault(int(g), r["prompt"])
    held_prompts = [first_of[g] for g in order[-n_held:]]
    train_prompts = [first_of[g] for g in order[:-n_held]]
    per_prompt = max(2, int(np.bincount(groups).max()))
    scorers = value_registry.load_scorers(values, basemodel_for_perplexity=model_name)

    def score(prompts, conts):
        return decoding.score_samples(values, scorers, list(prompts), list(conts))

    seed = cfg.seed
    training.set_seed(seed)
    model, tokenizer = models.load_model_and_tokenizer(model_name, device="cpu", dtype=cfg.dtype)
    model.train()
    peft_config = training.peft_config(cfg)
    ref_model = None if cfg.use_lora else training.frozen_copy(model)
    tracker = primaldual.PaletteTracker(values, c, score, held_prompts, cfg.palette_samples, sampling,
                                        update=cfg.dual_update, step=cfg.dual_step, tol_se=cfg.palette_tol_se,
                                        seed=seed, first_id=10 ** 6, step_name="DPO round")
    # feasibility is proved (or refuted) on the results file's samples of p0, the largest sample at hand
    primaldual.check_feasible(values, c, records.reward_matrix(recs, values), groups)
    if lam is None or cfg.dual_update == "exact":  # round 0: the reference model's levels (and λ, exact)
        lam0 = np.zeros(len(values)) if lam is None else lam
        lam, _ = tracker.round(model, tokenizer, lam0, step=0, ref_model=model if ref_model is None else ref_model)
        print(tracker.summary_line())
    trainer, log = None, []
    for r in range(1, int(cfg.palette_rounds) + 1):
        if r == 1:
            samples = train_recs
        else:  # fresh pairs from the current policy
            samples = primaldual.sample_policy(trainer.model, tokenizer, train_prompts, per_prompt, sampling,
                                               seed + 104729 * r)
            R = score([x["prompt"] for x in samples], [x["continuation"] for x in samples])
            for i, v in enumerate(values):
                for x, val in zip(samples, R[i]):
                    x[v] = float(val)
        pairs = map_preference_pairs(samples, values, lam, pairing=cfg.pairing, margin=cfg.margin,
                                     max_pairs_per_prompt=cfg.max_pairs_per_prompt, seed=seed + r, source=f"round {r}")
        policy = model if trainer is None else trainer.model
        trainer = build_preference_trainer(policy, tokenizer, pairs, os.path.join(save_path, f"round{r}"), cfg,
                                           ref_model=ref_model, peft_config=peft_config if trainer is None else None,
                                           max_new_tokens=sampling["max_new_tokens"], seed=seed + r)
        trainer.train()
        log.append({"round": r, "pairs": len(pairs), "lam": [float(x) for x in lam],
                    "log_history": trainer.state.log_history})
        lam, ok = tracker.round(trainer.model, tokenizer, lam, ref_model=ref_model, step=r)
        print(tracker.summary_line())
        if ok:
            break
    metadata.update(trainer=type(trainer).__name__, loss_type=parse_loss_type(cfg.loss_type)[1], beta=float(cfg.beta),
                    palette=[float(x) for x in c], lam=[float(x) for x in lam], dual_update=cfg.dual_update,
                    objective="min KL(π‖p0) s.t. E_π[r_i] ≥ c_i", palette_rounds=tracker.history,
                    palette_within_tolerance=bool(tracker.history[-1]["status"] == "within tolerance"),
                    rounds=log, held_out_prompts=len(held_prompts), use_lora=bool(cfg.use_lora),
                    hyperparameters=hyperparameters(cfg, max_new_tokens=sampling["max_new_tokens"]))
    metadata["log_history"] = trainer.state.log_history
    os.makedirs(save_path, exist_ok=True)
    primaldual.plot_history(tracker.history, values, c, os.path.join(save_path, "palette_rounds.png"))
    return training.save_trained(trainer, tokenizer, save_path, metadata, merge_lora=cfg.merge_lora)


configs.document(train_dpo, DPOBaselineConfig)
configs.document(train_map_dpo, MAPDPOConfig)
