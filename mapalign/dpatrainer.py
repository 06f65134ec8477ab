"""DPA rejection-sampling fine-tuning (RSF) and MAP × DPA palette-conditioned SFT: config, trainer, stages.

Direction mode (DPA, arXiv 2402.18571; SPEC-ALT-DPA-TRL Part 2), for t = 1..T:
    sample    every training prompt x gets a direction v (θ ~ U[−45°, 45°] for two objectives, a cap around
              the main objective for more) written as integer weights into the system prompt; K responses
              from π_{t−1}(·|x, v)                                       -> iter{t}/samples.json
    score     every response on the k objectives (value registry names, rm:FOLDER heads) -> iter{t}/scored.json
    select    the argmax of (w/100)ᵀr with exactly the written weights; `rerank_directions` extra directions
              re-rank the same K samples into more examples (changes the data distribution; recorded)
                                                                           -> iter{t}/selected.json
    train     SFT (sft.train_sft: TRL SFTTrainer, loss on the assistant turn only, LoRA) of π_{t−1} on
              (system(v), x, y*)                                           -> iter{t}/model
    evaluate  held-out prompts × the θ grid (−45°…45°), one response each, scored -> eval/iter{t}.json
              (iteration 0 is the starting model)
Palette mode (MAP × DPA): K responses per prompt from the reference p0 (no system prompt, so that
resampling targets p_λ ∝ p0·exp(λᵀr)); palettes c drawn from the feasible region of these samples
(solver.random_palettes, the gen_rand_MAP_lambda draw, per-prompt estimator), written into the system
prompt (4 significant digits; λ is solved for the written levels); each prompt gets one palette and one
response drawn by importance resampling with softmax(λᵀr); SFT on (system(c), x, y).

Every stage is resumable: sampling, scoring and evaluation journal each batch through records.Checkpoint
(a killed run continues where it stopped; a finished output with the same fingerprint is skipped), training
resumes from its newest checkpoint and is skipped once the model folder is finished. A run's settings and
the system-prompt template are stored in {output_dir}/dpa_config.json; a second run into the same folder
with other settings is refused.
"""
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from mapalign import arguments
from mapalign import dpa
from mapalign.configs import option
from mapalign import records
from mapalign import values as value_registry

CONFIG_FILE = "dpa_config.json"


