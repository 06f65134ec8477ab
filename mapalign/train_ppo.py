"""MAP-F: fine-tune a policy toward the MAP target p_λ(y|x) ∝ p0(y|x)·exp(λᵀr(x,y)).

    python trainPPO.py --model_name=smollm2-135m --data_name=builtin --value_list=sentiment,harmlessness \
        --lam_list=0.8,1.5 --learning_rate=1e-5 --batch_size=8 --mini_batch_size=4 --nepoch=1 --use_lora=True
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml trainPPO.py ...   # several GPUs

Why this is not PPO. The original used TRL's step-based PPOTrainer (trl < 0.12); TRL removed PPO
entirely in 1.13, and its last PPO needed reward models with a `.score` head sharing the policy's
tokenizer, so Python reward functions such as λᵀr could not be used. MAP-F only needs the optimum
of the KL-regularised objective

    max_p  E_p[λᵀr] − β·KL(p‖p0),   whose maximiser is   p ∝ p0·exp(λᵀr/β),

which at β = 1 is exactly p_λ. RLOOTrainer (the default here) optimises this objective: it subtracts
β·(log p(y|x) − log p0(y|x)) from each sampled reward (a single-sample estimate of the KL) and uses the
other samples of the same prompt as the baseline. GRPOTrainer (--trainer=grpo) is offered with
scale_rewards="none" (dividing by the group std would make training blind to λ's scale, which is
what MAP tunes); its KL enters the loss (k3 estimator), not the reward.

Fixes over the original: every listed value enters the reward (the original dropped diversity and
perplexity), rewards see clean decoded text (raw prompt, continuation without special tokens; the
original fed literal `</s>`), the KL weight is β (default 1, the theory's value) instead of TRL's
adaptive KL, sampling uses the full distribution (top_k=0, top_p=1, temperature 1: the target is
defined for p0 itself, so the original's top_k=50 is an option, not the default), and runs are seeded.

Matched targets and the palette. `--lambda_file` takes a λ target written by alignValues.py (values, λ,
estimator, and the sampling config and base model it was fitted on): the run samples with that config
and refuses another (`--allow_mismatch`). `--palette=c1,c2,...` solves min KL(π‖p0) s.t. E_π[r_i] ≥ c_i
by primal-dual tracking (primaldual.py, PaletteCallback): λ is corrected every `--palette_every` steps
from the policy's realized levels on held-out prompts.

    python trainPPO.py --lambda_file=results/alignValues.jsonl --palette=0.45,0.6 --use_lora=True ...
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
from transformers import TrainerCallback

from mapalign import configs
from mapalign import models
from mapalign import training
from mapalign import values as value_registry
from mapalign.configs import option
from mapalign.errors import InputError

TRAINERS = ("rloo", "grpo")


@dataclass(kw_only=True)
class MAPFConfig(training.TrainerConfig):
    """The settings of a MAP-F run (trainPPO.py): the target, the policy and its prompts, the RLOO/GRPO
    optimisation and the sampling; the shared ones (LoRA, seed, checkpoints, logging) are TrainerConfig's."""
    lam_list: Optional[str] = option(None, "λ, one per value, e.g. 1.548,1.148 (by hand: nothing records what "
                                           "it was fitted on)")
    value_list: Optional[str] = option(
        None, "all (the task's values) or a comma-separated list (default: the λ file's values, else all); the "
              "reward is Σ λ_i r_i over every one of them, scored on (raw prompt, clean continuation)")
    model_name: Optional[str] = option(
        None, "policy p0: smollm2-135m (embedded), opt1.3b, llama2_chat, gpt2, a folder or a hub id (default: "
              "the λ file's base model, else smollm2-135m)")
    data_name: str = option("builtin", "prompt source for prompts.load_prompts (builtin offline, "
                                       "Anthropic-harmless, Imdb)")
    save_path: Optional[str] = option(
        None, "output folder; default modelsPPO/{model}-{data}-lam_{λ}-val_{values} (the original's name, ',' "
              "and '=' replaced by '_'; with --palette, pal_{c} instead of λ)")
    learning_rate: float = option(1e-6, "optimizer learning rate (original 1e-6 for full fine-tuning; LoRA needs "
                                        "~1e-5..1e-4)")
    lr_scheduler_type: Optional[str] = option(
        None, "learning-rate schedule, a transformers name (linear, constant, cosine, ...). Default: constant with "
              "--palette (λ keeps moving, and a rate decayed to 0 leaves the late rounds' λ without effect), "
              "else linear (TRL's default: decay to 0 over the run)")
    batch_size: int = option(20, "completions per optimizer step (original: rollouts per PPO step, 20)")
    mini_batch_size: int = option(2, "completions per forward/backward pass; gradient accumulation = batch/mini")
    nepoch: float = option(1, "passes over the prompts (each prompt is sampled num_generations times per pass)")
    trainer: str = option("rloo", "rloo (KL in the reward) or grpo (KL in the loss, scale_rewards='none')")
    beta: float = option(1.0, "KL weight β; the trained policy targets p0·exp(λᵀr/β), so β = 1 aims at p_λ")
    num_generations: int = option(2, "samples per prompt for the leave-one-out / group baseline (>= 2)")
    max_new_tokens: Optional[int] = option(None, "sampling: new tokens per completion (default: the λ file's, "
                                                 "else 50)")
    temperature: Optional[float] = option(None, "sampling temperature (default: the λ file's, else 1)")
    top_k: Optional[int] = option(None, "sampling top-k, 0 = none (default: the λ file's, else 0)")
    top_p: Optional[float] = option(None, "sampling nucleus mass, 1 = none (default: the λ file's, else 1)")
    use_chat_template: Optional[bool] = option(None, "format prompts with the chat template (default: the λ "
                                                     "file's, else when the model has one)")
    max_prompts: Optional[int] = option(None, "use only the first N training prompts (quick runs)")
    lambda_file: Optional[str] = option(
        None, "a λ target from alignValues.py (results/alignValues.jsonl: its last entry, or a .json): values, "
              "λ, estimator, sampling config, base model and results file. The run samples with that config and "
              "refuses a different one (see allow_mismatch)")
    allow_mismatch: bool = option(False, "train even when the sampling config or base model differs from the λ "
                                         "file's (the difference is recorded as a warning in the metadata)")
    palette: Optional[str] = option(
        None, "target levels c1,c2,... (one per value): primal-dual tracking (primaldual.py) minimises KL(π‖p0) "
              "subject to E_π[r_i] ≥ c_i by correcting λ from the policy's realized levels. A palette proved "
              "infeasible is refused with the suggested palette (proved on the λ file's results file when there "
              "is one, else on the first round's held-out samples of p0)")
    palette_every: int = option(10, "optimizer steps between λ updates (--palette)")
    palette_prompts: int = option(16, "held-out prompts for --palette (the last N of the source, never trained on)")
    palette_samples: int = option(4, "samples per held-out prompt per --palette round")
    dual_update: str = option(
        "exact", "exact (dual solve on importance weights of the policy's samples; the first round, before "
                 "training, is the exact solve on p0's samples) or ascent (λ ← max(0, λ + η(c − m̂)), η = dual_step)")
    dual_step: float = option(1.0, "η of --dual_update=ascent")
    palette_tol_se: float = option(2.0, "stop once every value is within this many standard errors of its level")
    num_iterations: int = option(1, "TRL's optimisation passes per generated batch")
    grpo_loss_type: str = option("dapo", "GRPO's loss (dapo, grpo, dr_grpo, ...); ignored by RLOO")
    value_device: Optional[str] = option(None, "device for the reward scorers (default: this process's device)")


