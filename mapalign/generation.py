"""Generate continuations of a prompt set with a causal LM and save them as a MAP results file.

    python gendata.py --basemodel_name=smollm2-135m --data_name=builtin --save_directory=results \
        generate_from_original_model --batch_size=32

writes `results/smollm2-135m-builtin.json` (one record per sample: prompt, generated, continuation, id,
prompt_id, sample_id; see records.py) and its metadata sidecar `results/smollm2-135m-builtin.meta.json`
(model and revision, seed, sampling config, prompt source, counts, timestamps, versions).
`--start_index/--end_index` generate one shard, `results/temp/{base}_{start}to{end}.json` (the original's
naming); `python mergeProcessor.py merge_gendata_bypattern 'results/temp/{base}_*to*.json'` joins them.

Sampling follows the original (temperature 1, top_k 50, num_beams 1, do_sample, max_new_tokens 50), now
seeded: the RNG is re-seeded for every batch from (seed, index of the batch's first prompt), so a run that
was killed and restarted produces exactly the records of an uninterrupted run with the same batch size.
Progress is journaled (records.Checkpoint) to `{output}.journal.jsonl` every `checkpoint_every` prompts, one
appended line per batch; re-running the same command resumes from there, and the output is written
atomically from the journal at the end.

Perplexity is not written at generation time (the original computed it here, with a second pass per
sample): add it with `python rewardProcessor.py --file_path=... add_reward --value=perplexity`, which
defaults to the model named in this file's sidecar, so one implementation scores every file.

Chat models: by default (`--use_chat_template=auto`) prompts go through the tokenizer's chat template
when it has one (SmolLM2-Instruct does); `--use_chat_template=False` feeds raw prompts as the original.
Records always store the raw prompt; `generated` is prompt + decoded continuation (raw mode, as the
original) or prompt + " " + continuation (chat mode, where the template text is not part of the record).
"""
import os
import platform
import sys
import time

from mapalign import decoding
from mapalign import dpa
from mapalign import engines
from mapalign import records
from mapalign import sampling
from mapalign.models import (DEFAULT_MODEL, format_prompts, load_model_and_tokenizer, model_fingerprint, model_info,
                    model_short_name)
from mapalign.prompts import data_tag, load_prompts
from mapalign.errors import InputError


def parse_chat_flag(use_chat_template):
    """'auto'/None -> None (apply when the tokenizer has a template); True/False as given."""
    if use_chat_template is None or (isinstance(use_chat_template, str) and use_chat_template.lower() == "auto"):
        return None
    if isinstance(use_chat_template, str):
        low = use_chat_template.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise InputError(f"use_chat_template must be auto, True or False; got {use_chat_template!r}")
    return bool(use_chat_template)


def check_conditioning(template):
    """A conditioning template (None/"" = none); ValueError unless it contains {prompt} once."""
    if template is None or template == "":
        return None
    if not isinstance(template, str) or template.count("{prompt}") != 1:
        raise InputError(f"--conditioning must be a text containing {{prompt}} exactly once, e.g. "
                         f"\"Excellent. input: {{prompt}}\"; got {template!r}")
    return template


def library_versions():
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "datasets", "numpy"):
        try:
            versions[name] = sys.modules[name].__version__ if name in sys.modules else __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


