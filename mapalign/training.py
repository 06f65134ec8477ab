"""What the trainers (trainPPO, trainDPO, rewardTrainer, getDPOsoup) share: their common config dataclasses
(TrainerConfig, LoRAOptions), seeds, LoRA configs, CPU-safe TRL config defaults, explicit reference models,
resume/finish bookkeeping, output naming and the metadata file written next to every trained model.

A trained-model folder is complete only once its metadata file (`map_training.json`) exists: it is
written last, atomically, after the weights. A run killed earlier leaves `checkpoint-*` folders
that the next run resumes from.
"""
import contextlib
import copy
import glob
import os
import shutil
from dataclasses import dataclass
from typing import Optional, Union

from mapalign import arguments
from mapalign.configs import option
from mapalign import records
from mapalign.errors import NotFoundError

METADATA_FILE = "map_training.json"


# ---------------------------------------------------------------------------------------------
# Argument normalisation (fire passes "1,2" as a tuple, "1" as an int, "a,b" as a tuple of str)

def report_to_list(report_to):
    """'none' (default) -> []; 'tensorboard', 'wandb', 'tensorboard,wandb' or a list -> list."""
    if report_to is None:
        return []
    names = arguments.str_list(report_to, "report_to")
    return [] if names == ["none"] else names


# ---------------------------------------------------------------------------------------------
# Naming (SPEC-MAP §2.1: model folders are sanitised by replacing "," and "=" with "_")

def sanitize(name):
    """',', '=' (the original's rule) and '/' (reward-model heads rm:FOLDER/attr in value lists) -> '_'."""
    return name.replace(",", "_").replace("=", "_").replace("/", "_")


def sanitize_save_path(save_path):
    """Sanitise the last component of a save path as the original did for PPO models, so the
    folder is a valid hub-style name ("modelsPPO/x-lam=1,2" -> "modelsPPO/x-lam_1_2")."""
    head, tail = os.path.split(os.path.normpath(save_path))
    return os.path.join(head, sanitize(tail)) if head else sanitize(tail)


def map_model_name(model_short, data_name, lam, values):
    """'{model}-{data}-lam={λ}-val={values}' sanitised, the original's MAP-F folder stem, e.g.
    'opt1.3b-Anthropic-harmless-lam_1.548_1.148-val_gpt2-helpful_gpt2-harmless'."""
    return sanitize(f"{model_short}-{data_name}-lam={records.lam_string(lam)}-val={','.join(values)}")


# ---------------------------------------------------------------------------------------------
# The settings every TRL-based trainer (trainPPO, trainDPO) shares; each extends TrainerConfig with its
# method's own (train_ppo.MAPFConfig, train_dpo.DPOBaselineConfig / MAPDPOConfig); ALT takes LoRAOptions.

@dataclass(kw_only=True)
class LoRAOptions:
    """Whether and how to train a LoRA adapter (PEFT) instead of all weights (lora_config's arguments)."""
    use_lora: bool = option(False, "train a LoRA adapter (PEFT) instead of all weights; p0 is then the "
                                   "adapter-disabled base")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: float = option(32, "LoRA scaling α (updates are scaled by α/r)")
    lora_dropout: float = option(0.05, "dropout on the LoRA branch (probability)")
    lora_target_modules: str = option("all-linear", "modules that get adapters: all-linear (every linear layer "
                                                    "but the output head) or a comma-separated list of names")


@dataclass(kw_only=True)
class TrainerConfig(LoRAOptions):
    """LoRA, seeding, checkpointing, logging and precision settings of a trainer run."""
    merge_lora: bool = option(True, "save the merged full model in save_path (adapter in save_path/adapter); "
                                    "False saves only the adapter")
    seed: int = option(0, "seeds sampling, data order and initialisation; recorded in the metadata")
    resume_from_checkpoint: Union[None, bool, str] = option(
        None, "None = continue from the newest checkpoint in save_path if any; False = start over; True = "
              "require one; or a checkpoint folder")
    report_to: str = option("none", "none, tensorboard, wandb or a comma-separated list")
    bf16: bool = option(False, "bfloat16 mixed precision (off: CPU-safe; turn on for GPUs)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (saves memory)")
    logging_steps: int = option(10, "optimizer steps between logged metrics")
    save_steps: int = option(50, "optimizer steps between checkpoints (a killed run resumes from the newest)")
    max_steps: int = option(-1, "cap on optimizer steps (> 0), overriding the epochs; -1 = no cap")
    dtype: Optional[str] = option(None, "model dtype: float32 (default) or bfloat16")
    overwrite: bool = option(False, "retrain even when save_path already holds a finished model")