class ValueReward:
    """A TRL reward function for one value: scores (raw prompt, continuation) pairs with the value
    registry's scorer. Named after the value, so TRL logs `rewards/<value>/mean`."""

    def __init__(self, value, scorer):
        self.value = value
        self.scorer = scorer
        self.__name__ = value

    def __call__(self, prompts, completions, map_prompt=None, **kwargs):
        raw_prompts = list(map_prompt) if map_prompt is not None else list(prompts)
        continuations = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        continuations = [c.strip() for c in continuations]
        scores = np.asarray(self.scorer(raw_prompts, continuations), dtype=np.float64)
        if scores.shape != (len(continuations),):
            raise ValueError(f"scorer of value {self.value!r} returned shape {scores.shape}; expected "
                             f"({len(continuations)},) (one float per text)")
        return scores.tolist()


def map_reward_functions(values, lam, scorers):
    """The MAP reward as TRL wants it: one reward function per value and reward_weights = λ, so the
    trainer's reward is Σ_i λ_i r_i over every listed value (TRL sums weighted rewards)."""
    if len(values) != len(lam):
        raise InputError(f"--lam_list has {len(lam)} entries but --value_list names {len(values)} values "
                         f"({values}); give one λ per value, in the same order.")
    missing = [v for v in values if v not in scorers]
    if missing:
        raise InputError(f"no scorer for values {missing}")
    return [ValueReward(v, scorers[v]) for v in values], [float(x) for x in lam]


