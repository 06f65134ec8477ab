"""Supervised fine-tuning on prompt-completion data with TRL's SFTTrainer, shared by the trainers
that need it (ALT's conditional SFT in trainALT.py, DPA's rejection-sampling fine-tuning).

    save_path = sft.train_sft(model_name, examples, save_path, metadata=None, *, use_lora=True,
                              loss_factory=None, prepare_model=None, learning_rate=2e-5,
                              num_train_epochs=1, per_device_train_batch_size=8,
                              gradient_accumulation_steps=1, warmup_ratio=0.0, adam_beta1=0.9,
                              adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
                              lr_scheduler_type="linear", max_length=1024, unfrozen_layers_ratio=1.0,
                              lora_r=16, lora_alpha=32, lora_dropout=0.05,
                              lora_target_modules="all-linear", merge_lora=True, seed=0,
                              resume_from_checkpoint=None, report_to="none", bf16=False,
                              gradient_checkpointing=False, logging_steps=10, save_steps=50,
                              max_steps=-1, dtype=None, device=None, overwrite=False, callbacks=None)

`examples` is a list of dicts {"prompt": ..., "completion": ...}: either model-ready strings (the
prompt already chat-formatted, see models.format_prompts; an optional boolean "eos" key, default
True, says whether EOS ends the completion) or TRL's conversational form (lists of {"role",
"content"} messages). The loss covers completion tokens only (TRL's completion-only loss).

Custom losses. `loss_factory(model, tokenizer) -> loss_fn` is called once the model is loaded and
prepared, before any adapter is added (so it can take a frozen copy as a reference).
`loss_fn(model, inputs) -> (loss_sum, num_tokens, metrics)` gets the collated batch (input_ids,
attention_mask, labels with -100 outside the completion) and returns the loss summed over the
completion tokens of the micro-batch, their number, and a dict of floats to log. The trainer divides
by the token count of the whole accumulated batch, so the loss is one token-level mean over the
optimizer batch (the ALT objective, spec §1.5), not a mean of per-micro-batch means. TRL ≥ 1.15 runs
the model with a fused LM head that returns no logits; `loss_fn` calls `model(input_ids=...,
attention_mask=...)` without the fused flag to get full-vocabulary logits.

`prepare_model(model, tokenizer) -> (model, tokenizer)` may change the model before training (Quark
adds tokens and resizes embeddings there).

Each call is one fresh optimizer and LR schedule (Adam betas/eps as given, linear warm-up over
`warmup_ratio` of the steps). Checkpoints go to `save_path/checkpoint-*` every `save_steps` steps;
a killed run resumes from the newest one; the folder is complete once training.METADATA_FILE exists.
"""
from mapalign import models
from mapalign import training
from mapalign.errors import InputError