def peft_config(config):
    """The LoraConfig a LoRAOptions config asks for (None without --use_lora)."""
    if not config.use_lora:
        return None
    return lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)


def lora_metadata(config):
    """The `lora` entry of the training metadata (None without --use_lora)."""
    if not config.use_lora:
        return None
    return {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": config.lora_target_modules}


# ---------------------------------------------------------------------------------------------
# Seeds, LoRA, TRL configs

def set_seed(seed):
    """Seed python, numpy and torch (all devices)."""
    from transformers import set_seed as hf_set_seed
    hf_set_seed(int(seed))


def lora_config(r=16, alpha=32, dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"):
    """A PEFT LoraConfig. 'all-linear' adapts every linear layer except the output head (TRL 1.16
    rejects adapters on lm_head)."""
    from peft import LoraConfig
    modules = target_modules if target_modules == "all-linear" else arguments.str_list(target_modules, "lora_target_modules")
    return LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=modules,
                      task_type=task_type, bias="none")


def trainer_kwargs(config, output_dir, **extra):
    """common_config from a TrainerConfig's settings (`extra`, e.g. seed=, overrides them)."""
    kwargs = dict(seed=config.seed, report_to=config.report_to, bf16=config.bf16,
                  gradient_checkpointing=config.gradient_checkpointing, logging_steps=config.logging_steps,
                  save_steps=config.save_steps, max_steps=int(config.max_steps))
    kwargs.update(extra)
    return common_config(output_dir, **kwargs)


def common_config(output_dir, seed=0, report_to="none", bf16=False, gradient_checkpointing=False,
                  logging_steps=10, save_steps=50, save_total_limit=2, run_name=None, **extra):
    """Keyword arguments every TRL/transformers config here gets.

    CPU-safe defaults: TRL configs default to bf16=True and gradient_checkpointing=True; both are off
    unless asked. Nothing is reported anywhere unless `report_to` names a tracker. Checkpoints are
    written every `save_steps` optimizer steps so a killed run resumes.
    """
    kwargs = dict(output_dir=output_dir, seed=int(seed), data_seed=int(seed), report_to=report_to_list(report_to),
                  bf16=bool(bf16), gradient_checkpointing=bool(gradient_checkpointing),
                  logging_steps=int(logging_steps), save_strategy="steps", save_steps=int(save_steps),
                  save_total_limit=save_total_limit, run_name=run_name)
    kwargs.update(extra)
    return kwargs


# ---------------------------------------------------------------------------------------------
# Reference models

def frozen_copy(model):
    """A frozen, eval-mode deep copy of `model`: the explicit reference p0 for full fine-tuning,
    taken before any update (never rebuilt from a hub id or the config's path)."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@contextlib.contextmanager
def explicit_reference(trainer_module, policy, ref_model):
    """Construct a TRL trainer that has no `ref_model` argument (RLOOTrainer, GRPOTrainer) with an
    explicit reference model.

    Those trainers rebuild the reference with `create_model_from_path(policy.config._name_or_path)`,
    which reloads weights from disk or the hub (and fails for in-memory models). Inside this
    context that call returns `ref_model` instead, so TRL still applies its own preparation to it
    (dropout, fused LM head, accelerator placement). `used` in the yielded dict tells whether the
    trainer asked for a reference at all (it does not when beta == 0 or with a PEFT adapter).

    Why a patch and not a supported extension point: TRL 1.16.0's RLOOTrainer and GRPOTrainer take no
    `ref_model` argument and no config option for one; their `__init__` builds the reference inline
    (`create_model_from_path(get_config_model_id(model.config), ...)`, then dropout removal, the fused LM
    head and accelerator/DeepSpeed/FSDP preparation). A subclass cannot reach that step without copying
    `__init__`, and setting `trainer.ref_model` afterwards would still load p0 from the path first and
    skip TRL's preparation. Only the name in the given trainer module is replaced, for the duration of
    the construction; drop this once TRL accepts `ref_model` for these trainers (DPOTrainer and
    KTOTrainer do, and get it directly).
    """
    original = trainer_module.create_model_from_path
    path = getattr(policy.config, "_name_or_path", None)
    state = {"used": False}

    def give_reference(model_id, *args, **kwargs):
        if ref_model is not None and model_id == path and not state["used"]:
            state["used"] = True
            return ref_model
        return original(model_id, *args, **kwargs)

    trainer_module.create_model_from_path = give_reference
    try:
        yield state
    finally:
        trainer_module.create_model_from_path = original


# ---------------------------------------------------------------------------------------------
# Resume, finish, metadata

def is_finished(save_path):
    """True when `save_path` holds a completed training run (its metadata file exists)."""
    return os.path.isfile(os.path.join(save_path, METADATA_FILE))


def resume_checkpoint(output_dir, resume_from_checkpoint=None):
    """What to pass to Trainer.train(resume_from_checkpoint=...).

    None (default) = the newest `checkpoint-*` in `output_dir` if there is one (a killed run goes
    on), else start fresh; False = start fresh; True = the newest checkpoint, which must exist;
    a path = that checkpoint.
    """
    from transformers.trainer_utils import get_last_checkpoint
    if resume_from_checkpoint is False:
        return None
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if resume_from_checkpoint is None:
        return last
    if resume_from_checkpoint is True:
        if last is None:
            raise NotFoundError(f"--resume_from_checkpoint=True but {output_dir!r} holds no checkpoint-* folder; "
                                "drop the flag to start fresh.")
        return last
    if not os.path.isdir(str(resume_from_checkpoint)):
        raise NotFoundError(f"--resume_from_checkpoint={resume_from_checkpoint!r} is not a folder")
    return str(resume_from_checkpoint)


def save_trained(trainer, tokenizer, save_path, metadata, merge_lora=True, keep_checkpoints=False):
    """Write the trained model to `save_path`, then the metadata file (last, atomically).

    With a PEFT adapter the adapter is saved to `{save_path}/adapter` and, when `merge_lora`, the
    merged full model to `save_path` itself, so every script loads the folder as a plain model;
    without `merge_lora` the adapter alone goes to `save_path` (transformers loads it through peft).
    Checkpoint folders are deleted afterwards unless `keep_checkpoints`. Returns `save_path`.
    """
    from peft import PeftModel
    model = trainer.accelerator.unwrap_model(trainer.model)
    os.makedirs(save_path, exist_ok=True)
    if not trainer.accelerator.is_main_process:
        return save_path
    if isinstance(model, PeftModel):
        model.save_pretrained(os.path.join(save_path, "adapter") if merge_lora else save_path)
        if merge_lora:
            model = model.merge_and_unload()
            model.save_pretrained(save_path)
        metadata = dict(metadata, lora_adapter="adapter" if merge_lora else ".", lora_merged=bool(merge_lora))
    else:
        model.save_pretrained(save_path)
    tokenizer.save_pretrained(save_path)
    if not keep_checkpoints:
        for checkpoint in glob.glob(os.path.join(save_path, "checkpoint-*")):
            shutil.rmtree(checkpoint, ignore_errors=True)
    metadata = dict(metadata, finished_at=records.timestamp())
    records.save_json_atomic(metadata, os.path.join(save_path, METADATA_FILE), indent=2)
    return save_path


def load_training_metadata(save_path):
    """The metadata dict of a trained-model folder ({} when it has none)."""
    import json
    path = os.path.join(save_path, METADATA_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def base_metadata(method, model_name, seed, **fields):
    """The metadata fields every trainer records: method, base model provenance, seed, versions."""
    import importlib.metadata as md

    from mapalign import models
    try:
        info = models.model_info(model_name)
    except Exception as e:  # provenance is informative only; never fail a finished run on it
        info = {"model_name": model_name, "error": str(e)}
    versions = {}
    for dist in ("trl", "transformers", "peft", "torch"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return dict(method=method, base_model=model_name, base_model_info=info, seed=int(seed), versions=versions,
                started_at=records.timestamp(), **fields)
