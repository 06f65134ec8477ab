"""Reward models: pairwise (Bradley-Terry, TRL RewardTrainer) and multi-objective regression.

Pairwise, the original's command line (TRL RewardConfig/ModelConfig parsing; Anthropic/hh-rlhf full
transcripts, chosen vs rejected):

    python rewardTrainer.py --model_name_or_path=gpt2 --output_dir="results/reward_modeling_anthropic_hh" \
        --per_device_train_batch_size=64 --num_train_epochs=1 --gradient_accumulation_steps=16 \
        --gradient_checkpointing=True --learning_rate=1.41e-5 --report_to="wandb" --remove_unused_columns=False \
        --optim="adamw_torch" --logging_steps=10 --evaluation_strategy="steps" --max_length=512

(`--evaluation_strategy` is accepted as the old name of `--eval_strategy`.) Offline, pass
`--data_source_path=<file with chosen/rejected columns>` (and `--eval_data_path`); `--use_peft=True`
trains a LoRA adapter. Unless given on the command line, bf16 and gradient checkpointing are off and
nothing is reported (CPU-safe).

Multi-objective regression (k outputs, one per attribute; DPA-style):

    python rewardTrainer.py --objective=regression --model_name_or_path=<folder> \
        --data_source_path=results/smollm2-135m-builtin.json --attributes=sentiment,harmlessness \
        --output_dir=models/rm-multi --num_train_epochs=3

A sequence-classification model with k outputs is trained with plain transformers Trainer on a masked
MSE: missing attributes (null/NaN in the data) contribute nothing. Inputs are rendered with one
template (`--template`, default "User: {prompt}\\nAssistant: {response}") that is stored with the model
and reused at scoring time. Targets are standardised per attribute for training (`--standardize`) and
scores are returned in the original units. Any MAP results file is valid training data (columns
prompt, continuation and one float per value). `register_regression_values(folder)` registers the k
outputs as k custom values in the value registry.

Ridge probes (ArmoRM-style, CPU-cheap; see rewardmodels.py): a frozen backbone embeds each rendered text
(last token or mean-pooled), one ridge regression per attribute, L2 strength chosen by validation MSE,
missing labels (null/NaN) masked:

    python rewardTrainer.py --objective=ridge --model_name_or_path=smollm2-135m \
        --data_source_path=results/smollm2-135m-builtin.json --attributes=sentiment,length \
        --output_dir=models/rm-ridge --pooling=mean --output_scale=0-100

Every CLI then names the folder's heads as values: `--value_list=rm:models/rm-ridge` (all heads) or
`--value=rm:models/rm-ridge/sentiment` (one), in any process. `--output_scale=0-100` maps each attribute
linearly so that the labels' range (or `--label_range=lo,hi`) goes to 10..90, DPA's scale; both kinds
of model take it.
"""
import functools
import os
import typing
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mapalign import arguments
from mapalign import configs
from mapalign import records
from mapalign import rewardmodels
from mapalign import training
from mapalign.configs import option
from mapalign.errors import InputError, NotFoundError
from mapalign.rewardmodels import DEFAULT_TEMPLATE, RM_FILE

CPU_SAFE = {"bf16": False, "gradient_checkpointing": False, "report_to": "none"}  # unless given
OLD_NAMES = {"evaluation_strategy": "eval_strategy"}  # the original command line's name


@dataclass
class RewardScriptArguments:
    """Data and objective options (the training and model options are TRL's RewardConfig and ModelConfig)."""
    objective: str = option("pairwise", "pairwise (Bradley-Terry, TRL RewardTrainer), regression (k outputs, masked "
                                        "MSE) or ridge (ridge probes on a frozen backbone)")
    dataset_name: str = option("Anthropic/hh-rlhf", "hub dataset (pairwise)")
    dataset_config: Optional[str] = option(None, "data_dir of the hub dataset")
    data_source_path: Optional[str] = option(None, "local training file (json/jsonl/csv)")
    eval_data_path: Optional[str] = option(None, "local evaluation file")
    dataset_train_split: str = option("train", "split of the hub dataset to train on")
    dataset_test_split: str = option("test", "split of the hub dataset to evaluate on")
    max_train_samples: Optional[int] = option(None, "use only the first N training rows")
    max_eval_samples: Optional[int] = option(None, "use only the first N evaluation rows")
    attributes: Optional[str] = option(None, "regression/ridge: comma-separated target columns")
    prompt_column: str = option("prompt", "regression/ridge: prompt text column")
    response_column: str = option("continuation", "regression/ridge: response text column")
    template: str = option(DEFAULT_TEMPLATE, "regression/ridge: input text template ({prompt}, {response})")
    standardize: bool = option(True, "regression: train on standardised targets")
    eval_fraction: float = option(0.0, "regression: hold out this share for evaluation")
    pooling: str = option("last", "ridge: embedding of the last token or the mean")
    output_scale: Optional[str] = option(None, "ridge/regression: 0-100 (DPA scale)")
    label_range: Optional[str] = option(
        None, "with --output_scale=0-100: lo,hi of the labels (mapped to 10 and 90); default observed min/max")
    val_fraction: float = option(0.2, "ridge: validation share for choosing L2")