@dataclass
class DPAConfig:
    """Settings of a DPA / palette-conditioned run (every field is recorded in dpa_config.json, with the
    system-prompt template the mode implies)."""
    model_name: str = option("smollm2-135m", "starting policy π0 (models.py name, folder or hub id)")
    objectives: str = option("rm:models/rm", "the k rewarded values: registry names or reward-model heads "
                                             "(rm:FOLDER = all heads, rm:FOLDER/attr = one), comma-separated")
    objective_names: Optional[str] = option(None, "names written into the system prompt (default the values' "
                                                  "attribute names)")
    mode: str = option("direction", "direction (DPA rejection-sampling fine-tuning) or palette (MAP × DPA)")
    data_name: str = option("builtin", "prompt source (prompts.py)")
    num_train_prompts: int = option(64, "training prompts per iteration (the first N of the source)")
    num_eval_prompts: int = option(16, "held-out prompts (the next ones) for evaluation and palette generation")
    iterations: int = option(3, "T, the sample -> score -> select -> train iterations")
    samples_per_prompt: int = option(4, "K responses per prompt")
    max_new_tokens: int = option(64, "sampling: new tokens per response (as gendata.py)")
    temperature: float = option(1.0, "sampling temperature")
    top_k: int = option(50, "sampling top-k")
    batch_size: int = option(32, "sequences per generation forward pass")
    max_angle: float = option(45.0, "training directions θ ~ U[−max_angle, max_angle], degrees (45, as DPA)")
    main_objective: int = option(0, "index of the cap's centre for k > 2 objectives")
    rerank_directions: int = option(0, "extra directions (palette mode: palettes) per prompt that re-rank the same "
                                       "K samples (0 = DPA as published; more examples per generated sample, a "
                                       "different data distribution; recorded)")
    num_palettes: int = option(16, "palette mode: size of the drawn pool of feasible palettes")
    scaling_max: float = option(50.0, "palette mode: accept palettes with Σλ ≤ this")
    eval_grid_step: float = option(15.0, "θ grid step for evaluation, degrees (5 or 15)")
    learning_rate: float = option(1e-4, "SFT step (sft.train_sft, TRL SFTTrainer, loss on the assistant turn "
                                        "only): learning rate")
    num_train_epochs: float = option(2.0, "SFT epochs per iteration")
    per_device_train_batch_size: int = option(8, "SFT examples per device per step")
    use_lora: bool = option(True, "SFT with LoRA adapters")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling α")
    max_length: int = option(512, "SFT tokens per example")
    seed: int = option(0, "every draw (directions, samples, selections, palettes) derives from it")
    # the system-prompt template of the mode: derived, not a flag; recorded with the settings
    template: str = field(default="", init=False)

    def __post_init__(self):
        if self.mode not in ("direction", "palette"):
            raise dpa.DPAError(f"--mode must be direction or palette; got {self.mode!r}")
        for name in ("num_train_prompts", "iterations", "samples_per_prompt", "max_new_tokens", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise dpa.DPAError(f"--{name} must be ≥ 1; got {getattr(self, name)}")
        if not 0 < float(self.max_angle) <= 90:
            raise dpa.DPAError(f"--max_angle={self.max_angle} must lie in (0°, 90°]")
        self.template = dpa.TEMPLATE if self.mode == "direction" else dpa.PALETTE_TEMPLATE


def objective_names_of(value_names, given=None):
    """Names written into the system prompt: `given`, else the attribute of rm: heads or the value name."""
    if given:
        names = arguments.str_list(given, "objective_names")
        if len(names) != len(value_names):
            raise dpa.DPAError(f"--objective_names has {len(names)} names for {len(value_names)} objectives "
                               f"{value_names}")
        return names
    return [v.rsplit("/", 1)[-1] if v.startswith(value_registry.RM_PREFIX) else v for v in value_names]


def eos_flags(tokenizer, continuations, max_new_tokens):
    """Whether each raw continuation ended by itself (EOS) rather than at the token limit: True when it
    re-tokenizes to fewer than max_new_tokens − 1 tokens (re-tokenization may differ by one token)."""
    lengths = [len(ids) for ids in tokenizer(list(continuations), add_special_tokens=False)["input_ids"]]
    return [n < int(max_new_tokens) - 1 for n in lengths]


class DPATrainer:
    """Stages of a run in `output_dir` (see the module docstring); each returns its output path."""

    def __init__(self, config, output_dir, overwrite=False, progress=True, scorers=None):
        self.config, self.output_dir = config, str(output_dir)
        self.overwrite, self.progress = bool(overwrite), bool(progress)
        self.values = value_registry.expand_value_list(config.objectives)
        if len(self.values) < 2:
            raise dpa.DPAError(f"--objectives must name at least two objectives; got {self.values}")
        self.names = objective_names_of(self.values, config.objective_names)
        dpa._check_names(self.names)
        self._scorers = dict(scorers or {})
        self._prompts = None
        self._write_config()

    # ------------------------------------------------------------------ bookkeeping
    def _write_config(self):
        path = os.path.join(self.output_dir, CONFIG_FILE)
        mine = records.canonical(dict(dataclasses.asdict(self.config), values=self.values, names=self.names))
        if os.path.isfile(path) and not self.overwrite:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)["config"]
            diff = records.first_difference(old, mine)
            if diff:
                raise dpa.DPAError(f"{self.output_dir!r} holds a run made with {diff[0]}={diff[1]!r}; this run has "
                                   f"{diff[0]}={diff[2]!r}. Use another --output_dir or --overwrite=True.")
            return
        records.save_json_atomic({"config": mine, "template": self.config.template,
                                  "rounding": "w_i = round(100·v_i), halves away from zero; selection uses w/100",
                                  "created": records.timestamp()}, path, indent=2)

    def path(self, t, name):
        return os.path.join(self.output_dir, f"iter{int(t)}", name)

    def model_of(self, t):
        """π_t: the starting model for t = 0, else iter{t}/model."""
        return self.config.model_name if int(t) == 0 else self.path(t, "model")

    def prompts(self):
        """(training prompts, held-out evaluation prompts)."""
        if self._prompts is None:
            from mapalign.prompts import load_prompts
            c = self.config
            allp = load_prompts(c.data_name, seed=c.seed)
            need = c.num_train_prompts + c.num_eval_prompts
            if len(allp) < need:
                raise dpa.DPAError(f"--data_name={c.data_name!r} has {len(allp)} prompts; this run needs {need} "
                                   "(num_train_prompts + num_eval_prompts)")
            self._prompts = (allp[:c.num_train_prompts], allp[c.num_train_prompts:need])
        return self._prompts

    def generator(self, model_name, seed):
        """gendata.TextGeneration for sampling from `model_name` (the one sampling loop)."""
        from mapalign.generation import TextGeneration
        c = self.config
        return TextGeneration(basemodel_name=model_name, data_name=c.data_name, seed=seed,
                              temperature=c.temperature, top_k=c.top_k, max_new_tokens=c.max_new_tokens,
                              progress=False)

    SAMPLING_FIELDS = ("model_name", "mode", "data_name", "num_train_prompts", "samples_per_prompt",
                       "max_new_tokens", "temperature", "top_k", "max_angle", "main_objective", "seed", "template")

    def _sampling_fingerprint(self, stage, t, policy):
        """What determines a sampling stage's records: the policy's weights, the sampling settings, the
        objective names in the prompt (not the SFT settings, which only matter from the next iteration)."""
        from mapalign import models
        c = self.config
        return records.canonical(dict(stage=stage, iteration=int(t), names=self.names,
                                      policy=models.model_fingerprint(policy),
                                      **{f: getattr(c, f) for f in self.SAMPLING_FIELDS}))

    def scorers(self):
        self._scorers = value_registry.load_scorers(self.values, scorers=self._scorers)
        return self._scorers

    # ------------------------------------------------------------------ stages
    def sample(self, t):
        """K responses per training prompt from π_{t−1} under per-prompt directions (palette mode: p0,
        no system prompt). Journaled per batch; returns iter{t}/samples.json."""
        from tqdm.auto import tqdm
        c = self.config
        t = int(t)
        out = self.path(t, "samples.json")
        train, _ = self.prompts()
        policy = self.model_of(t - 1) if c.mode == "direction" else c.model_name
        rng = np.random.default_rng([c.seed, t, 0])
        vectors, angles = dpa.sample_directions(len(train), len(self.values), rng, c.max_angle, c.main_objective)
        fingerprint = self._sampling_fingerprint("sample", t, policy)
        with records.Checkpoint(out, fingerprint, overwrite=self.overwrite) as ckpt:
            if ckpt.complete:
                return out
            gen = self.generator(policy, seed=int(np.random.SeedSequence([c.seed, t]).generate_state(1)[0]))
            _, tokenizer = gen.load_model()
            K = c.samples_per_prompt
            per_block = max(1, c.batch_size // K)
            start = len(ckpt.done) // K
            for lo in tqdm(range(start, len(train), per_block), desc=f"sample iter{t}", unit="batch",
                           disable=not self.progress):
                block = list(range(lo, min(lo + per_block, len(train))))
                if c.mode == "direction":
                    weights = [dpa.integer_weights(vectors[i]) for i in block]
                    systems = [dpa.render_system_prompt(w, self.names) for w in weights]
                else:
                    weights, systems = [None] * len(block), [None] * len(block)
                outs = gen.sample_continuations([train[i] for i in block], K, c.batch_size, seed_key=lo,
                                                systems=systems)
                new = []
                for i, w, s, samples in zip(block, weights, systems, outs):
                    for j, (text, eos) in enumerate(zip(samples, eos_flags(tokenizer, samples, c.max_new_tokens))):
                        new.append({"prompt": train[i], "continuation": text.strip(), "id": f"{i}-{j}",
                                    "prompt_id": i, "sample_id": j, "system": s, "weights": w,
                                    "angle": float(angles[i]) if w is not None else None, "eos": eos})
                ckpt.append(new, state={"next_prompt": block[-1] + 1})
            return ckpt.finalize(metadata={"kind": "dpa samples", "policy": policy, "iteration": t,
                                           "template": c.template})

    def score(self, t):
        """Every sample's reward on each objective (one scorer call per value and batch); journaled."""
        return self._score_file(self.path(t, "samples.json"), self.path(t, "scored.json"), t)

    def _score_file(self, source, out, t, batch=256):
        from tqdm.auto import tqdm
        recs = records.load_records(source)
        fingerprint = records.canonical(dict(stage="score", source=os.path.abspath(source), values=self.values,
                                             source_meta=records.load_metadata(source).get("fingerprint")))
        with records.Checkpoint(out, fingerprint, overwrite=self.overwrite) as ckpt:
            if ckpt.complete:
                return out
            from mapalign import decoding
            scorers = self.scorers()
            for lo in tqdm(range(len(ckpt.done), len(recs), batch), desc=f"score {os.path.basename(out)}",
                           unit="batch", disable=not self.progress):
                part = recs[lo:lo + batch]
                R = decoding.score_samples(self.values, scorers, [r["prompt"] for r in part],
                                           [r["continuation"] for r in part])
                ckpt.append([dict(r, **{v: float(R[i, j]) for i, v in enumerate(self.values)})
                             for j, r in enumerate(part)])
            return ckpt.finalize(metadata={"kind": "dpa scores", "values": self.values, "iteration": int(t)})

    def _reward_tensor(self, recs):
        """(P, K, k) rewards and the P prompt groups' records, in prompt order."""
        K = self.config.samples_per_prompt
        if len(recs) % K:
            raise records.RecordsError(f"{len(recs)} scored samples is not a multiple of K={K}")
        groups = [recs[i:i + K] for i in range(0, len(recs), K)]
        R = np.array([[[r[v] for v in self.values] for r in g] for g in groups], dtype=np.float64)
        return R, groups

    def select(self, t):
        """The training examples of iteration t (argmax of vᵀr, or palette resampling) -> selected.json."""
        c = self.config
        t = int(t)
        source, out = self.path(t, "scored.json"), self.path(t, "selected.json")
        fingerprint = records.canonical(dict(stage="select", source_meta=records.load_metadata(source).get(
            "fingerprint"), mode=c.mode, rerank=c.rerank_directions, num_palettes=c.num_palettes, seed=c.seed))
        with records.Checkpoint(out, fingerprint, overwrite=self.overwrite) as ckpt:
            if ckpt.complete:
                return out
            R, groups = self._reward_tensor(records.load_records(source))
            rng = np.random.default_rng([c.seed, t, 1])
            meta = {"kind": "dpa selection", "mode": c.mode, "iteration": t, "template": c.template}
            if c.mode == "direction":
                chosen = self._select_directions(R, groups, rng)
                meta["rerank_directions"] = c.rerank_directions
            else:
                chosen, palettes = self._select_palettes(R, groups, rng)
                meta["palettes"] = palettes
            return ckpt.finalize(chosen, metadata=meta)

    def _select_directions(self, R, groups, rng):
        c = self.config
        V = np.array([dpa.selection_vector(g[0]["weights"]) for g in groups])
        passes = [(V, [g[0]["system"] for g in groups], [g[0]["weights"] for g in groups])]
        for _ in range(int(c.rerank_directions)):
            vectors, _ = dpa.sample_directions(len(groups), len(self.values), rng, c.max_angle, c.main_objective)
            weights = [dpa.integer_weights(v) for v in vectors]
            passes.append((np.array([dpa.selection_vector(w) for w in weights]),
                           [dpa.render_system_prompt(w, self.names) for w in weights], weights))
        out = []
        for rank, (vecs, systems, weights) in enumerate(passes):
            chosen, scores = dpa.select(R, vecs, rng, mode="argmax")
            for p, g in enumerate(groups):
                j = int(chosen[p])
                out.append(dict(g[j], system=systems[p], weights=weights[p], selection_score=float(scores[p, j]),
                                chosen_index=j, rerank=rank, id=g[j]["id"] + (f"-r{rank}" if rank else "")))
        return out

    def _select_palettes(self, R, groups, rng):
        from mapalign import solver
        c = self.config
        P, K, k = R.shape
        flat = R.reshape(P * K, k).T
        prompt_of = np.repeat(np.arange(P), K)
        low = solver.realized_levels(flat, np.zeros(k), groups=prompt_of)
        drawn, attempts = solver.random_palettes(flat, low, flat.max(axis=1), rng, c.num_palettes, c.scaling_max,
                                                 groups=prompt_of)
        palettes = []
        for levels, _ in drawn:
            written = dpa.written_levels(levels)
            result = solver.solve_palette(flat, written, groups=prompt_of)
            if result.success:  # rounding to 4 digits can only cross the boundary of the attainable set
                palettes.append({"c": written, "lam": result.lam.tolist(), "ess": float(result.ess)})
        if not palettes:
            raise dpa.DPAError(f"no feasible palette with Σλ ≤ {c.scaling_max} in {attempts} draws; raise "
                               "--scaling_max or --samples_per_prompt")
        out = []
        for rank in range(1 + int(c.rerank_directions)):  # extra palettes re-use the same K samples
            which = rng.integers(len(palettes), size=P)
            lam = np.array([palettes[i]["lam"] for i in which])
            chosen, scores = dpa.select(R, lam, rng, mode="resample")
            for p, g in enumerate(groups):
                j, pal = int(chosen[p]), palettes[which[p]]
                out.append(dict(g[j], system=dpa.render_palette_prompt(pal["c"], self.names), palette=pal["c"],
                                lam=pal["lam"], selection_score=float(scores[p, j]), chosen_index=j, rerank=rank,
                                id=g[j]["id"] + (f"-r{rank}" if rank else "")))
        return out, palettes

    def train(self, t, **sft_overrides):
        """SFT of π_{t−1} on iter{t}/selected.json (assistant turn only) -> iter{t}/model."""
        from mapalign import models
        from mapalign import sft
        from mapalign import training
        c = self.config
        t = int(t)
        chosen = records.load_records(self.path(t, "selected.json"))
        base = self.model_of(t - 1)
        _, location = models.resolve_model_name(base)
        tokenizer = models.load_tokenizer(location)
        chat = models.has_chat_template(tokenizer)
        examples = [{"prompt": models.format_prompts(tokenizer, [r["prompt"]], chat, systems=[r["system"]])[0],
                     "completion": r["continuation"] if chat else " " + r["continuation"], "eos": bool(r["eos"])}
                    for r in chosen]
        meta = training.base_metadata(f"DPA {c.mode}-conditioned rejection-sampling SFT", base, c.seed,
                                      iteration=t, template=c.template, objectives=self.values, names=self.names)
        kwargs = dict(use_lora=c.use_lora, learning_rate=c.learning_rate, num_train_epochs=c.num_train_epochs,
                      per_device_train_batch_size=c.per_device_train_batch_size, lora_r=c.lora_r,
                      lora_alpha=c.lora_alpha, max_length=c.max_length, seed=c.seed, overwrite=self.overwrite,
                      save_steps=50)
        kwargs.update(sft_overrides)
        return sft.train_sft(base, examples, self.path(t, "model"), meta, **kwargs)

    def evaluate(self, t, angles=None):
        """π_t on the held-out prompts for every θ of the grid (direction mode), one response each, scored
        -> eval/iter{t}.json (records carry angle, weights and rewards)."""
        c = self.config
        t = int(t)
        if len(self.values) != 2:
            raise dpa.DPAError("the θ grid evaluation needs two objectives")
        angles = dpa.direction_grid(c.eval_grid_step, c.max_angle) if angles is None else list(angles)
        _, held_out = self.prompts()
        systems = []
        for a in angles:
            w = dpa.integer_weights(dpa.direction_from_angle(a))
            systems.append((a, w, dpa.render_system_prompt(w, self.names)))
        out = os.path.join(self.output_dir, "eval", f"iter{t}.json")
        return self._generate_and_score(self.model_of(t), held_out, systems, out, t,
                                        first_prompt=c.num_train_prompts)

    def conditioning(self, t):
        """The system-prompt swap test (dpa.swap_gap) of π_{t−1} and π_t on iter{t}/selected.json, the data
        π_t was trained on: for each prompt selected under opposite weights on the second objective, how
        much more likely each model makes the two responses under their own system prompts than under each
        other's -> iter{t}/conditioning.json {pairs, objective, models: {pi{t-1}, pi{t}: {mean, se, n,
        positive_fraction}}} (nats). A model that learned to follow the weights gains here first."""
        from mapalign import models
        from mapalign.sampling import sequence_logprobs
        t = int(t)
        if self.config.mode != "direction":
            raise dpa.DPAError("the swap test needs direction mode (weights in the system prompt)")
        pairs = dpa.opposite_pairs(records.load_records(self.path(t, "selected.json")), objective=1)
        if not pairs:
            raise dpa.DPAError(f"no prompt of {self.path(t, 'selected.json')} has different responses selected "
                               "under opposite weights on the second objective; raise --rerank_directions")
        result = {}
        for s in (t - 1, t):
            model, tokenizer = models.load_model_and_tokenizer(self.model_of(s))
            chat = models.has_chat_template(tokenizer)

            def logps(cases):  # (system, record) -> log π(record's response | system, its prompt)
                prompt_ids = [tokenizer(models.format_prompts(tokenizer, [r["prompt"]], chat, systems=[system])[0],
                                        add_special_tokens=False)["input_ids"] for system, r in cases]
                response_ids = [tokenizer(r["continuation"] if chat else " " + r["continuation"],
                                          add_special_tokens=False)["input_ids"] for _, r in cases]
                return sequence_logprobs(model, prompt_ids, response_ids)

            own = logps([(r["system"], r) for pair in pairs for r in pair]).reshape(-1, 2)
            swapped = logps([(other["system"], r) for low, high in pairs
                             for r, other in ((low, high), (high, low))]).reshape(-1, 2)
            result[f"pi{s}"] = dpa.swap_gap(own, swapped)
            del model
        records.save_json_atomic({"pairs": len(pairs), "objective": self.names[1], "models": result},
                                 self.path(t, "conditioning.json"), indent=2)
        return result

    def _generate_and_score(self, model, prompts, conditions, out, t, first_prompt=0):
        """One response per prompt for each (label, weights, system) condition, scored; journaled per
        condition. Records: prompt, continuation, prompt_id, angle/label, weights, system, rewards."""
        from mapalign import decoding
        from mapalign import models
        from tqdm.auto import tqdm
        c = self.config
        fingerprint = records.canonical(dict(stage="generate", model=models.model_fingerprint(model),
                                             conditions=conditions, n=len(prompts), values=self.values,
                                             seed=c.seed, max_new_tokens=c.max_new_tokens))
        with records.Checkpoint(out, fingerprint, overwrite=self.overwrite) as ckpt:
            if ckpt.complete:
                return out
            gen = self.generator(model, seed=int(np.random.SeedSequence([c.seed, 999]).generate_state(1)[0]))
            _, tokenizer = gen.load_model()
            scorers = self.scorers()
            start = len(ckpt.done) // max(1, len(prompts))
            gen.tokens_generated = 0
            for label, weights, system in tqdm(conditions[start:], desc=f"generate {os.path.basename(out)}",
                                               disable=not self.progress):
                t0, tok0 = time.time(), gen.tokens_generated
                outs = gen.sample_continuations(prompts, 1, c.batch_size, seed_key=first_prompt,
                                                systems=[system] * len(prompts))
                texts = [o[0].strip() for o in outs]
                R = decoding.score_samples(self.values, scorers, prompts, texts)
                seconds = time.time() - t0
                ckpt.append([{"prompt": p, "continuation": x, "id": f"{first_prompt + i}-{label}",
                              "prompt_id": first_prompt + i, "angle": label, "weights": weights, "system": system,
                              "eos": e, "words": len(x.split()),
                              **{v: float(R[k, i]) for k, v in enumerate(self.values)}}
                             for i, (p, x, e) in enumerate(zip(prompts, texts, eos_flags(tokenizer, [o[0] for o in outs],
                                                                                          c.max_new_tokens)))],
                            state={"seconds": seconds, "new_tokens": gen.tokens_generated - tok0})
            return ckpt.finalize(metadata={"kind": "dpa evaluation", "model": model, "iteration": int(t),
                                           "values": self.values, "names": self.names})

    def generate_palette(self, levels, model=None, reference_file=None, use_suggested=False, prompts=None,
                         label=None):
        """One pass of the palette-conditioned model: check the palette on the reference samples (the solver;
        infeasible -> DPAError with the nearest feasible palette, or that palette when use_suggested), then
        one response per held-out prompt with the palette's system prompt, scored.
        Returns (output path, PaletteResult, written levels)."""
        c = self.config
        reference_file = reference_file or self.path(1, "scored.json")
        result, written = check_palette(reference_file, self.values, levels)
        if not result.success:
            if result.suggested_palette is None or not use_suggested:
                hint = "" if result.suggested_palette is None else \
                    f"; the nearest feasible palette is {[round(x, 4) for x in result.suggested_palette]} " \
                    "(--use_suggested=True generates with it)"
                raise dpa.DPAError(f"palette {written} is {result.status} on {reference_file!r}{hint}")
            written = dpa.written_levels(result.suggested_palette)
            result, written = check_palette(reference_file, self.values, written)
        model = model or self.model_of(c.iterations)
        _, held_out = self.prompts()
        prompts = held_out if prompts is None else prompts
        label = label or "c=" + ",".join(dpa.format_level(x) for x in written)
        out = os.path.join(self.output_dir, "palette", f"{os.path.basename(os.path.normpath(model))}_{label}.json")
        system = dpa.render_palette_prompt(written, self.names)
        return (self._generate_and_score(model, prompts, [(label, None, system)], out, c.iterations,
                                         first_prompt=c.num_train_prompts), result, written)

    def run(self, evaluate=True):
        """sample → score → select → train for t = 1..T, with the grid evaluation of π_0..π_T (direction
        mode). Every stage skips what is already done. Returns the final model folder."""
        if evaluate and self.config.mode == "direction":
            self.evaluate(0)
        for t in range(1, int(self.config.iterations) + 1):
            self.sample(t)
            self.score(t)
            self.select(t)
            self.train(t)
            if evaluate and self.config.mode == "direction":
                self.evaluate(t)
        return self.model_of(self.config.iterations)


# ---------------------------------------------------------------------------------------------
# Summaries (pure over records)

def front(recs, values):
    """Per direction: mean of each objective, its standard error, mean words. Returns a list of dicts sorted
    by angle: {angle, weights, n, mean {value: x}, se {value: x}, words}."""
    from mapalign.evaluation import standard_error
    by = {}
    for r in recs:
        by.setdefault(r["angle"], []).append(r)
    out = []
    for angle in sorted(by):
        rs = by[angle]
        out.append({"angle": angle, "weights": rs[0].get("weights"), "n": len(rs),
                    "mean": {v: float(np.mean([r[v] for r in rs])) for v in values},
                    "se": {v: standard_error(np.array([r[v] for r in rs])) for v in values},
                    "words": float(np.mean([r.get("words", len(r["continuation"].split())) for r in rs]))})
    return out


def direction_control(points, values):
    """Spearman correlation between θ and the realized ratio mean r_2 / mean r_1 over the grid (DPA's
    objectives are on a positive 0-100 scale; with a non-positive mean r_1 the ratio is undefined and the
    correlation of θ with mean r_2 is the one to read). Returns {spearman_ratio, spearman_second}."""
    angles = [p["angle"] for p in points]
    first = np.array([p["mean"][values[0]] for p in points])
    second = np.array([p["mean"][values[1]] for p in points])
    ratio = second / first if np.all(first > 0) else np.full(len(points), np.nan)
    return {"spearman_ratio": dpa.spearman(angles, ratio) if np.all(np.isfinite(ratio)) else float("nan"),
            "spearman_second": dpa.spearman(angles, second)}


def check_palette(reference_file, values, levels, estimator="per_prompt"):
    """Feasibility of a palette on a reference file's samples (solver.solve_palette): (PaletteResult, c).

    levels must have one entry per value (DPAError otherwise); c is the levels as written into the prompt."""
    from mapalign import solver
    levels = arguments.float_list(levels, "c_list")
    if len(levels) != len(values):
        raise dpa.DPAError(f"palette {levels} has {len(levels)} levels but there are {len(values)} objectives "
                           f"{values}; give one level per objective")
    recs = records.load_records(reference_file)
    R = records.reward_matrix(recs, values, source=reference_file)
    groups = records.prompt_groups(recs) if estimator == "per_prompt" else None
    c = dpa.written_levels(levels)
    return solver.solve_palette(R, c, groups=groups), c