def combined_reward(prompts, continuations, values, lam, scorers):
    """(k, n) reward matrix and the (n,) MAP reward λᵀr for (raw prompt, continuation) pairs."""
    rewards = np.stack([np.asarray(scorers[v](list(prompts), list(continuations)), dtype=np.float64)
                        for v in values])
    return rewards, np.asarray(lam, dtype=np.float64) @ rewards


def load_training_prompts(data_name, seed=0, max_prompts=None):
    """Prompt texts of a prompt source (prompts.load_prompts), optionally the first `max_prompts`."""
    from mapalign import prompts as prompt_sources
    texts = prompt_sources.load_prompts(data_name, seed=seed)
    texts = [p["prompt"] if isinstance(p, dict) else p for p in texts]
    if max_prompts is not None:
        texts = texts[:int(max_prompts)]
    if not texts:
        raise InputError(f"prompt source {data_name!r} gave no prompts")
    return texts


def prompt_dataset(tokenizer, prompts, use_chat_template=None):
    """The trainer's dataset: `prompt` formatted for the model (what it generates from), `map_prompt`
    the raw text (what the values score), `prompt_id` the prompt's index in its source."""
    from datasets import Dataset
    formatted = models.format_prompts(tokenizer, prompts, use_chat_template=use_chat_template)
    return Dataset.from_dict({"prompt": formatted, "map_prompt": list(prompts),
                              "prompt_id": list(range(len(prompts)))})


def build_dataset(tokenizer, data_name, seed=0, max_prompts=None, use_chat_template=None):
    """The original's build_dataset (without its PPOConfig argument): the prompts of `data_name` as a
    datasets.Dataset (see prompt_dataset). The original tokenised here and decoded the ids back with
    special tokens, which is how literal `</s>` reached the reward models; TRL now tokenises itself."""
    return prompt_dataset(tokenizer, load_training_prompts(data_name, seed=seed, max_prompts=max_prompts),
                          use_chat_template=use_chat_template)