# ---------------------------------------------------------------------------------------------
# Data

def load_rows(path, split=None):
    """A datasets.Dataset from a local json/jsonl(.gz)/csv/parquet file or a save_to_disk folder."""
    import datasets
    if os.path.isdir(path):
        return datasets.load_from_disk(path)
    if not os.path.isfile(path):
        raise NotFoundError(f"data file not found: {path!r}")
    kind = "csv" if path.endswith(".csv") else "parquet" if path.endswith(".parquet") else "json"
    if kind == "json" and path.endswith(".json"):  # MAP results files: one JSON array
        # the prompt may sit in another column (--prompt_column), so no key is required here
        return datasets.Dataset.from_list(records.load_records(path, required=()))
    return datasets.load_dataset(kind, data_files=path, split="train")


def load_pairwise_data(script_args):
    """(train, eval or None) datasets with chosen/rejected columns."""
    import datasets
    if script_args.data_source_path:
        train = load_rows(script_args.data_source_path)
        evaluation = load_rows(script_args.eval_data_path) if script_args.eval_data_path else None
        where = script_args.data_source_path
    else:
        try:
            data = datasets.load_dataset(script_args.dataset_name, data_dir=script_args.dataset_config)
        except Exception as e:
            raise NotFoundError(f"could not load {script_args.dataset_name!r}: {type(e).__name__}: {str(e)[:200]}. It is "
                                "not cached and the hub is unreachable; pass --data_source_path=<local file with chosen/"
                                "rejected columns> (and --eval_data_path).") from None
        train = data[script_args.dataset_train_split]
        evaluation = data[script_args.dataset_test_split] if script_args.dataset_test_split in data else None
        where = script_args.dataset_name
    for name, ds in (("training", train), ("evaluation", evaluation)):
        if ds is not None and not {"chosen", "rejected"} <= set(ds.column_names):
            raise InputError(f"{name} data from {where!r} needs `chosen` and `rejected` columns; "
                             f"it has {ds.column_names}")
    if script_args.max_train_samples:
        train = train.select(range(min(len(train), int(script_args.max_train_samples))))
    if evaluation is not None and script_args.max_eval_samples:
        evaluation = evaluation.select(range(min(len(evaluation), int(script_args.max_eval_samples))))
    return train, evaluation


def regression_targets(rows, attributes, source="data"):
    """(n, k) float32 targets with NaN where an attribute is missing (None, NaN or absent)."""
    y = np.full((len(rows), len(attributes)), np.nan, dtype=np.float64)
    for j, attribute in enumerate(attributes):
        if not any(attribute in r for r in rows[:1000]):
            raise InputError(f"attribute {attribute!r} is not a column of {source}; columns: {sorted(rows[0])}")
        for i, r in enumerate(rows):
            x = r.get(attribute)
            if isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x):
                y[i, j] = float(x)
    empty = [a for j, a in enumerate(attributes) if not np.isfinite(y[:, j]).any()]
    if empty:
        raise InputError(f"attributes {empty} have no finite value in {source}")
    return y


# ---------------------------------------------------------------------------------------------
# Pairwise reward model (TRL RewardTrainer)