class TextGeneration:
    """Batched, seeded, resumable generation from a causal LM over a prompt set.

    Args:
        basemodel_name: model to sample from: "smollm2-135m" (embedded default), opt1.3b, llama2_chat, gpt2,
            a local folder or a hub id (see models.py).
        data_name: prompt source: "builtin" (offline), "Anthropic-harmless", "Imdb", a local
            .json/.jsonl/.csv/.txt file or a dataset (see prompts.py).
        save_directory: output folder (default "results").
        seed: run seed (sampling and the Imdb prompt cut); recorded in the sidecar.
        prompt_column: column holding the prompt, for local files and datasets (default "prompt").
        split: dataset split (default: test for Anthropic-harmless, train otherwise).
        dataset_path: local copy of the Anthropic-harmless / Imdb dataset (hub layout or save_to_disk folder).
        num_prompts: use only the first N prompts of the source (default all).
        use_chat_template: "auto" (apply the tokenizer's chat template when it has one), True, or False
            (raw prompts, as the original).
        device: "cpu", "cuda", ... (default: cuda when available).
        dtype: "float32" (default), "bfloat16" (about 2x faster on GPUs and CPUs with native bf16, much slower
            on CPUs without it), "float16".
        temperature: sampling temperature (default 1, as the original).
        top_k: top-k sampling (default 50).
        num_beams: beams (default 1).
        max_new_tokens: new tokens per continuation (default 50).
        do_sample: sample (default True); False = greedy.
        samples_per_prompt: continuations per prompt (records get sample_id 0..M-1).
        checkpoint_every: journal progress every this many prompts (resume point after a kill).
        overwrite: discard a journal and replace an existing output made with other settings (default: refuse).
        progress: show a tqdm bar.
        conditioning: a template the model sees instead of each raw prompt, e.g. "Excellent. input: {prompt}"
            (ALT models are conditioned on their best feedback this way; see trainALT.py). Must contain
            {prompt}. Records keep the raw prompt, so rewards and win rates compare with other models.
        direction: DPA arithmetic prompting: θ in degrees ([−90, 90]); the system prompt carries the integer
            weights round(100·(cos θ, sin θ)) on `objectives` (dpa.py's template, as trainDPA.py trains with).
        weights: explicit integer weights instead of a direction ("97,-26"), one per objective.
        objectives: objective names written into the DPA system prompt (default helpfulness,verbosity).
        engine: what samples: "hf" (default: batched transformers in this process, the reference), "vllm"
            (in-process vllm.LLM when importable, else `vllm serve` from .venv-vllm built by `make vllm`,
            started and stopped for the job), "server" (an OpenAI-compatible vLLM server at --engine_url) or
            "auto" (vllm when available and the job has ≥ engines.AUTO_MIN_TOKENS new tokens). See engines.py;
            vllm/server seed every prompt's request from (seed, prompt index) and need do_sample with beams 1.
            With them a larger --batch_size (e.g. 1024) keeps vLLM's continuous batching busy.
        engine_url: API root of the server for --engine=server, e.g. http://127.0.0.1:8000/v1.
    """

    def __init__(self, basemodel_name=DEFAULT_MODEL, data_name="builtin", save_directory="results", seed=0,
                 prompt_column=None, split=None, dataset_path=None, num_prompts=None, use_chat_template="auto",
                 device=None, dtype=None, temperature=1.0, top_k=50, num_beams=1, max_new_tokens=50,
                 do_sample=True, samples_per_prompt=1, checkpoint_every=50, overwrite=False, progress=True,
                 conditioning=None, direction=None, weights=None, objectives="helpfulness,verbosity",
                 engine="hf", engine_url=None):
        self.basemodel_name = str(basemodel_name)
        self.data_name = str(data_name)
        self.save_directory = save_directory
        self.seed = int(seed)
        self.prompt_column, self.split, self.dataset_path = prompt_column, split, dataset_path
        self.num_prompts = None if num_prompts is None else int(num_prompts)
        self.use_chat_template = parse_chat_flag(use_chat_template)
        self.device, self.dtype = device, dtype
        self.sampling = {"temperature": float(temperature), "top_k": int(top_k), "num_beams": int(num_beams),
                         "max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample)}
        self.samples_per_prompt = int(samples_per_prompt)
        if self.samples_per_prompt < 1:
            raise InputError(f"samples_per_prompt must be ≥ 1; got {samples_per_prompt}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise InputError(f"num_prompts must be ≥ 1; got {num_prompts}")
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.overwrite, self.progress = bool(overwrite), bool(progress)
        self.conditioning = check_conditioning(conditioning)
        self.model = self.tokenizer = None
        self._prompts = None
        self.tokens_generated = 0  # new tokens produced by sample_continuations (for tokens/s)
        self.objectives = objectives
        self.direction, self.system_prompt = dpa.system_prompt_for(direction, weights, objectives)
        self.engine_name = engines.resolve_engine(engine) if str(engine).lower() != "auto" else "auto"
        self.engine_url = engine_url
        self._engine = None  # the engines.* object, made on first use (vllm/server) and closed after the job
        self.engine_info = None  # its info() for the sidecar (url, mode)

    # ----------------------------------------------------------------------------------------
    # shared pieces (also used by the MC-aligned generation)

    @property
    def prompts(self):
        """The prompt list (loaded once; the first num_prompts of the source when set)."""
        if self._prompts is None:
            prompts = load_prompts(self.data_name, seed=self.seed, prompt_column=self.prompt_column,
                                   split=self.split, dataset_path=self.dataset_path)
            self._prompts = prompts[:self.num_prompts] if self.num_prompts else prompts
        return self._prompts

    @property
    def base_name(self):
        """`{model_short_name}-{data_tag}`, the stem of every output of this model × prompt set."""
        base = f"{model_short_name(self.basemodel_name)}-{data_tag(self.data_name)}"
        return base if self.direction is None else f"{base}_w={','.join(map(str, self.direction['weights']))}"

    def load_model(self):
        """Load the model and tokenizer once (left padding for batched generation)."""
        if self.model is None:
            self.model, self.tokenizer = load_model_and_tokenizer(self.basemodel_name, device=self.device,
                                                                  dtype=self.dtype, padding_side="left")
            self.device = str(self.model.device)
        return self.model, self.tokenizer

    def load_tokenizer(self):
        """The tokenizer alone (the vllm/server engines need no model in this process)."""
        if self.tokenizer is None:
            from mapalign.models import load_tokenizer, resolve_model_name
            self.tokenizer = load_tokenizer(resolve_model_name(self.basemodel_name)[1], padding_side="left")
        return self.tokenizer

    def resolved_engine(self, num_prompts):
        """The engine name this job uses ("auto" resolved for num_prompts × samples × max_new_tokens)."""
        expected = num_prompts * self.samples_per_prompt * self.sampling["max_new_tokens"]
        return engines.resolve_engine(self.engine_name, expected_tokens=expected)

    def engine(self, num_prompts):
        """The vllm/server engine of this job, started once (close_engine stops it)."""
        if self._engine is None:
            self._engine = engines.make_engine(self.resolved_engine(num_prompts), self.basemodel_name,
                                               engine_url=self.engine_url, tokenizer=self.load_tokenizer(),
                                               dtype=self.dtype)
            self.engine_info = self._engine.info()
        return self._engine

    def close_engine(self):
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def chat_template_used(self):
        """Whether prompts go through the chat template (resolves "auto" against the tokenizer)."""
        tokenizer = self.load_tokenizer()
        if self.use_chat_template is None:
            return bool(getattr(tokenizer, "chat_template", None))
        return self.use_chat_template

    def sample_continuations(self, prompts, num_samples=1, batch_size=32, seed_key=0, systems=None):
        """Sample `num_samples` continuations for each prompt, batched.

        prompts: raw prompt strings (chat-formatted here when the template is used).
        batch_size: sequences per forward pass (prompts × samples are laid out prompt-major and cut into
            chunks of this size; chunk c is seeded with block_seed(seed, seed_key, c); within a chunk each
            prompt's KV cache is shared by its samples: sampling.sample).
        Returns a list (one per prompt) of lists of `num_samples` decoded continuations (new tokens only,
        special tokens skipped, not stripped). Adds the number of new tokens (up to and including EOS)
        to self.tokens_generated. systems: optional system prompt per prompt (default: this run's
        --direction/--weights prompt, if any).
        """
        chat = self.chat_template_used()
        if self.conditioning:
            prompts = [self.conditioning.replace("{prompt}", p) for p in prompts]
        if systems is None and self.system_prompt is not None:
            systems = [self.system_prompt] * len(prompts)
        if self._engine is not None and self._engine.name != "hf":
            inputs = format_prompts(self.load_tokenizer(), prompts, use_chat_template=chat, systems=systems)
            texts, tokens = self._engine.sample(inputs, num_samples, engines.Sampling.from_kwargs(self.sampling),
                                                seed=self.seed, first_prompt_index=seed_key,
                                                add_special_tokens=not chat)
            self.tokens_generated += tokens
            return texts
        model, tokenizer = self.load_model()
        inputs = format_prompts(tokenizer, prompts, use_chat_template=chat, systems=systems)
        out = sampling.sample(model, tokenizer, inputs, num_samples, seed=self.seed, key=seed_key,
                              batch_size=batch_size, add_special_tokens=not chat, **self.sampling)
        self.tokens_generated += out.new_tokens
        return out.texts

    def make_record(self, prompt, raw_continuation, prompt_index, sample_index, chat):
        """One results record (see records.py) from a prompt and its decoded continuation."""
        continuation = raw_continuation.strip()
        generated = prompt + " " + continuation if chat else prompt + raw_continuation
        return {"prompt": prompt, "generated": generated, "continuation": continuation,
                "id": f"{prompt_index}-{sample_index}", "prompt_id": prompt_index, "sample_id": sample_index}

    # ----------------------------------------------------------------------------------------

    def output_path(self, start_index=0, end_index=None):
        """The full output `{save_directory}/{base}.json`, or for a range other than the whole prompt
        set the shard `{save_directory}/temp/{base}_{start}to{end}.json`."""
        n = len(self.prompts)
        start, end = self._range(start_index, end_index, n)
        if start == 0 and end_index is None:
            return os.path.join(self.save_directory, f"{self.base_name}.json")
        return os.path.join(self.save_directory, "temp", f"{self.base_name}_{start}to{end}.json")

    @staticmethod
    def _range(start_index, end_index, n):
        start = int(start_index)
        end = n if end_index is None else min(int(end_index), n)
        if start < 0 or start >= n or end <= start:
            raise InputError(f"invalid prompt range start_index={start_index}, end_index={end_index}: the source "
                             f"has {n} prompts; need 0 ≤ start_index < end_index (≤ {n}).")
        return start, end

    def fingerprint(self, start, end):
        """Everything that determines the records (records.Checkpoint fingerprint); a resumed or existing output
        must match it. The batch size is not part of it: a run resumed with another batch size (say after
        running out of memory) is allowed, with a note, and gives valid but different samples."""
        return {"model": self.basemodel_name, "data_name": self.data_name, "prompt_column": self.prompt_column,
                "split": self.split, "dataset_path": self.dataset_path, "num_prompts": self.num_prompts,
                "start_index": start, "end_index": end, "seed": self.seed, "sampling": self.sampling,
                "samples_per_prompt": self.samples_per_prompt, "use_chat_template": self.chat_template_used(),
                "dtype": None if self.dtype is None else str(self.dtype),
                "model_identity": model_fingerprint(self.basemodel_name),
                **({"conditioning": self.conditioning} if self.conditioning else {}),
                **({"system_prompt": self.system_prompt} if self.system_prompt else {}),
                "engine": self.engine_identity(end - start)}

    def engine_identity(self, num_prompts):
        """{"engine", "version"} of the engine this job uses (part of the fingerprint: samples differ by engine)."""
        identity = engines.engine_identity(self.resolved_engine(num_prompts), self.engine_url)
        return {k: identity[k] for k in ("engine", "version")}

    def generate_from_original_model(self, batch_size=32, start_index=0, end_index=None):
        """Sample continuations for prompts [start_index, end_index) and save the results file.

        Args:
            batch_size: sequences per forward pass (prompts per batch = batch_size // samples_per_prompt).
            start_index, end_index: prompt range; anything other than the whole set writes a shard to
                `{save_directory}/temp/{base}_{start}to{end}.json`.
        Returns:
            the path of the written (or already complete) results file.
        Progress is journaled to `{output}.journal.jsonl` (records.Checkpoint) every checkpoint_every prompts;
        re-running the same command resumes from it. Returns at once when the output already exists with the
        same settings; refuses (naming the first differing setting) a journal or output made with other
        settings, unless --overwrite=True.
        """
        from tqdm.auto import tqdm
        batch_size = int(batch_size)
        if batch_size < 1:
            raise InputError(f"batch_size must be ≥ 1; got {batch_size}")
        prompts = self.prompts
        start, end = self._range(start_index, end_index, len(prompts))
        path = self.output_path(start_index, end_index)
        hf = self.resolved_engine(end - start) == "hf"
        self.load_model() if hf else self.load_tokenizer()
        fingerprint = self.fingerprint(start, end)
        with records.Checkpoint(path, fingerprint, overwrite=self.overwrite) as ckpt:
            if ckpt.complete:
                print(f"gendata: {path} is already complete with these settings; nothing to do.")
                return path
            state = ckpt.state or {}
            done = state.get("next_prompt", start)
            if len(ckpt.done) != (done - start) * self.samples_per_prompt:
                raise records.RecordsError(f"journal {ckpt.journal_path!r} holds {len(ckpt.done)} records but says "
                                           f"prompts {start}..{done - 1} are done; delete it or pass --overwrite=True.")
            if ckpt.resumed:
                print(f"gendata: resuming {path} at prompt {done} of [{start}, {end}) from {ckpt.journal_path}")
                if state.get("batch_size") != batch_size:
                    print(f"gendata: note: the interrupted run used batch_size={state.get('batch_size')}; resuming "
                          f"with {batch_size} samples differently from an uninterrupted run (still valid samples).")
            started = state.get("started", records.timestamp())
            elapsed_before, tokens_before = state.get("elapsed_s", 0.0), state.get("tokens", 0)

            chat = fingerprint["use_chat_template"]
            per_block = max(1, batch_size // self.samples_per_prompt)
            self.tokens_generated = 0
            t0 = time.time()
            pending, last_checkpoint = [], done
            if not hf:
                self.engine(end - start)
            bar = tqdm(total=end - start, initial=done - start, desc=f"generate {self.base_name}", unit="prompt",
                       disable=not self.progress, dynamic_ncols=True)
            for lo in range(done, end, per_block):
                block = list(range(lo, min(lo + per_block, end)))
                outs = self.sample_continuations([prompts[i] for i in block], self.samples_per_prompt, batch_size,
                                                 seed_key=lo)
                for i, samples in zip(block, outs):
                    for s, text in enumerate(samples):
                        pending.append(dict(self.make_record(prompts[i], text, i, s, chat), **(self.direction or {})))
                done = block[-1] + 1
                bar.update(len(block))
                bar.set_postfix(tok_s=f"{self.tokens_generated / max(time.time() - t0, 1e-9):.1f}")
                if done - last_checkpoint >= self.checkpoint_every and done < end:
                    # journal on batch boundaries only: a resumed run re-creates the same batches and seeds
                    ckpt.append(pending, state={"next_prompt": done, "started": started, "batch_size": batch_size,
                                                "elapsed_s": elapsed_before + time.time() - t0,
                                                "tokens": tokens_before + self.tokens_generated})
                    pending, last_checkpoint = [], done
            bar.close()
            self.close_engine()
            elapsed = elapsed_before + time.time() - t0
            tokens = tokens_before + self.tokens_generated
            recs = ckpt.records + pending
            ckpt.finalize(recs, metadata=self._metadata(fingerprint, recs, started, elapsed, tokens, batch_size, path))
        print(f"gendata: wrote {len(recs)} records to {path} ({tokens} new tokens in {elapsed:.1f} s, "
              f"{tokens / max(elapsed, 1e-9):.1f} tok/s)")
        return path

    def generate_from_MC_aligned_model(self, lam_list, value_list, MC_nsamples=32, start_index=0, end_index=None,
                                       best_of_n=False, batch_size=64):
        """MAP-D: for each prompt in [start_index, end_index), draw MC_nsamples continuations, score them on
        the values and keep one with probability softmax(λᵀr) (see decoding.py).

        Args:
            lam_list: λ, one per value ("0.5,1.2" or a number).
            value_list: the aligned values: "all" or comma-separated names (e.g. "sentiment,harmlessness").
            MC_nsamples: samples per prompt (the original pipelines used 16).
            start_index, end_index: prompt range (end clamped to the number of prompts).
            best_of_n: keep the argmax of λᵀr instead of resampling.
            batch_size: sequences per generate call (prompts per call = batch_size // MC_nsamples).
        Returns:
            the shard path `{save_directory}/temp/{base}_lam={λ .3f,...}_val={all|names}_{start}to{end}.json`
            (the original's naming; join shards with mergeProcessor.py merge_gendata_bypattern). Records keep
            the usual keys plus the chosen sample's rewards, `chosen_index` and `mc_ess` (effective sample
            size of the weights). Journaled every checkpoint_every prompts; re-running resumes after a kill.
        """
        return decoding.write_mc_shard(self, lam_list, value_list, MC_nsamples=MC_nsamples, start_index=start_index,
                                       end_index=end_index, best_of_n=best_of_n, batch_size=batch_size)

    def generate_direction_grid(self, step=15, batch_size=32):
        """DPA grid: generate_from_original_model once per θ = −45°, −45°+step, …, 45° (step 5 or 15), each
        to its own file `{base}_w={w1},{w2}.json` with the direction's system prompt. Returns the paths."""
        paths = []
        for theta in dpa.direction_grid(step):
            self.direction, self.system_prompt = dpa.system_prompt_for(theta, None, self.objectives)
            paths.append(self.generate_from_original_model(batch_size=batch_size))
        return paths

    # ----------------------------------------------------------------------------------------
    # checkpoints and metadata

    def _metadata(self, fingerprint, recs, started, elapsed, tokens, batch_size, path):
        try:
            info = model_info(self.basemodel_name)
        except Exception as e:  # provenance is best effort; generation already succeeded
            info = {"model_name": self.basemodel_name, "error": str(e)}
        num_prompts = fingerprint["end_index"] - fingerprint["start_index"]
        return {
            "kind": "generation", "complete": True, "file": os.path.basename(path),
            "model": self.basemodel_name, "model_info": info, "seed": self.seed,
            "sampling": dict(self.sampling, samples_per_prompt=self.samples_per_prompt, batch_size=batch_size,
                             use_chat_template=fingerprint["use_chat_template"], seeding="per batch: "
                             "block_seed(seed, first prompt index of the batch, chunk)"
                             if fingerprint["engine"]["engine"] == "hf" else "per request: "
                             "engines.request_seed(seed, prompt index) + sample index"),
            "prompt_source": {"data_name": self.data_name, "prompt_column": self.prompt_column, "split": self.split,
                              "dataset_path": self.dataset_path, "num_prompts_limit": self.num_prompts,
                              "num_prompts_loaded": len(self.prompts)},
            "counts": {"prompts": num_prompts, "records": len(recs), "new_tokens": tokens,
                       "start_index": fingerprint["start_index"], "end_index": fingerprint["end_index"]},
            "timing": {"started": started, "finished": records.timestamp(), "seconds": round(elapsed, 3),
                       "tokens_per_second": round(tokens / max(elapsed, 1e-9), 2)},
            "device": self.device, "dtype": fingerprint["dtype"], "versions": library_versions(),
            "command": " ".join(sys.argv), "fingerprint": fingerprint,
            "engine": dict(self.engine_info or {}, **fingerprint["engine"]),
        }