def _sft_trainer_class():
    from trl import SFTTrainer

    class LossSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss, when `loss_fn` is given, comes from `loss_fn(model, inputs)`."""

        def __init__(self, *args, loss_fn=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_fn = loss_fn
            if loss_fn is not None:
                self.loss_is_scaled_for_ga = True  # compute_loss divides by the accumulated token count

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.loss_fn is None:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            import torch
            mode = "train" if self.model.training else "eval"
            total, count, metrics = self.loss_fn(model, inputs)
            if num_items_in_batch is not None:
                loss = total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
            else:
                steps = getattr(self, "current_gradient_accumulation_steps", 1) if model.training else 1
                loss = total / torch.as_tensor(count, device=total.device).clamp(min=1) / steps
            for key, value in metrics.items():
                self._metrics[mode][key].append(float(value))
            return (loss, None) if return_outputs else loss

    return LossSFTTrainer


def freeze_bottom_layers(model, unfrozen_layers_ratio):
    """Train only the top `unfrozen_layers_ratio` of the transformer blocks (ALT's partial freezing:
    0.3 = top 30% train). Parameters of the bottom blocks get requires_grad=False; embeddings and
    the head are left as they are. Returns the number of frozen blocks."""
    import torch
    ratio = float(unfrozen_layers_ratio)
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"unfrozen_layers_ratio must be in (0, 1]; got {unfrozen_layers_ratio}")
    if ratio == 1.0:
        return 0
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    blocks = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n), None)
    if blocks is None:
        raise InputError(f"cannot find the {n} transformer blocks of {type(model).__name__} to freeze; "
                         "use unfrozen_layers_ratio=1.0")
    frozen = n - max(1, round(n * ratio))
    for block in list(blocks)[:frozen]:
        for p in block.parameters():
            p.requires_grad_(False)
    return frozen


def tokenize_examples(tokenizer, examples):
    """Token ids and completion masks of string prompt-completion examples.

    TRL appends EOS to every plain-text completion; here an example's optional "eos" key (default
    True) decides, so callers can leave EOS off a completion cut at the generation limit (ALT's
    EOS rule, spec §1.4). The completion starts where the tokenized prompt and prompt+completion
    diverge (as TRL does). BOS is added by the tokenizer unless the prompt already starts with it.
    Returns a list of {"input_ids", "completion_mask"} dicts.
    """
    out = []
    bos = tokenizer.bos_token
    for e in examples:
        special = not (bos and e["prompt"].startswith(bos))
        prompt_ids = tokenizer(e["prompt"], add_special_tokens=special)["input_ids"]
        ids = tokenizer(e["prompt"] + e["completion"], add_special_tokens=special)["input_ids"]
        start = 0
        while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
            start += 1
        if e.get("eos", True) and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        out.append({"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)})
    return out


def build_sft_trainer(model, tokenizer, examples, output_dir, loss_fn=None, peft_config=None, learning_rate=2e-5,
                      num_train_epochs=1, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                      warmup_ratio=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
                      lr_scheduler_type="linear", max_length=1024, unfrozen_layers_ratio=1.0, seed=0,
                      report_to="none", bf16=False, gradient_checkpointing=False, logging_steps=10, save_steps=50,
                      max_steps=-1, callbacks=None):
    """A configured SFTTrainer (completion-only loss) on `examples`; see the module docstring.
    With `peft_config`, the adapter is added here (before freezing, so frozen blocks keep their
    adapters frozen too)."""
    from datasets import Dataset
    from trl import SFTConfig
    if not examples:
        raise InputError("no training examples: the datapool or data file is empty")
    bad = [i for i, e in enumerate(examples) if "prompt" not in e or "completion" not in e]
    if bad:
        raise InputError(f"SFT examples need 'prompt' and 'completion'; example {bad[0]} has {sorted(examples[bad[0]])}")
    if all(isinstance(e["prompt"], str) for e in examples):
        dataset = Dataset.from_list(tokenize_examples(tokenizer, examples))
    else:  # conversational: TRL applies the chat template (which closes the turn itself)
        dataset = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    if peft_config is not None:
        from peft import get_peft_model
        model = get_peft_model(model, peft_config)
    freeze_bottom_layers(model, unfrozen_layers_ratio)
    config = SFTConfig(**training.common_config(
        output_dir, seed=seed, report_to=report_to, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
        logging_steps=logging_steps, save_steps=save_steps, learning_rate=float(learning_rate),
        num_train_epochs=float(num_train_epochs), per_device_train_batch_size=int(per_device_train_batch_size),
        gradient_accumulation_steps=int(gradient_accumulation_steps), max_steps=int(max_steps),
        warmup_steps=float(warmup_ratio), adam_beta1=float(adam_beta1), adam_beta2=float(adam_beta2),
        adam_epsilon=float(adam_epsilon), weight_decay=float(weight_decay), lr_scheduler_type=lr_scheduler_type,
        max_length=int(max_length), completion_only_loss=True, packing=False, dataset_num_proc=None))
    return _sft_trainer_class()(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=callbacks, loss_fn=loss_fn)


def train_sft(model_name, examples, save_path, metadata=None, *, use_lora=True, loss_factory=None,
              prepare_model=None, learning_rate=2e-5, num_train_epochs=1, per_device_train_batch_size=8,
              gradient_accumulation_steps=1, warmup_ratio=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
              weight_decay=0.0, lr_scheduler_type="linear", max_length=1024, unfrozen_layers_ratio=1.0, lora_r=16,
              lora_alpha=32, lora_dropout=0.05, lora_target_modules="all-linear", merge_lora=True, seed=0,
              resume_from_checkpoint=None, report_to="none", bf16=False, gradient_checkpointing=False,
              logging_steps=10, save_steps=50, max_steps=-1, dtype=None, device=None, overwrite=False,
              callbacks=None):
    """Fine-tune `model_name` on `examples` and save it to `save_path`; returns save_path.

    Args:
        model_name: what models.load_model_and_tokenizer accepts (the embedded "smollm2-135m", a
            folder such as the previous iteration's checkpoint, a hub id).
        examples: prompt-completion dicts (module docstring).
        save_path: output folder (checkpoints inside; merged model + tokenizer + metadata at the end).
        metadata: dict recorded in save_path/map_training.json (default training.base_metadata("SFT", ...));
            the hyperparameters and the log history are added.
        use_lora: train a LoRA adapter (lora_*; merged into the saved model when merge_lora) or all weights.
        loss_factory, prepare_model: hooks (module docstring).
        learning_rate, num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps,
        warmup_ratio (fraction of the steps), adam_beta1/2, adam_epsilon, weight_decay, lr_scheduler_type,
        max_length (tokens of prompt + completion), unfrozen_layers_ratio (top share of blocks that train),
        seed, report_to, bf16, gradient_checkpointing, logging_steps, save_steps, max_steps: as in TRL.
        resume_from_checkpoint: training.resume_checkpoint's rule (None: the newest checkpoint if any).
        dtype, device: model loading (device None = cuda when available).
        overwrite: retrain although save_path holds a finished model (else return at once).
    """
    if training.is_finished(save_path) and not overwrite:
        print(f"{save_path} already holds a finished model; pass --overwrite=True to retrain.")
        return save_path
    training.set_seed(seed)
    model, tokenizer = models.load_model_and_tokenizer(model_name, device=device, dtype=dtype, padding_side="right")
    if prepare_model is not None:
        model, tokenizer = prepare_model(model, tokenizer)
    model.train()
    loss_fn = loss_factory(model, tokenizer) if loss_factory is not None else None
    peft_config = training.lora_config(lora_r, lora_alpha, lora_dropout, lora_target_modules) if use_lora else None
    hyper = dict(learning_rate=learning_rate, num_train_epochs=num_train_epochs,
                 per_device_train_batch_size=per_device_train_batch_size,
                 gradient_accumulation_steps=gradient_accumulation_steps, warmup_ratio=warmup_ratio,
                 adam_beta1=adam_beta1, adam_beta2=adam_beta2, adam_epsilon=adam_epsilon, weight_decay=weight_decay,
                 lr_scheduler_type=lr_scheduler_type, max_length=max_length,
                 unfrozen_layers_ratio=unfrozen_layers_ratio, max_steps=max_steps)
    trainer = build_sft_trainer(model, tokenizer, examples, save_path, loss_fn=loss_fn, peft_config=peft_config,
                                seed=seed, report_to=report_to, bf16=bf16,
                                gradient_checkpointing=gradient_checkpointing, logging_steps=logging_steps,
                                save_steps=save_steps, callbacks=callbacks, **hyper)
    metadata = dict(metadata or training.base_metadata("SFT", model_name, seed))
    metadata.update(trainer=type(trainer).__name__, num_examples=len(examples), use_lora=bool(use_lora),
                    lora={"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout,
                          "target_modules": lora_target_modules} if use_lora else None,
                    hyperparameters=hyper)
    trainer.train(resume_from_checkpoint=training.resume_checkpoint(save_path, resume_from_checkpoint))
    metadata["log_history"] = trainer.state.log_history
    tokenizer.padding_side = "left"  # the saved tokenizer is ready for batched generation
    return training.save_trained(trainer, tokenizer, save_path, metadata, merge_lora=merge_lora)


def completion_logits(model, inputs):
    """Full-vocabulary logits of a causal LM at the completion positions of a collated SFT batch.

    Returns (logits (N, V), targets (N,), mask (B, T-1) bool): row i of logits predicts targets[i],
    the i-th completion token in row-major order of the batch; mask marks those positions among
    the T-1 next-token positions. The head is applied to the completion positions only (the prompt
    positions' logits are never needed), which saves most of the vocabulary-sized work; models
    whose logits are not head(last hidden state), such as logit soft-capping, use the full logits.
    Calls the model without TRL's fused-head flag."""
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
    if getattr(model.config, "final_logit_softcapping", None) is None and model.get_output_embeddings() is not None:
        out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
        logits = model.get_output_embeddings()(out.hidden_states[-1][:, :-1][mask])
    else:
        logits = model(**kwargs).logits[:, :-1][mask]
    return logits, labels[mask], mask