def train_pairwise_reward_model(script_args, config, model_config):
    """Train a Bradley-Terry reward model (1 output) with TRL's RewardTrainer; returns output_dir."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardTrainer, get_peft_config
    training.set_seed(config.seed)
    train, evaluation = load_pairwise_data(script_args)
    name = model_config.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    import torch
    dtype = model_config.dtype if model_config.dtype in ("auto", None) else getattr(torch, model_config.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(model=model, args=config, train_dataset=train,
                            eval_dataset=evaluation if config.eval_strategy != "no" else None,
                            processing_class=tokenizer, peft_config=get_peft_config(model_config))
    metadata = training.base_metadata("pairwise reward model (Bradley-Terry)", name, config.seed,
                                      data=script_args.data_source_path or script_args.dataset_name,
                                      num_train=len(train), max_length=config.max_length)
    trainer.train(resume_from_checkpoint=training.resume_checkpoint(config.output_dir,
                                                                    config.resume_from_checkpoint))
    metadata["log_history"] = trainer.state.log_history
    return training.save_trained(trainer, tokenizer, config.output_dir, metadata, merge_lora=True)


# ---------------------------------------------------------------------------------------------
# Multi-objective regression reward model (plain transformers Trainer, masked MSE)

def masked_mse(predictions, targets):
    """Mean squared error over the finite entries of `targets` (NaN = missing attribute); 0 when none."""
    import torch
    mask = torch.isfinite(targets)
    diff = torch.where(mask, predictions - torch.nan_to_num(targets), torch.zeros_like(predictions))
    return (diff ** 2).sum() / mask.sum().clamp(min=1)


def _masked_mse_trainer():
    from transformers import Trainer

    class MaskedMSETrainer(Trainer):
        """Trainer whose loss is the masked MSE between the k outputs and the (NaN-holed) targets."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = masked_mse(outputs.logits.float(), labels.float())
            return (loss, outputs) if return_outputs else loss

    return MaskedMSETrainer


def train_regression_reward_model(model_name_or_path, data, attributes, output_dir, template=DEFAULT_TEMPLATE,
                                  prompt_column="prompt", response_column="continuation", standardize=True,
                                  max_length=512, eval_fraction=0.0, peft_config=None, args=None, callbacks=None,
                                  output_scale=None, label_range=None, **config_kwargs):
    """Train a k-output regression reward model and save it (with map_reward_model.json) to output_dir.

    Args:
        model_name_or_path: a sequence-classification-capable folder or hub id (its head is replaced).
        data: list of dicts, a datasets.Dataset or a file path; rows need the response column, the
            prompt column when the template uses {prompt}, and the attribute columns (null/NaN = missing).
        attributes: target column names (comma-separated string or list) = the k outputs, in order.
        template: input text, formatted with {prompt} and {response}; stored with the model.
        response_column: "continuation" (MAP results files) or any text column ("response", ...).
        standardize: train on (y − mean)/std per attribute; scores come back in the original units.
        output_scale, label_range: "0-100" maps scores so the labels' range (or label_range lo,hi) goes to
            10..90 (DPA's scale; rewardmodels.label_range).
        max_length: tokens kept per input (truncated from the left, so the response end survives).
        eval_fraction: hold out this share of rows (seeded) for evaluation.
        peft_config: optional PEFT LoraConfig (task type SEQ_CLS).
        args: a transformers TrainingArguments (or RewardConfig); else built from config_kwargs
            (output_dir, seed, learning_rate, num_train_epochs, per_device_train_batch_size, ...).
    Returns:
        output_dir.
    """
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
    from transformers import TrainingArguments
    attributes = arguments.str_list(attributes, "attributes")
    source = data
    if isinstance(data, str):
        data = load_rows(data)
    rows = data.to_list() if hasattr(data, "to_list") else list(data)
    if not rows:
        raise InputError("regression reward model: no training rows")
    if response_column not in rows[0]:
        if response_column == "continuation" and "generated" in rows[0]:
            for r in rows:
                r["continuation"] = records.continuation_of(r)
        else:
            raise InputError(f"response column {response_column!r} not in the data; columns: {sorted(rows[0])}")
    uses_prompt = "{prompt}" in template
    if uses_prompt and prompt_column not in rows[0]:
        raise InputError(f"template uses {{prompt}} but the data has no {prompt_column!r} column")
    y = regression_targets(rows, attributes, source=source if isinstance(source, str) else "the training data")
    mean = np.nanmean(y, axis=0) if standardize else np.zeros(len(attributes))
    std = np.nanstd(y, axis=0) if standardize else np.ones(len(attributes))
    std = np.where(std > 1e-12, std, 1.0)
    targets = ((y - mean) / std).astype(np.float32)
    if args is None:
        args = TrainingArguments(**training.common_config(output_dir, **config_kwargs))
    training.set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    texts = [rewardmodels.render(template, r.get(prompt_column, "") if uses_prompt else "", r[response_column]) for r in rows]
    encoded = tokenizer(texts, truncation=True, max_length=int(max_length))
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                                 "labels": targets.tolist()})
    evaluation = None
    if eval_fraction and 0 < float(eval_fraction) < 1:
        split = dataset.train_test_split(test_size=float(eval_fraction), seed=args.seed)
        dataset, evaluation = split["train"], split["test"]
    model = AutoModelForSequenceClassification.from_pretrained(
        model_name_or_path, num_labels=len(attributes), problem_type="regression", ignore_mismatched_sizes=True,
        id2label=dict(enumerate(attributes)), label2id={a: i for i, a in enumerate(attributes)})
    model.config.pad_token_id = tokenizer.pad_token_id
    if peft_config is not None:
        from peft import get_peft_model
        model = get_peft_model(model, peft_config)
    trainer = _masked_mse_trainer()(model=model, args=args, train_dataset=dataset, eval_dataset=evaluation,
                                    data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                                    callbacks=callbacks)
    metadata = training.base_metadata(
        "multi-objective regression reward model (masked MSE)", model_name_or_path, args.seed,
        attributes=attributes, num_train=len(dataset), missing_fraction=float(np.isnan(y).mean()))
    trainer.train(resume_from_checkpoint=training.resume_checkpoint(args.output_dir, getattr(
        args, "resume_from_checkpoint", None)))
    metadata["log_history"] = trainer.state.log_history
    rm_info = {"kind": "regression", "attributes": attributes, "template": template, "mean": mean.tolist(),
               "std": std.tolist(), "max_length": int(max_length), "truncation_side": "left",
               "scale": rewardmodels.label_range(y, output_scale, label_range)}
    records.save_json_atomic(rm_info, os.path.join(args.output_dir, RM_FILE), indent=2)
    return training.save_trained(trainer, tokenizer, args.output_dir, dict(metadata, reward_model=rm_info),
                                 merge_lora=True)


