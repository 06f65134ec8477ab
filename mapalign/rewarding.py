"""Score results files with human values and summarise the levels before and after alignment.

    python rewardProcessor.py --file_path=results/smollm2-135m-builtin.json add_reward --value=sentiment
    python mergeProcessor.py merge_added_rewards --original_file_path=results/smollm2-135m-builtin.json
    python rewardProcessor.py --file_path=... --values_to_evaluate=sentiment,harmlessness assess_original_value
    python rewardProcessor.py --file_path=... --values_to_align=sentiment,harmlessness \
        --values_to_evaluate=all assess_postalignment_multivalue --k=100

add_reward is non-invasive: the results file is never touched; the scores go to
`{dir}/temp/{base}_temp_{value}.json` ({id, prompt, <value>} per record; `.jsonl` for a .jsonl results
file), journaled batch by batch (records.Checkpoint) and written atomically at the end, so several values
can be scored by parallel processes on one file and a killed run resumes from the scored part (only with
the same scorer). mergeProcessor.py then adds the columns to the file.

Outputs (formats of the original, SPEC-MAP §2.3):
* `{file}_realC-levels.csv`: rows avg, avg_std (standard error, ddof 0), 50%..99% quantiles per value;
  in palette mode (evaluation_mode=False) the maintained values (diversity, coherence, perplexity) repeat
  their mean and the others show max(mean, quantile).
* `{file}_lam={λ}_val={values}_numericC-levels.csv` (given λ) or
  `{file}_pareto{scaling}_randLam_val={values}_numericC-levels.csv` (k random λ, seeded; the seed and
  draw settings go to the sidecar `{csv}.meta.json`): realized levels of every evaluated value under each
  λ, then one `{value}_lam` column per aligned value; 3 decimals.
"""
import math
import time

import numpy as np

from mapalign import arguments
from mapalign import records
from mapalign import values as values_module
from mapalign.merging import temp_reward_path
from mapalign.records import RecordsError
from mapalign.errors import InputError

QUANTILE_ROWS = (50, 60, 70, 80, 90, 99)


def value_list_str(value_list):
    """How a value list appears in file names: the string as given ("all", "humor,gpt2-helpful"), or the
    names comma-joined for lists (the original wrote "None" for lists)."""
    if isinstance(value_list, str):
        return value_list.replace(" ", "")
    return ",".join(str(v) for v in value_list)


def level_table(recs, value_names, evaluation_mode=False):
    """The realized-level table of a results file (pandas DataFrame): column Statistic, then one column per
    value; rows avg, avg_std, 50%, 60%, 70%, 80%, 90%, 99%, unrounded.

    Records lacking a value are skipped for that value (with a note); a value no record has is an error.
    Palette mode (evaluation_mode=False): maintained values repeat the mean in the quantile rows, the
    others show max(mean, quantile). Quantiles use numpy's linear interpolation.
    """
    import pandas as pd
    from mapalign.evaluation import standard_error
    table = {"Statistic": ["avg", "avg_std"] + [f"{q}%" for q in QUANTILE_ROWS]}
    for value in value_names:
        xs = np.array([r[value] for r in recs if isinstance(r.get(value), (int, float))
                       and not isinstance(r.get(value), bool) and math.isfinite(r[value])], dtype=np.float64)
        if xs.size == 0:
            raise RecordsError(f"no record holds a finite {value!r}; reward keys present: "
                               f"{records.reward_keys(recs)}. Add it first (add_reward --value={value}, then merge).")
        if xs.size < len(recs):
            print(f"note: {len(recs) - xs.size} of {len(recs)} records lack a finite {value!r}; they are skipped.")
        mean = float(xs.mean())
        quantiles = [float(np.quantile(xs, q / 100)) for q in QUANTILE_ROWS]
        if not evaluation_mode:
            quantiles = [mean] * len(quantiles) if value in values_module.MAINTAINED_VALUES \
                else [max(mean, q) for q in quantiles]
        table[value] = [mean, standard_error(xs)] + quantiles
    return pd.DataFrame(table)


