"""ALT: alignment with textual feedback (Quark, ALT-RM, ALT-LMC, ALT-LMU, and MAP palettes as feedback).

    # all iterations (each stage skips what is already done, and resumes after a kill)
    python trainALT.py --output_dir=results/alt-rm --feedback=alt_rm --value_list=sentiment run --iterations=3
    # or one stage per job (e.g. a SLURM chain)
    python trainALT.py --output_dir=results/alt-rm --feedback=alt_rm --value_list=sentiment sample --iteration=1
    python trainALT.py ... feedback --iteration=1
    python trainALT.py ... train --iteration=1
    python trainALT.py ... validate --iteration=1
    # LLM feedback through any OpenAI-compatible endpoint (key from $OPENAI_API_KEY)
    python trainALT.py --feedback=alt_lmc --judge_base_url=http://127.0.0.1:8000/v1 --judge_model=smollm2 ... run
    # a palette-conditioned model (MAP × ALT), then generation for any palette
    python trainALT.py --output_dir=results/alt-pal --feedback=palette --value_list=sentiment,humor run
    python trainALT.py --output_dir=results/alt-pal --feedback=palette --value_list=sentiment,humor \
        validate --iteration=3 --palette=0.8,0.5

An iteration k (seed = seed + k) writes into {output_dir}/iter{k}/:
    samples/   sample: generations of the training prompts (gendata; iteration 1 from the initial
               model unconditioned, later ones from iteration k−1's model conditioned on the best feedback)
    feedback.json   feedback: rewards through the value registry (quark, alt_rm, palette) or an LLM
               judge's feedback (alt_lmc, alt_lmu); failed samples are dropped and counted in the sidecar
    datapool.json   train: the datapool after flush(drop_factor) and adding this iteration's samples
    model/     train: the fine-tuned policy (started from iteration k−1's model; fresh optimizer)
    validate/  validate: samples of the validation prompts conditioned on a feedback, with rewards;
               validate.json holds the mean rewards with standard errors.
Generation by other scripts: `python gendata.py --basemodel_name={output_dir}/iter3/model
--conditioning="Excellent. input: {prompt}" ...` (the string printed by `conditioning`).
"""
import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mapalign import alt
from mapalign import arguments
from mapalign import configs
from mapalign import models
from mapalign import records
from mapalign import training
from mapalign.configs import option
from mapalign.generation import TextGeneration, parse_chat_flag
from mapalign.errors import InputError

DEFAULT_SAMPLES = {"quark": 96, "alt_rm": 96, "palette": 96, "alt_lmc": 20, "alt_lmu": 20}