class RegressionRewardScorer(rewardmodels.RewardModel):
    """Score (prompt, continuation) pairs with a trained regression reward model: (n, k) float64 in the
    attributes' original units (or 0-100 when saved with a scale). Loaded lazily on first call."""

    def __init__(self, model_dir, device=None, batch_size=16):
        if not os.path.isfile(os.path.join(model_dir, RM_FILE)):
            raise NotFoundError(f"{model_dir!r} is not a regression reward model folder (no {RM_FILE}); train one "
                                "with python rewardTrainer.py --objective=regression ...")
        super().__init__(model_dir, device=device, batch_size=batch_size)


def register_regression_values(model_dir, names=None, device=None, batch_size=16, overwrite=False):
    """Register the k outputs of a regression reward model as k custom values (value registry).

    names: value names, one per attribute (default the attribute names). The model is loaded once,
    on first use, and shared by the k values. Returns the registered names.
    """
    from mapalign import values as value_registry
    scorer = RegressionRewardScorer(model_dir, device=device, batch_size=batch_size)
    names = arguments.str_list(names, "names") if names is not None else list(scorer.attributes)
    if len(names) != len(scorer.attributes):
        raise InputError(f"{len(names)} names for {len(scorer.attributes)} outputs {scorer.attributes}")
    for index, name in enumerate(names):
        def fn(prompts, continuations, _index=index):
            return scorer(prompts, continuations)[:, _index]
        value_registry.register_value(name, fn=fn, input_contract="prompt_and_continuation", score_type="custom",
                                      batch_size=batch_size, overwrite=overwrite,
                                      description=f"output {index} ({scorer.attributes[index]}) of the regression "
                                                  f"reward model {model_dir}")
    return names


# ---------------------------------------------------------------------------------------------
# Command line

def _config_classes():
    from trl import ModelConfig, RewardConfig  # imported here: TRL is slow to import
    return RewardScriptArguments, RewardConfig, ModelConfig


def _typed(value, tp):
    """A flag's value (python-fire's literal) as a field of type `tp` takes it, as TRL's argument parser
    would have typed the text: a number for a str field becomes its text, a comma tuple for a str field
    "a,b", for a list field a list."""
    kinds = {typing.get_origin(a) or a for a in (typing.get_args(tp) or (tp,))}
    if list in kinds and isinstance(value, (tuple, str)):
        return list(value) if isinstance(value, tuple) else value if str in kinds else [value]
    if str in kinds and isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if str in kinds and isinstance(value, (int, float)) and not isinstance(value, bool) and not kinds & {int, float}:
        return str(value)
    return value