def build_trainer(model, tokenizer, prompts, values, lam, scorers, output_dir, config=None, ref_model=None,
                  peft_config=None, callbacks=None, **settings):
    """The configured TRL trainer (RLOOTrainer or GRPOTrainer) for MAP-F.

    `config` is a MAPFConfig (default: its defaults), `settings` override its fields (e.g. beta=0.5,
    trainer="grpo"); sampling left at None takes primaldual.DEFAULT_SAMPLING (50 new tokens, temperature 1,
    no top-k/top-p truncation). `prompts` are raw prompt texts; the trainer sees them formatted for the model
    (chat template when it has one) while reward functions see the raw text. `ref_model` is the explicit p0
    for full fine-tuning (None with a PEFT adapter: the adapter-disabled base is p0).
    """
    from mapalign.primaldual import DEFAULT_SAMPLING
    cfg = dataclasses.replace(config or MAPFConfig(), **settings)
    trainer, beta = cfg.trainer, cfg.beta
    sampling = {k: DEFAULT_SAMPLING[k] if getattr(cfg, k) is None else getattr(cfg, k)
                for k in ("max_new_tokens", "temperature", "top_k", "top_p")}
    if trainer not in TRAINERS:
        raise InputError(f"--trainer must be one of {TRAINERS}; got {trainer!r}")
    batch_size, mini_batch_size = int(cfg.batch_size), int(cfg.mini_batch_size)
    num_generations = int(cfg.num_generations)
    if num_generations < 2:
        raise InputError("--num_generations must be >= 2: RLOO/GRPO compare samples of the same prompt")
    if batch_size % mini_batch_size:
        raise InputError(f"--batch_size={batch_size} must be divisible by --mini_batch_size={mini_batch_size} "
                         "(as in the original: gradient accumulation = batch / mini-batch)")
    if batch_size % num_generations:
        raise InputError(f"--batch_size={batch_size} (completions per step) must be divisible by "
                         f"--num_generations={num_generations}")
    if batch_size % (mini_batch_size * _world_size()):
        raise InputError(f"--batch_size={batch_size} must be divisible by --mini_batch_size × processes "
                         f"({mini_batch_size} × {_world_size()})")
    if float(beta) != 0.0 and peft_config is None and ref_model is None:
        raise InputError("full fine-tuning with beta > 0 needs the explicit reference p0: pass "
                         "ref_model=training.frozen_copy(model) (taken before training)")
    funcs, weights = map_reward_functions(values, lam, scorers)
    dataset = prompt_dataset(tokenizer, prompts, use_chat_template=cfg.use_chat_template)
    common = training.trainer_kwargs(
        cfg, output_dir, learning_rate=float(cfg.learning_rate), per_device_train_batch_size=mini_batch_size,
        gradient_accumulation_steps=max(1, batch_size // mini_batch_size // _world_size()),
        num_train_epochs=float(cfg.nepoch), beta=float(beta), num_generations=num_generations,
        max_completion_length=int(sampling["max_new_tokens"]), temperature=float(sampling["temperature"]),
        top_k=int(sampling["top_k"]), top_p=float(sampling["top_p"]), reward_weights=weights,
        num_iterations=int(cfg.num_iterations), remove_unused_columns=False,
        lr_scheduler_type=lr_schedule(cfg.lr_scheduler_type, bool(cfg.palette)))
    if trainer == "rloo":
        from trl import RLOOConfig, RLOOTrainer
        from trl.trainer import rloo_trainer as module
        config = RLOOConfig(normalize_advantages=False, **common)  # normalising would erase λ's scale
        trainer_cls = RLOOTrainer
    else:
        from trl import GRPOConfig, GRPOTrainer
        from trl.trainer import grpo_trainer as module
        config = GRPOConfig(scale_rewards="none", multi_objective_aggregation="sum_then_normalize",
                            loss_type=cfg.grpo_loss_type, **common)
        trainer_cls = GRPOTrainer
    with training.explicit_reference(module, model, None if peft_config is not None else ref_model) as used:
        built = trainer_cls(model=model, reward_funcs=funcs, args=config, train_dataset=dataset,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    if float(beta) != 0.0 and peft_config is None and not used["used"]:
        raise RuntimeError("internal: the trainer did not take the explicit reference model")
    return built


def lr_schedule(lr_scheduler_type, palette_tracking):
    """The learning-rate schedule of a MAP-F run: `lr_scheduler_type` when given, else constant under
    primal-dual palette tracking, else linear (see MAPFConfig's lr_scheduler_type option)."""
    if lr_scheduler_type:
        return str(lr_scheduler_type)
    return "constant" if palette_tracking else "linear"


class PaletteCallback(TrainerCallback):
    """Primal-dual palette tracking inside an RLOO/GRPO run (primaldual.py): at the start and every
    `every` optimizer steps, measure the policy's realized levels on held-out prompts and set the
    trainer's reward weights (λ) to the tracker's update; stop training once every value is within
    tolerance. Attach with `trainer.add_callback(cb)` after `cb.trainer = trainer`."""

    def __init__(self, tracker, every, tokenizer, lam=None, verbose=True, refuse_at_start=True):
        self.tracker, self.every, self.tokenizer, self.verbose = tracker, int(every), tokenizer, verbose
        # refuse a palette the first round proves infeasible on p0's held-out samples (when no larger
        # sample of p0 was checked before training)
        self.refuse_at_start = bool(refuse_at_start)
        self.lam = None if lam is None else np.asarray(lam, dtype=np.float64)
        self.trainer = None
        self.stopped_within = False

    def _round(self, state, control):
        import torch
        trainer = self.trainer
        lam = self.lam if self.lam is not None else trainer.reward_weights.double().numpy()
        new, ok = self.tracker.round(trainer.model, self.tokenizer, lam, ref_model=getattr(trainer, "ref_model", None),
                                     step=int(state.global_step))
        entry = self.tracker.history[-1]
        if self.verbose:
            print(self.tracker.summary_line(entry))
        if entry["status"] == "infeasible" and state.global_step == 0 and self.refuse_at_start:
            raise InputError(f"the palette {self.tracker.c.tolist()} is infeasible on the reference model's held-out "
                             "samples (proved by "
                             f"an LP certificate); suggested palette: --palette="
                             + ",".join(f"{x:.4f}" for x in (entry.get("suggested_palette") or [])))
        self.lam = np.asarray(new, dtype=np.float64)
        trainer.reward_weights = torch.tensor(self.lam, dtype=torch.float32)
        if ok and state.global_step > 0:
            self.stopped_within = True
            control.should_training_stop = True
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        if self.lam is None or self.tracker.update == "exact":
            return self._round(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            return self._round(state, control)


def _world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def main(**flags):
    """Train MAP-F and save the model to `save_path` (with map_training.json: λ, values, base model, seed,
    the λ target and, with --palette, the primal-dual rounds and palette_rounds.png). The flags are
    MAPFConfig's fields (below); an unknown flag is refused. Returns the save_path."""
    return train(configs.config_from_flags(MAPFConfig, flags))


def train(cfg):
    """Train MAP-F with the settings of `cfg`, a MAPFConfig; returns the save_path (see main)."""
    from mapalign import primaldual
    model_name, data_name, save_path, seed, beta = cfg.model_name, cfg.data_name, cfg.save_path, cfg.seed, cfg.beta
    values, lam, target, c = primaldual.training_target(cfg.lam_list, cfg.value_list, cfg.lambda_file, cfg.palette)
    requested = {k: getattr(cfg, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens", "use_chat_template")}
    if target is None and model_name is None:
        model_name = models.DEFAULT_MODEL
    sampling, model_name, notes = primaldual.resolve_sampling(target, requested, model_name, cfg.allow_mismatch)
    if save_path is None:
        from mapalign import prompts as prompt_sources
        stem = training.map_model_name(models.model_short_name(model_name), prompt_sources.data_tag(data_name),
                                       lam if lam is not None else c, values)
        save_path = os.path.join("modelsPPO", stem.replace("-lam_", "-pal_") if c is not None else stem)
    save_path = training.sanitize_save_path(save_path)
    if training.is_finished(save_path) and not cfg.overwrite:
        print(f"{save_path} already holds a finished MAP-F model; pass --overwrite=True to retrain.")
        return save_path
    training.set_seed(seed)
    prompts = load_training_prompts(data_name, seed=seed)
    held_out = []
    if c is not None:
        n_held = int(cfg.palette_prompts)
        if len(prompts) <= n_held:
            raise InputError(f"--palette needs held-out prompts: the source has {len(prompts)} prompts and "
                             f"--palette_prompts={cfg.palette_prompts}; lower it or use a larger source")
        prompts, held_out = prompts[:-n_held], prompts[-n_held:]
    if cfg.max_prompts is not None:
        prompts = prompts[:int(cfg.max_prompts)]
    model, tokenizer = models.load_model_and_tokenizer(model_name, device="cpu", dtype=cfg.dtype)
    model.train()
    peft_config = training.peft_config(cfg)
    ref_model = None if cfg.use_lora or float(beta) == 0.0 else training.frozen_copy(model)
    value_device = cfg.value_device
    if value_device is None:  # under `accelerate launch` each process scores on its own device
        from accelerate import PartialState
        value_device = str(PartialState().device)
    scorers = value_registry.load_scorers(values, device=value_device, basemodel_for_perplexity=model_name)
    callback = None
    if c is not None:
        tracker = primaldual.PaletteTracker(
            values, c, lambda p, t: combined_reward(p, t, values, np.zeros(len(values)), scorers)[0], held_out,
            cfg.palette_samples, sampling, update=cfg.dual_update, step=cfg.dual_step, tol_se=cfg.palette_tol_se,
            seed=seed, first_id=len(prompts))
        checked = False
        results_file = (target or {}).get("results_file")
        if results_file and os.path.isfile(results_file):  # prove feasibility on the λ's own p0 samples
            from mapalign import records
            recs = records.load_records(results_file)
            primaldual.check_feasible(values, c, records.reward_matrix(recs, values, source=results_file),
                                      records.prompt_groups(recs))
            checked = True
        callback = PaletteCallback(tracker, cfg.palette_every, tokenizer, lam=lam, refuse_at_start=not checked)
    trainer_obj = build_trainer(
        model, tokenizer, prompts, values, lam if lam is not None else np.zeros(len(values)), scorers, save_path,
        config=dataclasses.replace(cfg, **sampling), ref_model=ref_model, peft_config=peft_config,
        callbacks=None if callback is None else [callback])
    if callback is not None:
        callback.trainer = trainer_obj
    metadata = training.base_metadata(
        "MAP-F", model_name, seed, trainer=type(trainer_obj).__name__, values=values,
        lam=None if lam is None else [float(x) for x in lam], beta=float(beta),
        target="p ∝ p0·exp(λᵀr/β) (= p_λ at β = 1)", data_name=data_name, num_prompts=len(prompts),
        learning_rate=float(cfg.learning_rate),
        lr_scheduler_type=lr_schedule(cfg.lr_scheduler_type, bool(cfg.palette)), batch_size=int(cfg.batch_size),
        mini_batch_size=int(cfg.mini_batch_size), nepoch=float(cfg.nepoch), num_generations=int(cfg.num_generations),
        sampling=sampling, max_new_tokens=int(sampling["max_new_tokens"]),
        temperature=float(sampling["temperature"]), top_k=int(sampling["top_k"]), top_p=float(sampling["top_p"]),
        use_lora=bool(cfg.use_lora), lambda_target=target, lambda_file=cfg.lambda_file, target_warnings=notes,
        allow_mismatch=bool(cfg.allow_mismatch), lora=training.lora_metadata(cfg),
        use_chat_template=sampling["use_chat_template"], max_steps=int(cfg.max_steps))
    trainer_obj.train(resume_from_checkpoint=training.resume_checkpoint(save_path, cfg.resume_from_checkpoint))
    metadata["log_history"] = trainer_obj.state.log_history
    if callback is not None:
        metadata.update(palette=[float(x) for x in c], lam=[float(x) for x in callback.lam],
                        objective="min KL(π‖p0) s.t. E_π[r_i] ≥ c_i", dual_update=cfg.dual_update,
                        palette_rounds=callback.tracker.history, palette_within_tolerance=callback.stopped_within,
                        held_out_prompts=len(held_out), palette_samples=int(cfg.palette_samples))
        os.makedirs(save_path, exist_ok=True)
        primaldual.plot_history(callback.tracker.history, values, c, os.path.join(save_path, "palette_rounds.png"))
    return training.save_trained(trainer_obj, tokenizer, save_path, metadata, merge_lora=cfg.merge_lora)


configs.document(main, MAPFConfig)