@dataclass(kw_only=True)
class ALTConfig(training.LoRAOptions):
    """The settings of an ALT run (trainALT.py's flags before the command); LoRA's are LoRAOptions'."""
    output_dir: str = option("results/alt", "folder of the run (one sub-folder per iteration)")
    feedback: str = option("alt_rm", "quark | alt_rm | alt_lmc | alt_lmu | palette (see alt.py)")
    value_list: Optional[str] = option(
        None, "values scored through the value registry (comma list); the reward of quark/alt_rm is λᵀr over "
              "them, palette feedback names one quantile bin per value, and validation reports each of them. "
              "Required except for alt_lmc/alt_lmu")
    lam_list: Optional[str] = option(None, "λ, one per value (default 1 each)")
    model_name: str = option(models.DEFAULT_MODEL, "the initial policy and the KL reference (default the embedded "
                                                   "SmolLM2)")
    data_name: str = option("builtin", "prompt source (prompts.py; builtin is offline)")
    num_train_prompts: int = option(64, "the first N prompts are the training prompts")
    num_valid_prompts: int = option(32, "the next N prompts are the validation prompts")
    samples_per_prompt: Optional[int] = option(
        None, "generations per training prompt per iteration (default 96 for reward feedback, 20 for LLM "
              "feedback, as upstream)")
    max_new_tokens: int = option(64, "generation budget in tokens (64 as upstream TL;DR); the EOS rule uses it")
    temperature: float = option(1.0, "sampling temperature of the training generations (gendata's top-k sampler)")
    top_k: int = option(50, "top-k of the training generations")
    seed: int = option(0, "run seed; iteration k uses seed + k")
    num_quantiles: int = option(5, "K reward quantiles")
    phrases: Optional[str] = option(None, "ALT-RM phrases best first (default Excellent./Good./Mediocre./Bad./"
                                          "Horrible.)")
    template: Optional[str] = option(None, "conditioning template with {feedback} and {prompt} (default per "
                                           "feedback kind)")
    palette_words: bool = option(True, "palette feedback adds each bin's ALT-RM word: 'top 20% (excellent)'")
    quantiles: str = option("per_prompt", "per_prompt or global quantile assignment")
    drop_factor: float = option(1.0, "share of the datapool dropped each iteration (1.0: no replay, as upstream)")
    per_quantile: int = option(2, "kept samples per quantile per prompt for reward feedback")
    per_prompt: int = option(8, "kept samples per prompt for LLM feedback")
    kl_coef: float = option(0.05, "β of the KL(π_ref‖π_θ) term; 0 = the noKL variant (no reference model)")
    entropy_coef: float = option(0.06, "α of the entropy bonus")
    learning_rate: float = option(2e-5, "2e-5 (upstream, full fine-tuning); LoRA usually wants 1e-4..1e-3")
    num_train_epochs: float = option(2, "epochs per iteration")
    per_device_train_batch_size: int = option(8, "examples per device per step")
    gradient_accumulation_steps: int = option(1, "passes per optimizer step")
    warmup_ratio: float = option(0.05, "linear warm-up share of each iteration's steps")
    adam_beta1: float = option(0.8, "Adam β1 (upstream)")
    adam_beta2: float = option(0.999, "Adam β2")
    adam_epsilon: float = option(1e-8, "Adam ε")
    weight_decay: float = option(3e-7, "weight decay (upstream)")
    unfrozen_layers_ratio: float = option(1.0, "top share of transformer blocks that train (1.0 = all; upstream "
                                               "GPT-J 0.3)")
    use_lora: Optional[bool] = option(
        None, "LoRA adapters (default True for textual feedback; Quark trains all weights, since TRL forbids "
              "adapters on the head and the new token rows must train)")
    max_length: int = option(1024, "tokens of conditioned prompt + generation in training")
    judge: str = option("local", "local (a transformers causal LM, --judge_model, default the embedded SmolLM2) or "
                                 "endpoint (set automatically by --judge_base_url)")
    judge_base_url: Optional[str] = option(None, "an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    judge_model: Optional[str] = option(None, "the judge's model name")
    judge_api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the endpoint's key")
    judge_concurrency: int = option(8, "parallel requests to the endpoint")
    judge_cache_dir: Optional[str] = option(None, "on-disk answer cache (default {output_dir}/judge_cache)")
    judge_tries: int = option(5, "tries per request (exponential backoff)")
    valid_samples: int = option(1, "generations per validation prompt")
    valid_temperature: float = option(1.0, "0 = greedy validation (default 1.0 sampling, top-k as training)")
    use_chat_template: str = option("auto", "auto | True | False")
    batch_size: int = option(32, "sequences per generation forward pass")
    checkpoint_every: int = option(8, "journal sampling progress every this many prompts (the resume point)")
    device: Optional[str] = option(None, "model placement (cpu, cuda; default auto)")
    dtype: Optional[str] = option(None, "model dtype (default float32)")
    overwrite: bool = option(False, "redo stages whose outputs exist with other settings (default: refuse)")


class ALT:
    """ALT trainer: stages sample, feedback, train, validate (each for one --iteration) and run.

    Commands: sample, feedback, train, validate, run, conditioning; `python trainALT.py sample --help`
    explains a command's own flags. The flags below (ALTConfig's fields) configure the run and go before
    the command.

    Args:
        progress: tqdm bars.
    """

    def __init__(self, progress=True, **flags):
        cfg = self.config = configs.config_from_flags(ALTConfig, flags)
        feedback, output_dir = cfg.feedback, cfg.output_dir
        values = arguments.str_list(cfg.value_list, "value_list") if cfg.value_list is not None else []
        lam = arguments.float_list(cfg.lam_list, "lam_list") if cfg.lam_list is not None else None
        self.fb = alt.Feedback(feedback, values=values, lam=lam, num_quantiles=cfg.num_quantiles,
                               phrases=arguments.str_list(cfg.phrases, "phrases") if cfg.phrases is not None else None,
                               template=cfg.template, palette_words=cfg.palette_words)
        use_lora = cfg.use_lora
        if use_lora is None:
            use_lora = feedback != "quark"
        if feedback == "quark" and use_lora:
            raise InputError("--feedback=quark trains the new token embeddings and the head, which TRL does not allow "
                             "under a LoRA adapter; drop --use_lora or use textual feedback (alt_rm).")
        self.output_dir = output_dir
        self.model_name = cfg.model_name
        self.data_name = cfg.data_name
        self.num_train, self.num_valid = int(cfg.num_train_prompts), int(cfg.num_valid_prompts)
        self.samples_per_prompt = int(cfg.samples_per_prompt or DEFAULT_SAMPLES[feedback])
        self.max_new_tokens, self.temperature = int(cfg.max_new_tokens), float(cfg.temperature)
        self.top_k = int(cfg.top_k)
        self.seed = int(cfg.seed)
        self.quantiles, self.drop_factor = cfg.quantiles, float(cfg.drop_factor)
        self.per_quantile, self.per_prompt = int(cfg.per_quantile), int(cfg.per_prompt)
        self.kl_coef, self.entropy_coef = float(cfg.kl_coef), float(cfg.entropy_coef)
        self.use_lora = bool(use_lora)
        self.train_args = dict(
            learning_rate=float(cfg.learning_rate), num_train_epochs=float(cfg.num_train_epochs),
            per_device_train_batch_size=int(cfg.per_device_train_batch_size),
            gradient_accumulation_steps=int(cfg.gradient_accumulation_steps), warmup_ratio=float(cfg.warmup_ratio),
            adam_beta1=float(cfg.adam_beta1), adam_beta2=float(cfg.adam_beta2), adam_epsilon=float(cfg.adam_epsilon),
            weight_decay=float(cfg.weight_decay), unfrozen_layers_ratio=float(cfg.unfrozen_layers_ratio),
            lora_r=int(cfg.lora_r), lora_alpha=float(cfg.lora_alpha), lora_dropout=float(cfg.lora_dropout),
            lora_target_modules=cfg.lora_target_modules, max_length=int(cfg.max_length))
        judge = "endpoint" if cfg.judge_base_url else cfg.judge
        if judge not in ("local", "endpoint"):
            raise InputError(f"--judge must be 'local' or 'endpoint'; got {judge!r}")
        if judge == "endpoint" and not (cfg.judge_base_url and cfg.judge_model):
            raise InputError("--judge=endpoint needs --judge_base_url (e.g. http://127.0.0.1:8000/v1) and --judge_model")
        self.judge_cfg = dict(judge=judge, base_url=cfg.judge_base_url, model=cfg.judge_model or (
            models.DEFAULT_MODEL if judge == "local" else None), api_key_env=cfg.judge_api_key_env,
            concurrency=int(cfg.judge_concurrency), tries=int(cfg.judge_tries),
            cache_dir=cfg.judge_cache_dir or os.path.join(output_dir, "judge_cache"))
        self.valid_samples, self.valid_temperature = int(cfg.valid_samples), float(cfg.valid_temperature)
        self.use_chat_template = parse_chat_flag(cfg.use_chat_template)
        self.batch_size = int(cfg.batch_size)
        self.checkpoint_every = int(cfg.checkpoint_every)
        self.device, self.dtype = cfg.device, cfg.dtype
        self.overwrite, self.progress = bool(cfg.overwrite), bool(progress)
        if self.num_train < 1 or self.num_valid < 0:
            raise InputError("--num_train_prompts must be ≥ 1 and --num_valid_prompts ≥ 0")

    # -----------------------------------------------------------------------------------------
    # paths

    def iter_dir(self, iteration):
        return os.path.join(self.output_dir, f"iter{int(iteration)}")

    def policy(self, iteration):
        """The policy after `iteration` (0 = the initial model)."""
        return self.model_name if int(iteration) == 0 else os.path.join(self.iter_dir(iteration), "model")

    def _check_iteration(self, iteration, stage):
        k = int(iteration)
        if k < 1:
            raise InputError(f"--iteration must be ≥ 1 for {stage}; got {iteration}")
        if k > 1 and not training.is_finished(self.policy(k - 1)):
            raise InputError(f"{stage} of iteration {k} needs the model of iteration {k - 1} "
                             f"({self.policy(k - 1)!r}); run `train --iteration={k - 1}` first.")
        return k

    def _generator(self, model, save_directory, seed, conditioning, samples, temperature, do_sample=True):
        return TextGeneration(basemodel_name=model, data_name=self.data_name, save_directory=save_directory,
                              seed=seed, use_chat_template=self.use_chat_template if self.use_chat_template is not None
                              else "auto", device=self.device, dtype=self.dtype,
                              temperature=temperature if do_sample else 1.0, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, do_sample=do_sample, samples_per_prompt=samples,
                              overwrite=self.overwrite, progress=self.progress, conditioning=conditioning,
                              checkpoint_every=self.checkpoint_every)

    def _sampler(self, k):
        cond = None if k == 1 else self.fb.conditioning_template(self.fb.best_feedback())
        return self._generator(self.policy(k - 1), os.path.join(self.iter_dir(k), "samples"), self.seed + k, cond,
                               self.samples_per_prompt, self.temperature)

    # -----------------------------------------------------------------------------------------
    # stages

    def conditioning(self, feedback_text=None, palette=None):
        """The gendata --conditioning template for the best feedback (or the given feedback / palette)."""
        return self.fb.conditioning_template(self._inference_feedback(feedback_text, palette))

    def _inference_feedback(self, feedback_text=None, palette=None):
        if palette is not None:
            if self.fb.kind != "palette":
                raise InputError("--palette needs --feedback=palette")
            return self.fb.render_palette(arguments.float_list(palette, "palette"))
        if feedback_text is not None:
            return self.fb.check_feedback(str(feedback_text))
        return self.fb.best_feedback()

    def sample(self, iteration=1):
        """Sample samples_per_prompt generations of each training prompt (resumable). Returns the file."""
        k = self._check_iteration(iteration, "sample")
        gen = self._sampler(k)
        if self.num_train > len(gen.prompts):
            raise InputError(f"--num_train_prompts={self.num_train} but {self.data_name!r} has {len(gen.prompts)} prompts")
        return gen.generate_from_original_model(batch_size=self.batch_size, start_index=0, end_index=self.num_train)

    def feedback(self, iteration=1, chunk=64):
        """Give every sample of the iteration its feedback (resumable, in chunks of `chunk` samples).
        Returns the feedback file; its sidecar counts the samples whose feedback failed (dropped)."""
        from tqdm.auto import tqdm
        k = int(iteration)
        gen = self._sampler(k)
        samples_path = gen.output_path(0, self.num_train)
        recs = records.load_records(samples_path)
        tokenizer = models.load_tokenizer(models.resolve_model_name(self.policy(k - 1))[1])
        out = os.path.join(self.iter_dir(k), "feedback.json")
        fp = {"samples": records.load_metadata(samples_path).get("fingerprint"), "feedback": self.fb.to_json(),
              "judge": None if self.fb.reward_based else {x: self.judge_cfg[x] for x in ("judge", "base_url", "model")},
              "max_new_tokens": self.max_new_tokens, "iteration": k}
        with records.Checkpoint(out, fp, overwrite=self.overwrite) as ckpt:
            if ckpt.complete:
                print(f"trainALT: {out} is complete; nothing to do.")
                return out
            scorer = self._feedback_function()
            failed = (ckpt.state or {}).get("failed", 0)
            bar = tqdm(total=len(recs), initial=len(ckpt.done), desc=f"feedback iter{k}", disable=not self.progress)
            for lo in range(len(ckpt.done), len(recs), int(chunk)):
                batch = recs[lo:lo + int(chunk)]
                samples = [self._sample_of(r, tokenizer, k) for r in batch]
                scorer(samples)
                key = "reward" if self.fb.reward_based else "feedback"
                failed += sum(s.get(key) is None for s in samples)
                ckpt.append(samples, state={"failed": failed})
                bar.update(len(batch))
            bar.close()
            meta = {"kind": "alt_feedback", "iteration": k, "seed": self.seed + k, "samples_file": samples_path,
                    "counts": {"samples": len(recs), "failed_dropped": failed}, "feedback": self.fb.to_json()}
            ckpt.finalize(metadata=meta)
        print(f"trainALT: feedback for {len(recs)} samples written to {out}; {failed} failed and will be dropped")
        return out

    def _sample_of(self, rec, tokenizer, k):
        text = records.continuation_of(rec)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return {"id": rec.get("id"), "prompt_id": rec["prompt_id"], "sample_id": rec.get("sample_id", 0),
                "prompt": rec["prompt"], "generation": text, "num_tokens": n,
                "truncated": n >= self.max_new_tokens, "iteration": k}

    def _feedback_function(self):
        """samples -> None, filling reward/value_rewards (reward kinds) or feedback/score (judges)."""
        if self.fb.reward_based:
            from mapalign import values as registry
            scorers = registry.load_scorers(self.fb.values, device=self.device,
                                            basemodel_for_perplexity=self.model_name)

            def score(samples):
                prompts = [s["prompt"] for s in samples]
                texts = [s["generation"] for s in samples]
                table = {v: np.asarray(scorers[v](prompts, texts), dtype=np.float64) for v in self.fb.values}
                for i, s in enumerate(samples):
                    vr = {v: float(table[v][i]) if np.isfinite(table[v][i]) else None for v in self.fb.values}
                    s["value_rewards"] = vr
                    s["reward"] = alt.reward_of(vr, self.fb.values, self.fb.lam)
            return score
        judge = self._judge()

        def one(s):
            if self.fb.kind == "alt_lmc":
                return {"feedback": judge.lmc(s["prompt"], s["generation"], self.fb.categories)}
            parsed = judge.lmu(s["prompt"], s["generation"])
            return parsed or {"feedback": None}

        def label(samples):
            from mapalign import openai_compat
            if self.judge_cfg["judge"] == "endpoint":
                answers = openai_compat.map_concurrent(one, samples, self.judge_cfg["concurrency"], errors="none")
            else:
                answers = [one(s) for s in samples]
            for s, a in zip(samples, answers):
                s.update(a or {"feedback": None})
        return label

    def _judge(self):
        if self.judge_cfg["judge"] == "local":
            return alt.LocalJudge(self.judge_cfg["model"], device=self.device)
        from mapalign import openai_compat
        client = openai_compat.Client(self.judge_cfg["base_url"], model=self.judge_cfg["model"],
                                      api_key_env=self.judge_cfg["api_key_env"], max_tries=self.judge_cfg["tries"],
                                      cache_dir=self.judge_cfg["cache_dir"])
        return alt.ChatJudge(client)

    def build_pool(self, iteration):
        """The datapool of `iteration`: the previous pool flushed by drop_factor, plus this iteration's
        feedback. Returns (pool, counts)."""
        k = int(iteration)
        fb_path = os.path.join(self.iter_dir(k), "feedback.json")
        if not records.load_metadata(fb_path).get("fingerprint"):
            raise InputError(f"{fb_path!r} is missing or unfinished; run `feedback --iteration={k}` first.")
        new = records.load_records(fb_path)
        prev = os.path.join(self.iter_dir(k - 1), "datapool.json")
        if k > 1 and self.drop_factor < 1.0:
            if not os.path.isfile(prev):
                raise InputError(f"--drop_factor={self.drop_factor} replays the pool of iteration {k - 1}, but "
                                 f"{prev!r} does not exist; train iteration {k - 1} first.")
            pool = alt.DataPool.load(prev, self.fb)
            pool.drop_factor, pool.quantiles = self.drop_factor, self.quantiles
        else:
            pool = alt.DataPool(self.fb, self.quantiles, self.drop_factor)
        pool.flush(np.random.default_rng(self.seed + k))
        replayed = len(pool.samples)
        dropped = pool.add(new)
        if not pool.samples:
            raise InputError(f"the datapool of iteration {k} is empty: every one of the {len(new)} samples in "
                             f"{fb_path!r} lacks feedback (judge down or unparseable answers?); check the judge "
                             "and rerun `feedback` with --overwrite=True.")
        return pool, {"new": len(new), "dropped_no_feedback": dropped, "replayed": replayed, "pool": len(pool.samples)}

    def training_examples(self, pool, tokenizer, seed):
        """Balanced, length-aware conditional-SFT examples from the pool (one subset per prompt)."""
        rng = np.random.default_rng(seed)
        chat = self.use_chat_template if self.use_chat_template is not None else models.has_chat_template(tokenizer)
        kept = []
        for pid, members in sorted(pool.by_prompt().items()):
            if self.fb.reward_based:
                kept += alt.balanced_subset(members, self.fb.num_categories, per_category=self.per_quantile, rng=rng)
            else:
                kept += alt.balanced_subset(members, self.fb.num_categories, per_prompt=self.per_prompt, rng=rng)
        kept = [s for s in kept if s.get("feedback")]
        inputs = models.format_prompts(tokenizer, [self.fb.condition(s["feedback"], s["prompt"]) for s in kept],
                                       use_chat_template=chat)
        return [{"prompt": x, "completion": (s["generation"] if chat else " " + s["generation"]),
                 "eos": alt.needs_eos(s["generation"], s["num_tokens"], self.max_new_tokens)}
                for x, s in zip(inputs, kept)]

    def train(self, iteration=1, max_steps=-1, save_steps=50, resume_from_checkpoint=None):
        """Datapool update and conditional SFT from the previous iteration's model (fresh optimizer).
        Resumes from the newest checkpoint after a kill; returns the model folder."""
        from mapalign import sft
        k = self._check_iteration(iteration, "train")
        save_path = self.policy(k)
        if training.is_finished(save_path) and not self.overwrite:
            print(f"trainALT: {save_path} is trained; nothing to do.")
            return save_path
        pool, counts = self.build_pool(k)
        pool.save(os.path.join(self.iter_dir(k), "datapool.json"))
        start = self.policy(k - 1)
        tokenizer = models.load_tokenizer(models.resolve_model_name(start)[1])
        examples = self.training_examples(pool, tokenizer, self.seed + k)
        if not examples:
            raise InputError(f"no training example left in the datapool of iteration {k} after balancing")
        state = {}
        prepare = None
        if self.fb.kind == "quark":
            def prepare(model, tok):
                model, tok, old = alt.add_quark_tokens(model, tok, self.fb.num_quantiles, seed=self.seed)
                state["quark_vocab"] = old
                return model, tok
        reference = self.model_name if self.kl_coef != 0.0 else None

        def loss_factory(model, tok):
            return alt.alt_loss_factory(reference, beta=self.kl_coef, alpha=self.entropy_coef,
                                        quark_vocab=state.get("quark_vocab"), dtype=self.dtype)(model, tok)
        metadata = training.base_metadata(
            f"ALT ({self.fb.kind})", self.model_name, self.seed + k, iteration=k, start_model=start,
            feedback=self.fb.to_json(), kl_coef=self.kl_coef, entropy_coef=self.entropy_coef,
            variant="KL" if self.kl_coef else "noKL", quantiles=self.quantiles, drop_factor=self.drop_factor,
            per_quantile=self.per_quantile, per_prompt=self.per_prompt, datapool=counts,
            best_feedback=self.fb.best_feedback(), conditioning=self.conditioning(),
            examples_without_eos=sum(not e["eos"] for e in examples))
        print(f"trainALT: iteration {k}: {len(examples)} examples from a pool of {counts['pool']} "
              f"({counts['dropped_no_feedback']} samples without feedback dropped, {counts['replayed']} replayed)")
        return sft.train_sft(start, examples, save_path, metadata, use_lora=self.use_lora, loss_factory=loss_factory,
                             prepare_model=prepare, seed=self.seed + k, max_steps=max_steps, save_steps=save_steps,
                             resume_from_checkpoint=resume_from_checkpoint, dtype=self.dtype, device=self.device,
                             overwrite=self.overwrite, logging_steps=1, **self.train_args)

    def validate(self, iteration=1, feedback_text=None, palette=None, worst=False, kl_to_reference=False):
        """Sample the validation prompts from the iteration's model conditioned on the best feedback
        (or --feedback_text, or --palette=level,... for palette feedback; --worst=True: the worst
        feedback; iteration 0: the initial model unconditioned), score every value and write
        {iter}/validate.json: per condition, the mean and standard error of each value and of λᵀr,
        and with kl_to_reference the mean sequence log-ratio log π_θ(y|feedback, x) − log π_ref(y|x)
        over the samples (a k1 estimate of the KL to the reference, in nats). Returns the summary."""
        from mapalign import evaluation
        from mapalign import values as registry
        k = int(iteration)
        if self.num_valid < 1:
            raise InputError("--num_valid_prompts is 0: there is nothing to validate")
        if not self.fb.values:
            raise InputError("validate scores --value_list; name at least one value")
        if k > 0 and not training.is_finished(self.policy(k)):
            raise InputError(f"validate --iteration={k} needs the trained model {self.policy(k)!r}; train it first.")
        if k == 0:
            text, tag, cond = None, "reference", None
        else:
            text = self.fb.worst_feedback() if worst else self._inference_feedback(feedback_text, palette)
            tag = "worst" if worst else ("best" if text == self.fb.best_feedback() else "custom")
            cond = self.fb.conditioning_template(text)
        folder = tag if tag != "custom" else "custom-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
        gen = self._generator(self.policy(k), os.path.join(self.iter_dir(k), "validate", folder), self.seed + 1000 + k,
                              cond, self.valid_samples, self.valid_temperature or 1.0,
                              do_sample=self.valid_temperature > 0)
        if self.num_train + self.num_valid > len(gen.prompts):
            raise InputError(f"{self.num_train} training + {self.num_valid} validation prompts exceed the "
                             f"{len(gen.prompts)} prompts of {self.data_name!r}")
        path = gen.generate_from_original_model(batch_size=self.batch_size, start_index=self.num_train,
                                                end_index=self.num_train + self.num_valid)
        recs = records.load_records(path)
        prompts = [r["prompt"] for r in recs]
        texts = [records.continuation_of(r) for r in recs]
        table = {v: np.asarray(registry.load_scorer(v, device=self.device, basemodel_for_perplexity=self.model_name)(
            prompts, texts), dtype=np.float64) for v in self.fb.values}
        reward = sum(w * table[v] for v, w in zip(self.fb.values, self.fb.lam))
        summary = {"iteration": k, "condition": tag, "feedback": text, "n": len(recs), "samples_file": path,
                   "seed": self.seed + 1000 + k, "model": self.policy(k), "lam": self.fb.lam,
                   "sampling": {"samples_per_prompt": self.valid_samples, "temperature": self.valid_temperature,
                                "top_k": self.top_k, "max_new_tokens": self.max_new_tokens},
                   "values": {v: {"mean": float(table[v].mean()), "se": float(evaluation.standard_error(table[v]))}
                              for v in self.fb.values},
                   "reward": {"mean": float(reward.mean()), "se": float(evaluation.standard_error(reward))}}
        if kl_to_reference and k > 0:
            summary["kl_to_reference"] = self._kl_to_reference(gen, cond, prompts, texts)
        out = os.path.join(self.iter_dir(k), "validate.json")
        existing = {}
        if os.path.isfile(out):
            import json
            with open(out, encoding="utf-8") as f:
                existing = json.load(f)
        existing[tag if tag != "custom" else f"custom:{text}"] = summary
        records.save_json_atomic(existing, out, indent=2)
        v0 = self.fb.values[0]
        print(f"trainALT: iteration {k} [{tag}] {v0} = {summary['values'][v0]['mean']:.4f} "
              f"± {summary['values'][v0]['se']:.4f} (n={len(recs)})")
        return summary

    def _kl_to_reference(self, gen, cond, prompts, texts):
        from mapalign import evaluation
        model, tokenizer = gen.load_model()
        chat = gen.chat_template_used()
        ref, ref_tok = models.load_model_and_tokenizer(self.model_name, device=str(model.device), dtype=self.dtype)
        ratio = alt.log_ratio_to_reference(model, tokenizer, ref, ref_tok, cond, prompts, texts, chat)
        return {"mean": float(ratio.mean()), "se": float(evaluation.standard_error(ratio))}

    def run(self, iterations=3, validate=True):
        """All stages of iterations 1..N (finished stages are skipped; a killed stage resumes)."""
        for k in range(1, int(iterations) + 1):
            self.sample(k)
            self.feedback(k)
            self.train(k)
            if validate and self.num_valid > 0 and self.fb.values:
                self.validate(k)
        return self.policy(int(iterations))


configs.document(ALT, ALTConfig, accept_unknown=False)