def configs_from_flags(flags):
    """(RewardScriptArguments, RewardConfig, ModelConfig) from the command line's flags: each flag fills the
    field of its name (the three share none), typed as the field wants. --evaluation_strategy is taken as
    the old name of --eval_strategy; bf16, gradient_checkpointing and report_to are off unless given
    (CPU-safe). Raises errors.InputError naming an unknown flag and listing the valid ones."""
    classes = _config_classes()
    flags = dict(CPU_SAFE, **{OLD_NAMES.get(k, k): v for k, v in flags.items()})
    fields = [{f.name: f for f in configs.config_fields(c)} for c in classes]
    unknown = [k for k in flags if not any(k in f for f in fields)]
    if unknown:
        raise configs.unknown_flag_error(unknown, [n for f in fields for n in f])
    return tuple(c(**{k: _typed(v, f[k].type) for k, v in flags.items() if k in f}) for c, f in zip(classes, fields))


def train_reward(**flags):
    """Train a reward model: pairwise (Bradley-Terry), multi-objective regression or ridge probes (module
    docstring). The flags fill RewardScriptArguments (data and objective), TRL's RewardConfig (training:
    output_dir, learning_rate, ...) and ModelConfig (model_name_or_path, use_peft, ...), each flag the field
    of its name; an unknown flag is refused. Unless given, bf16, gradient_checkpointing and report_to are
    off (CPU-safe). Returns the output folder."""
    script_args, config, model_config = configs_from_flags(flags)
    if model_config.model_name_or_path is None:
        raise InputError("--model_name_or_path is required (e.g. gpt2 or a local folder)")
    if script_args.objective == "pairwise":
        return train_pairwise_reward_model(script_args, config, model_config)
    if script_args.objective not in ("regression", "ridge"):
        raise InputError(f"--objective must be pairwise, regression or ridge; got {script_args.objective!r}")
    if not script_args.attributes or not script_args.data_source_path:
        raise InputError(f"--objective={script_args.objective} needs --attributes=a,b,... and --data_source_path=<file>")
    label_range = arguments.float_list(script_args.label_range, "label_range") if script_args.label_range else None
    if script_args.objective == "ridge":
        return train_ridge_from_file(model_config.model_name_or_path, script_args.data_source_path,
                                     script_args.attributes, config.output_dir, script_args, label_range, config.seed)
    from trl import get_peft_config
    peft_config = get_peft_config(model_config)
    if peft_config is not None:
        peft_config.task_type = "SEQ_CLS"
    return train_regression_reward_model(
        model_config.model_name_or_path, script_args.data_source_path, script_args.attributes, config.output_dir,
        template=script_args.template, prompt_column=script_args.prompt_column,
        response_column=script_args.response_column, standardize=script_args.standardize,
        max_length=config.max_length or 512, eval_fraction=script_args.eval_fraction, peft_config=peft_config,
        args=config, output_scale=script_args.output_scale, label_range=label_range)


@functools.cache
def documented():
    """train_reward with the signature and --help of the three configs (built on first use: imports TRL);
    --help shows the CPU-safe defaults this command uses, not TRL's."""
    fn = configs.document(train_reward, _config_classes())
    sig = fn.__signature__
    fn.__signature__ = sig.replace(parameters=[p.replace(default=CPU_SAFE[p.name]) if p.name in CPU_SAFE else p
                                               for p in sig.parameters.values()])
    return fn


def train_ridge_from_file(backbone, data_path, attributes, output_dir, script_args, label_range=None, seed=0):
    """--objective=ridge: ridge probes on a frozen backbone (rewardmodels.train_ridge_reward_model)."""
    rows = load_rows(data_path).to_list()
    if rows and script_args.response_column == "continuation" and "continuation" not in rows[0]:
        for r in rows:
            r["continuation"] = records.continuation_of(r)
    folder = rewardmodels.train_ridge_reward_model(
        backbone, rows, arguments.str_list(attributes, "attributes"), output_dir, pooling=script_args.pooling,
        template=script_args.template, prompt_column=script_args.prompt_column,
        response_column=script_args.response_column, val_fraction=script_args.val_fraction, seed=seed,
        output_scale=script_args.output_scale, label_range_given=label_range)
    info = rewardmodels.read_info(folder)
    for a, alpha, mse in zip(info["attributes"], info["alpha"], info["val_mse"]):
        print(f"ridge probe {a}: alpha={alpha:g}, validation MSE={mse:.4g}")
    print(f"saved {folder}; use it as --value_list=rm:{folder}")
    return folder