class RewardProcessor:
    """Add value scores to a results file and assess its value levels (original and after alignment).

    Args:
        values_to_evaluate: values to report: "all" (the task's list), comma-separated names or a list;
            when omitted, every reward key present in the file.
        values_to_align: values whose λ tilts the samples (assess_postalignment_multivalue).
        file_path: the results JSON file.
        batch_size: records per scoring batch (and per journaled checkpoint batch).
        device: scorer device ("cpu", "cuda"; default: cuda when available).
        dtype: scorer model dtype ("float32" default; "bfloat16" is about 2x faster on GPUs and CPUs with native
            bf16, much slower on CPUs without it).
        progress: show tqdm bars.
    """

    def __init__(self, values_to_evaluate=None, values_to_align=None, file_path=None, batch_size=32, device=None,
                 dtype=None, progress=True):
        self.values_to_evaluate = None if values_to_evaluate is None else \
            values_module.expand_value_list(values_to_evaluate)
        self.values_to_align = None if values_to_align is None else values_module.expand_value_list(values_to_align)
        self.values_to_align_str = None if values_to_align is None else value_list_str(values_to_align)
        self.file_path = file_path
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise InputError(f"batch_size must be ≥ 1; got {batch_size}")
        self.device, self.dtype = device, dtype
        self.progress = bool(progress)

    def _records(self):
        if not self.file_path:
            raise InputError("--file_path is required: the results JSON file to work on.")
        return records.load_records(self.file_path)

    def _evaluated(self, recs):
        return self.values_to_evaluate or records.reward_keys(recs)

    # ----------------------------------------------------------------------------------------

    def add_reward(self, value, basemodel_for_perplexity=None, overwrite=False):
        """Score every record of the file with `value` into `{dir}/temp/{base}_temp_{value}.json` (`.jsonl` for a
        .jsonl results file).

        Args:
            value: a registered value name (see mapalign.values), e.g. sentiment, harmlessness, coherence-minilm,
                perplexity, diversity, length, humor, gpt2-helpful.
            basemodel_for_perplexity: the model whose perplexity is scored (value "perplexity"); default:
                the model named in the file's metadata sidecar (the model that generated it).
            overwrite: rescore even when the file already holds `value` for every record; discard a journal or
                temp file made with another scorer.
        Returns:
            the temp file path (merge it with mergeProcessor.py), or None when nothing needed scoring.
        Scores are journaled batch by batch (records.Checkpoint: `{temp}.journal.jsonl`, fingerprint = the
        records' ids and texts + the scorer's spec, model identity, base model and dtype), so a killed run
        resumes where it stopped, and a resume with another scorer is refused, never mixed. The results file
        itself is never modified.
        """
        from tqdm.auto import tqdm
        recs = self._records()
        value = str(value).strip()
        if not overwrite and all(isinstance(r.get(value), (int, float)) for r in recs):
            print(f"add_reward: {self.file_path} already holds {value!r} for all {len(recs)} records; nothing to do "
                  "(pass --overwrite=True to rescore).")
            return None
        spec = values_module.get_spec(value)
        if spec.needs_basemodel and basemodel_for_perplexity is None:
            basemodel_for_perplexity = records.load_metadata(self.file_path).get("model")
            if basemodel_for_perplexity is None:
                raise InputError(
                    f"perplexity needs the model that generated {self.file_path}, and the file has no metadata sidecar "
                    f"naming it ({records.metadata_path(self.file_path)}). Pass --basemodel_for_perplexity=<model>, "
                    "e.g. smollm2-135m, opt1.3b or a model folder.")
        temp = temp_reward_path(self.file_path, value)
        fingerprint = {"kind": "reward", "records": len(recs), "input_sha256": records.content_sha256(recs),
                       "scorer": values_module.scorer_fingerprint(value, basemodel_for_perplexity, self.dtype)}
        with records.Checkpoint(temp, fingerprint, overwrite=overwrite) as ckpt:
            if ckpt.complete:
                print(f"add_reward: {temp} already holds {value!r} for all {len(recs)} records; merge it.")
                return temp
            first = len(ckpt.done)
            if first:
                print(f"add_reward: resuming {value!r} at record {first} of {len(recs)} from {ckpt.journal_path}")
            started = (ckpt.state or {}).get("started") or records.timestamp()
            scorer = values_module.load_scorer(value, device=self.device, batch_size=self.batch_size,
                                               basemodel_for_perplexity=basemodel_for_perplexity, dtype=self.dtype)
            t0 = time.time()
            bar = tqdm(total=len(recs), initial=first, desc=f"score {value}", unit="rec", disable=not self.progress,
                       dynamic_ncols=True)
            for lo in range(first, len(recs), self.batch_size):
                batch = recs[lo:lo + self.batch_size]
                full = [r.get("generated") for r in batch]
                # full-text values score the stored `generated` (exactly what the original scored)
                scores = np.asarray(scorer([r["prompt"] for r in batch], [records.continuation_of(r) for r in batch],
                                           full_texts=full if all(isinstance(t, str) for t in full) else None),
                                    dtype=np.float64).reshape(-1)
                if scores.shape[0] != len(batch):
                    raise RuntimeError(f"scorer for {value!r} returned {scores.shape[0]} scores for {len(batch)} texts")
                ckpt.append([{"id": records.record_id(r, lo + j), "prompt": r.get("prompt"),
                              value: float(x) if math.isfinite(x) else None}
                             for j, (r, x) in enumerate(zip(batch, scores))], state={"started": started})
                bar.update(len(batch))
            bar.close()
            entries = ckpt.records
            ckpt.finalize(entries, metadata={
                "value": value, "scorer": values_module.spec_dict(spec),
                "scorer_model": None if getattr(scorer, "model_location", None) is None else str(scorer.model_location),
                "basemodel_for_perplexity": basemodel_for_perplexity,
                "batch_size": self.batch_size, "device": self.device, "dtype": self.dtype, "records": len(recs),
                "started": started, "finished": records.timestamp(), "seconds_last_run": round(time.time() - t0, 3),
                "resumed_at": first or None})
        missing = [e["id"] for e in entries if e[value] is None]
        if missing:
            print(f"add_reward: warning: the {value!r} scorer gave no finite score for {len(missing)} records "
                  f"(first ids {missing[:5]}); the merge will refuse them.")
        print(f"add_reward: scored {len(recs) - first} records with {value!r} into {temp}")
        return temp

    # ----------------------------------------------------------------------------------------

    def assess_original_value(self, evaluation_mode=False):
        """Write `{file}_realC-levels.csv`: mean, standard error and 50-99% rows per evaluated value.

        Args:
            evaluation_mode: False (palette mode: maintained values repeat the mean, others max(mean, q));
                True: raw quantiles.
        Returns:
            the CSV path.
        """
        recs = self._records()
        table = level_table(recs, self._evaluated(recs), evaluation_mode=evaluation_mode).round(3)
        path = records.file_stem(self.file_path) + "_realC-levels.csv"
        records.write_text_atomic(table.to_csv(index=False), path)
        print(table.to_string(index=False))
        print(f"assess_original_value: wrote {path}")
        return path

    def quantile_transform_single_c(self, c_list):
        """Quantile of each level of `c_list` within the file's rewards of the matching value: the share of
        samples strictly below it. Values: values_to_evaluate (else values_to_align), in order.

        Returns the list of quantiles in [0, 1] (and prints `quant: ...`).
        """
        from mapalign.evaluation import quantile_of
        recs = self._records()
        names = self.values_to_evaluate or self.values_to_align
        if not names:
            raise InputError("name the values the levels belong to: --values_to_evaluate=v1,v2 (same order as c_list).")
        c = arguments.float_list(c_list, "c_list")
        if len(c) != len(names):
            raise InputError(f"c_list has {len(c)} levels but {len(names)} values are named ({names}).")
        matrix = records.reward_matrix(recs, names, source=self.file_path)
        quant = [float(quantile_of(matrix[i], c[i])) for i in range(len(names))]
        print(f"quant: {quant}")
        return quant

    def assess_postalignment_multivalue(self, lam=None, k=100, scaling=1.0, scaling_MAX=1, seed=0,
                                        per_prompt=False):
        """Realized levels of the evaluated values after tilting the samples by λᵀr over values_to_align.

        Args:
            lam: one λ (one number per aligned value; 0 is valid). When omitted, k random λ are drawn.
            k: number of random λ: α ~ Dirichlet(1,..,1) times `scaling`, or times Uniform(0, scaling_MAX)
                when scaling < 0.
            seed: seed of the random draws (recorded in the CSV's sidecar).
            per_prompt: normalise the tilt within each prompt (files with several samples per prompt)
                instead of pooling all samples as the original.
        Returns:
            the CSV path.
        """
        import pandas as pd
        from mapalign import solver
        recs = self._records()
        if not self.values_to_align:
            raise InputError("--values_to_align is required: the values whose λ tilts the samples.")
        evaluated = self._evaluated(recs)
        R_align = records.reward_matrix(recs, self.values_to_align, source=self.file_path)
        R_eval = records.reward_matrix(recs, evaluated, source=self.file_path)
        groups = records.prompt_groups(recs) if per_prompt else None
        n_align = len(self.values_to_align)
        stem = records.file_stem(self.file_path)
        if lam is not None:
            lam_values = arguments.float_list(lam, "lam")
            if len(lam_values) != n_align:
                raise InputError(f"lam has {len(lam_values)} entries but {n_align} values are aligned "
                                 f"({self.values_to_align}); give one λ per value.")
            if any(x < 0 for x in lam_values):
                raise InputError(f"λ must be ≥ 0; got {lam_values}")
            lams = np.array([lam_values])
            path = (f"{stem}_lam={records.lam_string(lam_values)}_val={self.values_to_align_str}"
                    "_numericC-levels.csv")
        else:
            k = int(k)
            if k < 1:
                raise InputError(f"k must be ≥ 1; got {k}")
            rng = np.random.default_rng(seed)
            lams = np.empty((k, n_align))
            for i in range(k):
                alpha = rng.dirichlet(np.ones(n_align))
                lams[i] = alpha * (scaling if scaling >= 0 else rng.uniform(0, scaling_MAX))
            path = f"{stem}_pareto{scaling}_randLam_val={self.values_to_align_str}_numericC-levels.csv"
        rows = [solver.realized_levels(R_align, lam_i, R_eval, groups=groups) for lam_i in lams]
        table = pd.DataFrame(np.array(rows), columns=evaluated)
        for i, value in enumerate(self.values_to_align):
            table[f"{value}_lam"] = lams[:, i]
        table = table.round(3)
        records.write_text_atomic(table.to_csv(index=False), path)
        records.save_metadata(path, {"file_path": self.file_path, "values_to_align": self.values_to_align,
                                     "values_to_evaluate": evaluated, "lam": None if lam is None else lams[0].tolist(),
                                     "k": len(lams), "scaling": scaling, "scaling_MAX": scaling_MAX,
                                     "seed": None if lam is not None else seed, "per_prompt": bool(per_prompt),
                                     "created": records.timestamp()})
        print("column maxima:\n" + table.max().to_string())
        print(f"assess_postalignment_multivalue: wrote {path}")
        return path
