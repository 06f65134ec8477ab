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
  * "bradley_terry" (default): every pair of distinct samples of a prompt, the label drawn (seeded) with
    probability σ(λᵀΔr). This is the construction whose optimum is p_λ; it needs β = 1 to aim at p_λ.
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
"""
import os
import sys

import numpy as np

import cli
import genDPOdata
import models
import records
import training
from errors import InputError

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
KTO_LOSSES = ("kto", "apo_zero_unpaired")
PAIRINGS = ("bradley_terry", "best_worst", "all")


def parse_loss_type(loss_type):
    """('dpo' | 'kto', list of loss names) from "sigmoid", "ipo,hinge", a list, or "kto"."""
    losses = cli.str_list(loss_type, "loss_type")
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


def map_preference_pairs(recs, values, lam, pairing="bradley_terry", margin=0.0, max_pairs_per_prompt=None,
                         seed=0, source="records"):
    """Preference pairs from several samples per prompt, ranked by λᵀr (see the module docstring).

    Args:
        recs: records (prompt, continuation or generated, prompt_id, one float per value).
        values, lam: the aligned values and λ (same order).
        pairing: "bradley_terry" | "best_worst" | "all".
        margin: best_worst/all keep a pair only when its λᵀr gap exceeds this (ignored by bradley_terry,
            where dropping close pairs would bias the labels).
        max_pairs_per_prompt: keep at most this many pairs per prompt (random, seeded); None = all.
        seed: seeds label draws and pair subsampling.
    Returns:
        list of dicts {prompt (raw), chosen, rejected, prompt_id, gap (λᵀr chosen − rejected)}.
        Pairs whose two continuations are identical are skipped (they carry no gradient).
    """
    if pairing not in PAIRINGS:
        raise InputError(f"--pairing must be one of {PAIRINGS}; got {pairing!r}")
    _, score, groups = map_scores(recs, values, lam, source=source)
    rng = np.random.default_rng(seed)
    texts = [records.continuation_of(r) for r in recs]
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
                    else:  # Bradley-Terry label: i wins with probability σ(gap)
                        p_i = 0.5 * (1.0 + np.tanh(0.5 * gap))
                        candidates.append((i, j) if rng.random() < p_i else (j, i))
        candidates = [(c, r) for c, r in candidates if texts[c] != texts[r]]
        if max_pairs_per_prompt is not None and len(candidates) > int(max_pairs_per_prompt):
            keep = rng.choice(len(candidates), size=int(max_pairs_per_prompt), replace=False)
            candidates = [candidates[k] for k in sorted(keep)]
        for c, r in candidates:
            pairs.append({"prompt": recs[c]["prompt"], "chosen": texts[c], "rejected": texts[r],
                          "prompt_id": int(records.prompt_id(recs[c], c)), "gap": float(score[c] - score[r])})
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

def build_preference_trainer(model, tokenizer, examples, output_dir, loss_type="sigmoid", beta=0.1, ref_model=None,
                             peft_config=None, use_chat_template=None, learning_rate=5e-5, num_train_epochs=1,
                             per_device_train_batch_size=2, gradient_accumulation_steps=10, loss_weights=None,
                             label_smoothing=0.0, desirable_weight=1.0, undesirable_weight=1.0, max_length=1024,
                             seed=0, report_to="none", bf16=False, gradient_checkpointing=False, logging_steps=10,
                             save_steps=50, max_steps=-1, callbacks=None):
    """A DPOTrainer (pairs: prompt/chosen/rejected) or KTOTrainer (prompt/completion/label) on `examples`.

    Raw prompts are formatted for the model here (chat template when it has one, or as
    `use_chat_template` says). `ref_model` is the explicit frozen reference; with a PEFT adapter it
    may be None (the adapter-disabled base is the reference).
    """
    from datasets import Dataset
    kind, losses = parse_loss_type(loss_type)
    prompts = models.format_prompts(tokenizer, [e["prompt"] for e in examples], use_chat_template=use_chat_template)
    if kind == "dpo":
        if any("chosen" not in e for e in examples):
            raise InputError("DPO losses need preference pairs (prompt, chosen, rejected)")
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
    common = training.common_config(
        output_dir, seed=seed, report_to=report_to, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
        logging_steps=logging_steps, save_steps=save_steps, learning_rate=float(learning_rate),
        num_train_epochs=float(num_train_epochs), per_device_train_batch_size=int(per_device_train_batch_size),
        gradient_accumulation_steps=int(gradient_accumulation_steps), max_steps=int(max_steps), beta=float(beta),
        max_length=int(max_length))
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer
        weights = None if loss_weights is None else cli.float_list(loss_weights, "loss_weights")
        config = DPOConfig(loss_type=losses, loss_weights=weights, label_smoothing=float(label_smoothing), **common)
        trainer_cls = DPOTrainer
    else:
        from trl import KTOConfig, KTOTrainer
        config = KTOConfig(loss_type=losses[0], desirable_weight=float(desirable_weight),
                           undesirable_weight=float(undesirable_weight), **common)
        trainer_cls = KTOTrainer
    return trainer_cls(model=model, ref_model=None if peft_config is not None else ref_model, args=config,
                       train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                       callbacks=callbacks)


def _train_and_save(model_name, examples, save_path, metadata, loss_type, beta, use_lora, lora_r, lora_alpha,
                    lora_dropout, lora_target_modules, merge_lora, seed, resume_from_checkpoint, dtype, **kwargs):
    training.set_seed(seed)
    model, tokenizer = models.load_model_and_tokenizer(model_name, device="cpu", dtype=dtype)
    model.train()
    peft_config = training.lora_config(lora_r, lora_alpha, lora_dropout, lora_target_modules) if use_lora else None
    ref_model = None if use_lora else training.frozen_copy(model)
    trainer = build_preference_trainer(model, tokenizer, examples, save_path, loss_type=loss_type, beta=beta,
                                       ref_model=ref_model, peft_config=peft_config, seed=seed, **kwargs)
    metadata.update(trainer=type(trainer).__name__, loss_type=parse_loss_type(loss_type)[1], beta=float(beta),
                    num_examples=len(examples), use_lora=bool(use_lora),
                    lora={"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout,
                          "target_modules": lora_target_modules} if use_lora else None,
                    hyperparameters={k: v for k, v in kwargs.items() if k != "callbacks"})
    trainer.train(resume_from_checkpoint=training.resume_checkpoint(save_path, resume_from_checkpoint))
    metadata["log_history"] = trainer.state.log_history
    return training.save_trained(trainer, tokenizer, save_path, metadata, merge_lora=merge_lora)


def train_dpo(sample_size, beta, harmless_ratio, save_path=None, use_lora=False, model_name=models.DEFAULT_MODEL,
              data_source_path=None, split="train", max_words=50, loss_type="sigmoid", loss_weights=None,
              label_smoothing=0.0, learning_rate=5e-5, num_train_epochs=1, per_device_train_batch_size=2,
              gradient_accumulation_steps=10, max_length=1024, use_chat_template=None, lora_r=16, lora_alpha=32,
              lora_dropout=0.05, lora_target_modules="all-linear", merge_lora=True, seed=0,
              resume_from_checkpoint=None, report_to="none", bf16=False, gradient_checkpointing=False,
              logging_steps=10, save_steps=50, max_steps=-1, dtype=None, overwrite=False):
    """The original DPO baseline: DPO on a seeded mixture of HH-RLHF harmless (share p) and helpful pairs.

    Args:
        sample_size: rows drawn from HH-RLHF in total (the original grid used 2000).
        beta: DPO β (original grid 0.1, 0.5).
        harmless_ratio: p, the harmless-base share; helpful-base gets 1 − p.
        save_path: default modelsDPO/{model}-{sample_size}sample-{beta}beta-{p}harmless, as the original.
        use_lora: train a fresh LoRA adapter (the original instead loaded an existing adapter folder).
        model_name: base model (the original: facebook/opt-1.3b = "opt1.3b"; default the embedded SmolLM2).
        data_source_path: local HH-RLHF copy (see genDPOdata); default the hub (needs it cached offline).
        split, max_words: data split and the words kept per field (50, as the original).
        loss_type: DPO loss(es) or "kto" (see the module docstring); loss_weights, label_smoothing as TRL.
        learning_rate: 5e-5, the transformers default the original's TRL (mid-2024) used for DPO.
        num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps: the original's 1, 2, 10.
        max_length, use_chat_template, lora_*, merge_lora, seed, resume_from_checkpoint, report_to, bf16,
        gradient_checkpointing, logging_steps, save_steps, max_steps, dtype, overwrite: as trainPPO.main.
    Returns:
        the save_path (model, tokenizer and map_training.json).
    """
    p = float(harmless_ratio)
    if save_path is None:
        save_path = os.path.join("modelsDPO", f"{models.model_short_name(model_name)}-{int(sample_size)}sample-"
                                              f"{float(beta)}beta-{p}harmless")
    if training.is_finished(save_path) and not overwrite:
        print(f"{save_path} already holds a finished DPO model; pass --overwrite=True to retrain.")
        return save_path
    data = genDPOdata.gen_mixed_preference_data({"harmless": p, "helpful": 1.0 - p}, sample_size, split,
                                                data_source_path=data_source_path, max_words=max_words)
    examples = data.to_list()
    metadata = training.base_metadata("DPO baseline (HH-RLHF mixture)", model_name, seed, sample_size=int(sample_size),
                                      harmless_ratio=p, split=split, data_source_path=data_source_path,
                                      max_words=int(max_words))
    return _train_and_save(model_name, examples, save_path, metadata, loss_type, beta, use_lora, lora_r, lora_alpha,
                           lora_dropout, lora_target_modules, merge_lora, seed, resume_from_checkpoint, dtype,
                           loss_weights=loss_weights, label_smoothing=label_smoothing, learning_rate=learning_rate,
                           num_train_epochs=num_train_epochs,
                           per_device_train_batch_size=per_device_train_batch_size,
                           gradient_accumulation_steps=gradient_accumulation_steps, max_length=max_length,
                           use_chat_template=use_chat_template, report_to=report_to, bf16=bf16,
                           gradient_checkpointing=gradient_checkpointing, logging_steps=logging_steps,
                           save_steps=save_steps, max_steps=max_steps)


def train_map_dpo(file_path, lam_list, value_list, model_name=None, save_path=None, pairing="bradley_terry",
                  margin=0.0, max_pairs_per_prompt=None, beta=1.0, loss_type="sigmoid", loss_weights=None,
                  label_smoothing=0.0, desirable_weight=1.0, undesirable_weight=1.0, learning_rate=5e-5,
                  num_train_epochs=1, per_device_train_batch_size=2, gradient_accumulation_steps=10, max_length=1024,
                  use_chat_template=None, use_lora=False, lora_r=16, lora_alpha=32, lora_dropout=0.05,
                  lora_target_modules="all-linear", merge_lora=True, seed=0, resume_from_checkpoint=None,
                  report_to="none", bf16=False, gradient_checkpointing=False, logging_steps=10, save_steps=50,
                  max_steps=-1, dtype=None, overwrite=False):
    """MAP-DPO: preference fine-tuning toward p_λ from a results file with several samples per prompt.

    Args:
        file_path: results file (gendata with samples per prompt; rewards added for every value).
        lam_list, value_list: λ and the values it weights (same order; "all" = the task's values).
        model_name: the model that generated the file (p0 and the starting policy); default: the
            results file's metadata `model_name`.
        save_path: default modelsDPO/{file stem}-lam_{λ}-val_{values}-{pairing}-{loss}.
        pairing, margin, max_pairs_per_prompt: pair construction (module docstring).
        beta: DPO β; 1.0 (default) with bradley_terry pairs and the sigmoid loss aims at p_λ.
        loss_type, loss_weights, label_smoothing, desirable_weight, undesirable_weight: TRL's losses.
        use_chat_template: default: the results file's metadata, else auto.
        Other arguments: as train_dpo.
    Returns:
        the save_path.
    """
    values, lam = cli.values_and_lambda(value_list, lam_list)
    kind, losses = parse_loss_type(loss_type)
    recs = records.load_records(file_path)
    meta = records.load_metadata(file_path)
    if model_name is None:
        model_name = meta.get("model_name") or meta.get("model")
        if not model_name:
            raise InputError(f"{file_path!r} has no metadata naming its model; pass --model_name (the model that "
                             "generated the samples: it is p0 and the starting policy).")
    if use_chat_template is None:  # train on the prompts formatted as the samples were generated
        use_chat_template = meta.get("use_chat_template", (meta.get("sampling") or {}).get("use_chat_template"))
    if save_path is None:
        stem = os.path.splitext(os.path.basename(file_path))[0]
        save_path = os.path.join("modelsDPO", training.sanitize(
            f"{stem}-lam={training.format_lambda(lam)}-val={','.join(values)}-{pairing}-{'+'.join(losses)}"))
    if training.is_finished(save_path) and not overwrite:
        print(f"{save_path} already holds a finished MAP-DPO model; pass --overwrite=True to retrain.")
        return save_path
    if kind == "kto":
        examples = map_kto_examples(recs, values, lam, margin=margin, source=file_path)
    else:
        examples = map_preference_pairs(recs, values, lam, pairing=pairing, margin=margin,
                                        max_pairs_per_prompt=max_pairs_per_prompt, seed=seed, source=file_path)
    metadata = training.base_metadata(
        "MAP-DPO", model_name, seed, values=values, lam=lam, results_file=file_path, pairing=pairing,
        margin=float(margin), max_pairs_per_prompt=max_pairs_per_prompt,
        target="p ∝ p0·exp(λᵀr/β) (= p_λ at β = 1) for sigmoid loss with bradley_terry pairs",
        num_prompts=len(set(records.prompt_groups(recs).tolist())), num_samples=len(recs))
    return _train_and_save(model_name, examples, save_path, metadata, loss_type, beta, use_lora, lora_r, lora_alpha,
                           lora_dropout, lora_target_modules, merge_lora, seed, resume_from_checkpoint, dtype,
                           loss_weights=loss_weights, label_smoothing=label_smoothing,
                           desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                           learning_rate=learning_rate, num_train_epochs=num_train_epochs,
                           per_device_train_batch_size=per_device_train_batch_size,
                           gradient_accumulation_steps=gradient_accumulation_steps, max_length=max_length,
                           use_chat_template=use_chat_template, report_to=report_to, bf16=bf16,
                           gradient_checkpointing=gradient_checkpointing, logging_steps=logging_steps,
                           save_steps=save_steps, max_steps=max_steps)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # the original command line had no subcommand (`python trainDPO.py --...`): it runs train_dpo
    if len(sys.argv) > 1 and sys.argv[1].startswith("--") and sys.argv[1] not in ("--help", "-h"):
        cli.main(train_dpo)
    else:
        cli.main({"train_dpo": train_dpo, "train_map_dpo": train_map_dpo})
