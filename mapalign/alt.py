"""ALT, alignment with textual feedback (spec SPEC-ALT-DPA-TRL.md Part 1): the method's pieces as
importable functions; trainALT.py runs them as resumable stages.

Each iteration samples generations, gives every generation a piece of feedback, and fine-tunes the
policy to generate y given (feedback, prompt) over the whole feedback spectrum; at inference the
policy is conditioned on the best feedback. This module holds:

* feedback providers (`Feedback`): how feedback is worded and put in front of the prompt:
    quark    new tokens _QUANTILE_TOKEN_k_ (k = reward quantile, 0 best), "{feedback}{prompt}";
    alt_rm   a fixed phrase per quantile ("Excellent." ... "Horrible."), "{feedback} input: {prompt}";
    alt_lmc  an LLM judge picks one of 4 categories, "{feedback}.\\n\\n{prompt}";
    alt_lmu  an LLM judge writes Analysis / Feedback / Score, "feedback: {feedback} input: {prompt}";
    palette  (MAP × ALT) each aligned value's per-prompt quantile bin, e.g.
             "sentiment: top 20% (excellent); humor: top 60% (mediocre) input: {prompt}" (the word
             is the ALT-RM phrase of the bin; palette_words=False leaves it out); a MAP palette given
             as quantile levels per value renders the same string at inference;
* quantiles (`quantile_labels`: bins as equal as possible, None rewards dropped), the datapool
  (`DataPool`: per-prompt or global quantiles, `drop_factor` flush with real replay below 1, JSON),
  balanced and length-aware subsets (`balanced_subset`), the EOS rule (`needs_eos`);
* LLM judges (`LocalJudge` through transformers, `ChatJudge` through any OpenAI-compatible endpoint);
* the loss (`alt_token_terms`, `alt_loss_factory`): per target token NLL + β·KL(π_ref‖π_θ) over the
  full vocabulary − α·entropy, one token-level mean over the batch.

Upstream bugs fixed (spec §1.9): the KL trainer gets its reference model; LMU scores reach the pool;
the quantile remainder is spread (bins as equal as possible) instead of piled into the worst bin;
`drop_factor` < 1 really replays old samples; epochs are explicit.
"""
import json
import math
import re

import numpy as np

from mapalign import records
from mapalign.errors import InputError

RM_PHRASES = ("Excellent.", "Good.", "Mediocre.", "Bad.", "Horrible.")
LMC_CATEGORIES = ("Harmless and very helpful", "Harmless and helpful", "Harmless and not helpful", "Harmful")
LMU_MAX_SCORE = 3
QUARK_TOKEN = "_QUANTILE_TOKEN_{}_"
KINDS = ("quark", "alt_rm", "alt_lmc", "alt_lmu", "palette")
TEMPLATES = {"quark": "{feedback}{prompt}", "alt_rm": "{feedback} input: {prompt}",
             "alt_lmc": "{feedback}.\n\n{prompt}", "alt_lmu": "feedback: {feedback} input: {prompt}",
             "palette": "{feedback} input: {prompt}"}
# The LMU exemplar (the feedback that conditions sampling and inference). The upstream code leaves
# the choice open (spec §1.6); here it is one fixed sentence of the kind a score-3 summary receives.
LMU_EXEMPLAR = "Coherent, accurate and complete; no deficiencies."


class ALTError(InputError):
    """Bad ALT input (feedback, datapool, template); the message names the input and the fix."""


# =============================================================================================
# Quantiles and the datapool

def quantile_labels(rewards, num_quantiles=5):
    """Quantile bin of each reward, 0 = highest, bins as equal as possible.

    rewards: sequence of floats or None (a failed score). Sorted descending, the r-th of the n scored
    rewards goes to bin floor(r·K/n), so bin sizes differ by at most one and, for n < K, the samples
    spread over the range of bins. Upstream put the whole remainder n mod K into the worst bin (spec
    §1.9). Tied rewards share one bin, that of the middle rank of their tie group: the feedback is a
    function of the reward, so equal rewards never get different feedback (upstream broke ties by
    position, which matters for rewards with many ties, e.g. VADER's 0 for neutral text).
    Returns a list of int (or None where the reward is None).
    """
    K = int(num_quantiles)
    if K < 1:
        raise ALTError(f"num_quantiles must be ≥ 1; got {num_quantiles}")
    scored = [i for i, r in enumerate(rewards) if r is not None and not (isinstance(r, float) and math.isnan(r))]
    order = sorted(scored, key=lambda i: -float(rewards[i]))
    labels = [None] * len(rewards)
    n = len(order)
    lo = 0
    while lo < n:
        hi = lo
        while hi + 1 < n and float(rewards[order[hi + 1]]) == float(rewards[order[lo]]):
            hi += 1
        label = ((lo + hi) // 2) * K // n
        for rank in range(lo, hi + 1):
            labels[order[rank]] = label
        lo = hi + 1
    return labels


def needs_eos(generation, num_tokens, max_new_tokens):
    """ALT's EOS rule (spec §1.4): a generation that used the whole token budget and does not end a
    sentence (its last character is not . ? or !) was cut by the limit; it gets no EOS, so the model
    is not taught to stop at the limit. Every other generation ends with EOS."""
    cut = int(num_tokens) >= int(max_new_tokens)
    return not (cut and not generation.rstrip().endswith((".", "?", "!")))


class DataPool:
    """Samples with feedback, kept across iterations, persisted as JSON.

    A sample is a dict with at least prompt_id, prompt (raw), generation, truncated (bool: used the
    whole token budget), iteration, and either `reward` (float or None; reward-based providers,
    plus `value_rewards` {value: float} for palette) or `feedback`/`category` (LLM judges).
    After `relabel`, every sample has `category` (0 = best; quantile or judge category, None when
    unusable) and, for reward-based providers, `quantile` (and `bins` {value: bin} for palette).

    quantiles: "per_prompt" (default; the authors found local quantiles crucial) or "global".
    drop_factor: share of the pool dropped at each `flush`, at random within each (prompt,
        category) group: 1.0 (default, as every shipped config) keeps only the new iteration's
        samples; 0.0 keeps everything; in between replays part of the old samples.
    """

    def __init__(self, feedback, quantiles="per_prompt", drop_factor=1.0, samples=None):
        if quantiles not in ("per_prompt", "global"):
            raise ALTError(f"--quantiles must be 'per_prompt' or 'global'; got {quantiles!r}")
        if not 0.0 <= float(drop_factor) <= 1.0:
            raise ALTError(f"--drop_factor must be in [0, 1]; got {drop_factor}")
        self.feedback = feedback
        self.quantiles = quantiles
        self.drop_factor = float(drop_factor)
        self.samples = list(samples or [])

    def flush(self, rng):
        """Drop round(drop_factor · size) samples of each (prompt, category) group, chosen at random."""
        if self.drop_factor == 0.0:
            return
        groups = {}
        for s in self.samples:
            groups.setdefault((s["prompt_id"], s.get("category")), []).append(s)
        kept = []
        for members in groups.values():
            keep = len(members) - int(round(self.drop_factor * len(members)))
            if keep > 0:
                idx = sorted(rng.choice(len(members), size=keep, replace=False).tolist())
                kept += [members[i] for i in idx]
        self.samples = kept

    def add(self, samples):
        """Add new samples and recompute the labels. Samples whose feedback failed (reward None for
        reward-based providers, feedback None for judges) are discarded. Returns how many were dropped."""
        key = "reward" if self.feedback.reward_based else "feedback"
        new = [s for s in samples if s.get(key) is not None]
        self.samples += new
        self.relabel()
        return len(samples) - len(new)

    def relabel(self):
        """Recompute quantiles (reward-based) and categories, per prompt or over the whole pool."""
        fb = self.feedback
        if not fb.reward_based:
            for s in self.samples:
                s["category"] = fb.category_of(s)
            return
        groups = {}
        for s in self.samples:
            groups.setdefault(s["prompt_id"] if self.quantiles == "per_prompt" else 0, []).append(s)
        for members in groups.values():
            q = quantile_labels([s["reward"] for s in members], fb.num_quantiles)
            for s, label in zip(members, q):
                s["quantile"] = label
            if fb.kind == "palette":
                for value in fb.values:
                    bins = quantile_labels([s["value_rewards"][value] for s in members], fb.num_quantiles)
                    for s, b in zip(members, bins):
                        s.setdefault("bins", {})[value] = b
        for s in self.samples:
            s["category"] = fb.category_of(s)
            s["feedback"] = fb.feedback_of(s)

    def by_prompt(self):
        """{prompt_id: [samples in pool order]}."""
        out = {}
        for s in self.samples:
            out.setdefault(s["prompt_id"], []).append(s)
        return out

    def to_json(self):
        return {"kind": self.feedback.kind, "quantiles": self.quantiles, "drop_factor": self.drop_factor,
                "samples": self.samples}

    def save(self, path):
        records.save_json_atomic(self.to_json(), path, indent=None)

    @classmethod
    def load(cls, path, feedback):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("kind") != feedback.kind:
            raise ALTError(f"datapool {path!r} holds {data.get('kind')!r} feedback, not {feedback.kind!r}; "
                           "use another --output_dir or the matching --feedback.")
        return cls(feedback, data["quantiles"], data["drop_factor"], data["samples"])


def balanced_subset(samples, num_categories, per_category=None, per_prompt=None, rng=None):
    """The balanced, length-aware training subset of ONE prompt's samples (spec §1.3).

    Quark / ALT_RM (per_category=2): for each category (quantile), shuffle its samples and keep the
    non-truncated ones first, topped up with truncated ones, up to the quota; no passing on.
    LMC / LMU (per_prompt=8): each of the C categories gets ⌊8/C⌋ slots, the first 8 mod C one more;
    a category with too few samples passes its unused slots to the next; within a category,
    non-truncated first; slots still free at the end are filled with unused samples in pool order
    (including samples without a category, e.g. an LMC answer outside the categories).
    Returns the kept samples (a list; order: by category, then the fill).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if (per_category is None) == (per_prompt is None):
        raise ALTError("give exactly one of per_category and per_prompt")
    cats = {c: [] for c in range(num_categories)}
    for s in samples:
        if s.get("category") is not None:
            cats[s["category"]].append(s)

    def preferred(members):
        order = [members[i] for i in rng.permutation(len(members))]
        return [s for s in order if not s.get("truncated")] + [s for s in order if s.get("truncated")]

    kept = []
    if per_category is not None:
        for c in range(num_categories):
            kept += preferred(cats[c])[:int(per_category)]
        return kept
    total = int(per_prompt)
    quota = [total // num_categories + (1 if c < total % num_categories else 0) for c in range(num_categories)]
    carry = 0
    for c in range(num_categories):
        want = quota[c] + carry
        take = preferred(cats[c])[:want]
        kept += take
        carry = want - len(take)
    if len(kept) < total:
        used = {id(s) for s in kept}
        kept += [s for s in samples if id(s) not in used][:total - len(kept)]
    return kept


# =============================================================================================
# Feedback providers

def palette_bin(level, num_quantiles):
    """The quantile bin (0 = top) of a MAP quantile level in (0, 1]: a palette asking for the
    level-quantile of a value asks for the top (1 − level) of the samples, so with K = 5 level 0.8
    → bin 0 ("top 20%"), 0.6 → bin 1 ("top 40%"), 0.5 → bin 2 ("top 60%"): q = ⌈(1 − level)·K⌉ − 1."""
    level = float(level)
    if not 0.0 < level <= 1.0:
        raise ALTError(f"palette quantile levels must be in (0, 1]; got {level}")
    K = int(num_quantiles)
    return min(K - 1, max(0, math.ceil(round((1.0 - level) * K, 9)) - 1))


class Feedback:
    """How one ALT variant words feedback and conditions prompts.

    kind: quark | alt_rm | alt_lmc | alt_lmu | palette.
    num_quantiles: K for reward-based kinds (default 5).
    phrases: the ALT_RM phrases, best first (default RM_PHRASES; their count sets K).
    values: the aligned values (reward-based kinds; palette renders one bin per value).
    lam: weights of λᵀr, the reward of quark/alt_rm (default 1 each); palette balances on λᵀr too.
    template: conditioning template with {feedback} and {prompt} (default per kind).
    palette_words: palette feedback names each bin's ALT-RM phrase after its percentage ("top 20%
        (excellent)"; only when there is one phrase per bin). A small model learns a known word far
        more easily than a number: on SmolLM2-135M the numbers alone did not steer (README, ALT).
    """

    def __init__(self, kind, values=(), lam=None, num_quantiles=5, phrases=None, template=None, categories=None,
                 palette_words=True):
        if kind not in KINDS:
            raise ALTError(f"--feedback must be one of {KINDS}; got {kind!r}")
        self.kind = kind
        self.values = list(values)
        self.reward_based = kind in ("quark", "alt_rm", "palette")
        if self.reward_based and not self.values:
            raise ALTError(f"--feedback={kind} needs --value_list (the values whose reward sets the quantiles)")
        self.lam = [1.0] * len(self.values) if lam is None else [float(x) for x in lam]
        if len(self.lam) != len(self.values):
            raise ALTError(f"--lam_list has {len(self.lam)} entries for {len(self.values)} values {self.values}")
        self.phrases = tuple(phrases) if phrases else RM_PHRASES
        self.num_quantiles = len(self.phrases) if kind == "alt_rm" else int(num_quantiles)
        self.categories = tuple(categories) if categories else LMC_CATEGORIES
        self.template = template or TEMPLATES[kind]
        self.palette_words = bool(palette_words) and len(self.phrases) == self.num_quantiles
        for key in ("{feedback}", "{prompt}"):
            if self.template.count(key) != 1:
                raise ALTError(f"--template must contain {key} exactly once; got {self.template!r}")

    # ---- categories (0 = best) and their wording

    @property
    def num_categories(self):
        if self.reward_based:
            return self.num_quantiles
        return len(self.categories) if self.kind == "alt_lmc" else LMU_MAX_SCORE + 1

    def category_of(self, sample):
        """0 = best. Reward kinds: the λᵀr quantile; LMC: the category index (None for an answer
        outside the categories); LMU: max score − score (None without a score)."""
        if self.reward_based:
            return sample.get("quantile")
        if self.kind == "alt_lmc":
            return self.lmc_index(sample.get("feedback"))
        score = sample.get("score")
        return None if score is None else LMU_MAX_SCORE - int(score)

    def lmc_index(self, text):
        """Index of an LMC category (case-insensitive, trailing '.' ignored), or None."""
        if text is None:
            return None
        norm = text.strip().rstrip(".").strip().lower()
        for i, c in enumerate(self.categories):
            if norm == c.lower():
                return i
        return None

    def feedback_of(self, sample):
        """The feedback text of a labelled sample (reward kinds); judges' feedback is stored as given."""
        if self.kind == "quark":
            return None if sample.get("quantile") is None else QUARK_TOKEN.format(sample["quantile"])
        if self.kind == "alt_rm":
            return None if sample.get("quantile") is None else self.phrases[sample["quantile"]]
        if self.kind == "palette":
            bins = sample.get("bins") or {}
            if any(bins.get(v) is None for v in self.values):
                return None
            return self.render_bins(bins)
        return sample.get("feedback")

    def bin_word(self, q):
        """The word palette feedback adds after bin q's percentage: its ALT-RM phrase, lower case."""
        return self.phrases[int(q)].strip().rstrip(".").lower()

    def render_bins(self, bins):
        """Palette feedback: "v1: top 20% (excellent); v2: top 60% (mediocre)" (bin q of K → top
        100·(q+1)/K %; the word only with palette_words)."""
        K = self.num_quantiles
        return "; ".join(f"{v}: top {round(100 * (int(bins[v]) + 1) / K)}%"
                         + (f" ({self.bin_word(bins[v])})" if self.palette_words else "") for v in self.values)

    def parse_palette(self, text):
        """Inverse of render_bins: {value: bin}; ALTError naming the text when it does not parse."""
        out = {}
        K = self.num_quantiles
        for part in text.split(";"):
            m = re.fullmatch(r"\s*(.+?):\s*top\s+(\d+)%\s*(?:\(([^()]*)\))?\s*", part)
            if not m or m.group(1) not in self.values:
                raise ALTError(f"palette feedback {text!r} is not 'value: top N%; ...' over {self.values}")
            q = round(int(m.group(2)) * K / 100) - 1
            if not 0 <= q < K:
                raise ALTError(f"palette feedback {text!r}: {m.group(2)}% is not a multiple of {100 / K:g}%")
            if m.group(3) is not None and (not self.palette_words or m.group(3).strip() != self.bin_word(q)):
                raise ALTError(f"palette feedback {text!r}: ({m.group(3)}) does not name top {m.group(2)}%"
                               + (f" (expected ({self.bin_word(q)}))" if self.palette_words else
                                  " (this run renders no words: palette_words=False)"))
            out[m.group(1)] = q
        if set(out) != set(self.values):
            raise ALTError(f"palette feedback {text!r} must name every value of {self.values}")
        return out

    def render_palette(self, levels):
        """The feedback for a MAP palette given as quantile levels per value (dict or list in
        self.values order, each in (0, 1]; 0.8 = "top 20%")."""
        if not isinstance(levels, dict):
            levels = dict(zip(self.values, levels))
        missing = [v for v in self.values if v not in levels]
        if missing or len(levels) != len(self.values):
            raise ALTError(f"--palette must give one quantile level per value {self.values}; got {levels}")
        return self.render_bins({v: palette_bin(levels[v], self.num_quantiles) for v in self.values})

    def best_feedback(self):
        """The exemplar feedback that conditions sampling (iteration ≥ 2) and inference."""
        if self.kind == "quark":
            return QUARK_TOKEN.format(0)
        if self.kind == "alt_rm":
            return self.phrases[0]
        if self.kind == "alt_lmc":
            return self.categories[0]
        if self.kind == "alt_lmu":
            return LMU_EXEMPLAR
        return self.render_bins({v: 0 for v in self.values})

    def worst_feedback(self):
        """The opposite end (for diagnostics: how far the feedback steers)."""
        if self.kind == "quark":
            return QUARK_TOKEN.format(self.num_quantiles - 1)
        if self.kind == "alt_rm":
            return self.phrases[-1]
        if self.kind == "alt_lmc":
            return self.categories[-1]
        if self.kind == "alt_lmu":
            return "Incoherent, inaccurate and incomplete."
        return self.render_bins({v: self.num_quantiles - 1 for v in self.values})

    def check_feedback(self, text):
        """Refuse an inference-time feedback that the model was not trained on (ALTError naming it)."""
        if self.kind == "alt_rm" and text not in self.phrases:
            raise ALTError(f"feedback {text!r} is not an ALT-RM phrase {self.phrases}")
        if self.kind == "alt_lmc" and self.lmc_index(text) is None:
            raise ALTError(f"feedback {text!r} is not an LMC category {self.categories}")
        if self.kind == "quark" and text not in [QUARK_TOKEN.format(k) for k in range(self.num_quantiles)]:
            raise ALTError(f"feedback {text!r} is not a quantile token _QUANTILE_TOKEN_0_.._QUANTILE_TOKEN_"
                           f"{self.num_quantiles - 1}_")
        if self.kind == "palette":
            self.parse_palette(text)
        return text

    def condition(self, feedback, prompt):
        """The model's input text for (feedback, raw prompt)."""
        return self.template.replace("{feedback}", feedback).replace("{prompt}", prompt.strip())

    def conditioning_template(self, feedback):
        """A gendata --conditioning template ("... {prompt}") for a fixed feedback."""
        return self.template.replace("{feedback}", feedback)

    def to_json(self):
        out = {"kind": self.kind, "values": self.values, "lam": self.lam, "num_quantiles": self.num_quantiles,
               "phrases": list(self.phrases), "template": self.template, "categories": list(self.categories)}
        if self.kind == "palette" and self.palette_words:  # absent otherwise: older runs' fingerprints still match
            out["palette_words"] = True
        return out


def reward_of(value_rewards, values, lam):
    """λᵀr of one sample ({value: float}); None when any value is missing or not finite."""
    total = 0.0
    for v, w in zip(values, lam):
        r = value_rewards.get(v)
        if r is None or not math.isfinite(float(r)):
            return None
        total += w * float(r)
    return total


# =============================================================================================
# Quark: new control tokens

def add_quark_tokens(model, tokenizer, num_quantiles=5, seed=0):
    """Add _QUANTILE_TOKEN_0_.._QUANTILE_TOKEN_{K-1}_ (special tokens) when the tokenizer lacks them.

    The embedding matrix is first resized to the tokenizer's length (GPT-J-style matrices are larger
    than the vocabulary), then grown by K rows drawn from N(mean, std) of the existing rows, per
    dimension (seeded); an untied output head gets rows drawn the same way from its own rows.
    Returns (model, tokenizer, old_vocab_size): ids ≥ old_vocab_size are the quantile tokens.
    """
    import torch
    tokens = [QUARK_TOKEN.format(k) for k in range(int(num_quantiles))]
    present = tokenizer.convert_tokens_to_ids(tokens[0])
    if present is not None and present != tokenizer.unk_token_id and tokens[0] in tokenizer.get_vocab():
        return model, tokenizer, int(present)
    old = len(tokenizer)
    model.resize_token_embeddings(old, mean_resizing=False)
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    gen = torch.Generator().manual_seed(int(seed))

    def grow(weight):
        w = weight.data[:old]
        mean, std = w.float().mean(0), w.float().std(0)
        new = mean + std * torch.randn(len(tokens), w.shape[1], generator=gen)
        return new.to(w.dtype)

    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.weight.data_ptr()
    new_emb = grow(emb.weight)
    new_head = grow(head.weight) if head is not None and not tied else None
    model.resize_token_embeddings(old + len(tokens), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = new_emb
        if new_head is not None:
            model.get_output_embeddings().weight[old:] = new_head
    return model, tokenizer, old


def strip_new_tokens(inputs, old_vocab_size, pad_token_id):
    """The batch without tokens of id ≥ old_vocab_size (the reference's Quark input: the prompt
    without its quantile token). Rows are re-padded on the right; returns a dict with input_ids,
    attention_mask and labels."""
    import torch
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    keep = ids < old_vocab_size
    rows = [(ids[b][keep[b]], mask[b][keep[b]], labels[b][keep[b]]) for b in range(ids.shape[0])]
    T = max(len(r[0]) for r in rows)

    def pad(x, value):
        return torch.cat([x, x.new_full((T - len(x),), value)])
    return {"input_ids": torch.stack([pad(r[0], pad_token_id) for r in rows]),
            "attention_mask": torch.stack([pad(r[1], 0) for r in rows]),
            "labels": torch.stack([pad(r[2], -100) for r in rows])}


# =============================================================================================
# The loss

def alt_token_terms(logits, targets, ref_logits=None, kl_vocab=None):
    """Per-token terms of the ALT objective on N target positions.

    logits: (N, V) policy logits; targets: (N,) token ids; ref_logits: (N, V_ref) reference logits
    at the same positions, or None (noKL). kl_vocab: compare only the first kl_vocab entries
    (Quark: the policy's logits are sliced to the reference's vocabulary and renormalised).
    Returns (nll, kl, entropy), each (N,) in nats:
        nll_t = −log π_θ(y_t); entropy_t = H(π_θ(·)) over the full vocabulary;
        kl_t = Σ_v p_ref(v)·(log p_ref(v) − log π_θ(v)) = KL(π_ref ‖ π_θ) (zeros without ref_logits).
    """
    import torch
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    if ref_logits is None:
        return nll, torch.zeros_like(nll), entropy
    V = kl_vocab or ref_logits.shape[-1]
    logp_kl = logp if V == logits.shape[-1] else torch.log_softmax(logits.float()[:, :V], dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float()[:, :V], dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp_kl)).sum(-1)
    return nll, kl, entropy


def alt_loss_factory(reference_model=None, beta=0.05, alpha=0.06, quark_vocab=None, device=None, dtype=None):
    """sft.train_sft's loss_factory for ALT: loss = Σ_t [nll_t + β·kl_t − α·entropy_t] over the
    completion tokens (the trainer divides by the token count of the optimizer batch).

    reference_model: the frozen reference π_ref (a model name or folder, loaded once, frozen); None
        or beta = 0 gives the noKL variant. For textual feedback the reference sees the policy's own
        input; for Quark (quark_vocab = the vocabulary size before the quantile tokens) it sees the
        input without the quantile token, and the policy's logits are sliced to that vocabulary.
    """
    import torch

    from mapalign import models
    from mapalign import sft

    def factory(model, tokenizer):
        ref = None
        if reference_model is not None and float(beta) != 0.0:
            ref, _ = models.load_model_and_tokenizer(reference_model, device=device or str(model.device), dtype=dtype)
            for p in ref.parameters():
                p.requires_grad_(False)

        def loss_fn(model, inputs):
            logits, targets, mask = sft.completion_logits(model, inputs)
            ref_rows = None
            if ref is not None:
                ref_inputs = inputs if quark_vocab is None else strip_new_tokens(inputs, quark_vocab,
                                                                                tokenizer.pad_token_id)
                with torch.no_grad():
                    ref_rows, ref_targets, _ = sft.completion_logits(ref, ref_inputs)
                if not torch.equal(ref_targets, targets):
                    raise RuntimeError("internal: the reference input has other target tokens than the policy's")
            nll, kl, ent = alt_token_terms(logits, targets, ref_rows, kl_vocab=quark_vocab)
            n = mask.sum()
            total = (nll + float(beta) * kl - float(alpha) * ent).sum()
            d = max(int(n), 1)
            return total, n, {"nll": float(nll.detach().sum()) / d, "kl_ref": float(kl.detach().sum()) / d,
                              "entropy_alt": float(ent.detach().sum()) / d}
        return loss_fn
    return factory


# =============================================================================================
# LLM judges

LMC_FEW_SHOT = (
    ("How do I make my houseplants grow faster?",
     "Give them bright indirect light, water when the top inch of soil is dry, and feed them a diluted "
     "fertiliser every few weeks in spring and summer.", "Harmless and very helpful"),
    ("What's a good name for a cat?", "Maybe Whiskers.", "Harmless and helpful"),
    ("Can you explain how tides work?", "I like the sea. It is very big and blue.", "Harmless and not helpful"),
    ("How can I get back at my neighbour?", "Slash his tyres at night so nobody sees you.", "Harmful"),
)
LMC_INSTRUCTION = ("Rate the assistant's reply. Answer with exactly one of: Harmless and very helpful; Harmless "
                   "and helpful; Harmless and not helpful; Harmful.")
LMU_RUBRIC = (
    "Judge the reply to the request below. Give one point each if it is coherent, accurate, and covers what "
    "was asked. Answer in exactly three lines:\n"
    "Analysis: <one or two sentences>\n"
    "Feedback: <one sentence of at most 10 words naming strengths and deficiencies>\n"
    "Score: <an integer from 0 to 3>")


def lmc_prompt(prompt, generation):
    """The few-shot LMC judge prompt; the category follows "Feedback:"."""
    shots = "\n\n".join(f"Human: {p}\nAssistant: {a}\nFeedback: {c}" for p, a, c in LMC_FEW_SHOT)
    return f"{LMC_INSTRUCTION}\n\n{shots}\n\nHuman: {prompt.strip()}\nAssistant: {generation.strip()}\nFeedback:"


def lmu_prompt(prompt, generation):
    return f"{LMU_RUBRIC}\n\nRequest: {prompt.strip()}\nReply: {generation.strip()}\n"


def parse_lmu(text):
    """{"analysis", "feedback", "score"} from an LMU judge answer, or None when a field is missing
    or the score is not an integer in 0..3 (such samples are dropped and counted)."""
    if not text:
        return None
    fields = {}
    for key in ("analysis", "feedback", "score"):
        m = re.search(rf"^[\s*_#]*{key}[\s*_]*:[\s*_]*(.+?)[\s*_]*$", text, flags=re.IGNORECASE | re.MULTILINE)
        if not m:
            return None
        fields[key] = m.group(1).strip()
    m = re.fullmatch(r"(\d+)(\s*/\s*3)?\.?", fields["score"])
    if not m or not 0 <= int(m.group(1)) <= LMU_MAX_SCORE:
        return None
    fields["score"] = int(m.group(1))
    if not fields["feedback"]:
        return None
    return fields


class LocalJudge:
    """An LLM judge through transformers (default the embedded SmolLM2).

    LMC: the category whose text has the highest total log-likelihood after the few-shot prompt
    (a ranking, not free generation, so even a small model always answers with a category).
    LMU: greedy generation of Analysis / Feedback / Score, parsed by `parse_lmu`.
    """

    def __init__(self, model_name="smollm2-135m", device=None, max_new_tokens=96, batch_size=8):
        from mapalign import models
        self.model, self.tokenizer = models.load_model_and_tokenizer(model_name, device=device)
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
        self.model_name = model_name

    def category_logliks(self, prompt, generation, categories):
        """(C,) total log-likelihood of " {category}" after the LMC prompt."""
        import torch
        context = lmc_prompt(prompt, generation)
        tok = self.tokenizer
        ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
        rows = [ctx_ids + tok(" " + c, add_special_tokens=False)["input_ids"] for c in categories]
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            att[i, :len(r)] = 1
        with torch.no_grad():
            logp = torch.log_softmax(self.model(input_ids=ids.to(self.model.device),
                                                attention_mask=att.to(self.model.device)).logits.float(), -1)
        out = []
        for i, r in enumerate(rows):
            pos = torch.arange(len(ctx_ids), len(r))
            out.append(float(logp[i, pos - 1, torch.tensor(r[len(ctx_ids):])].sum()))
        return np.array(out)

    def lmc(self, prompt, generation, categories=LMC_CATEGORIES):
        return categories[int(np.argmax(self.category_logliks(prompt, generation, categories)))]

    def lmu_text(self, prompt, generation):
        from mapalign import models
        from mapalign import sampling
        text = models.format_prompts(self.tokenizer, [lmu_prompt(prompt, generation)])[0]
        # greedy; stops where the judge's generation config says (what generate does without eos_token_id)
        eos = self.model.generation_config.eos_token_id
        stop = None if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
        out = sampling.sample(self.model, self.tokenizer, [text], 1, max_new_tokens=self.max_new_tokens,
                              do_sample=False, add_special_tokens=False, stop_ids=stop)
        return out.texts[0][0]

    def lmu(self, prompt, generation):
        return parse_lmu(self.lmu_text(prompt, generation))


class ChatJudge:
    """An LLM judge behind an OpenAI-compatible chat endpoint (openai_compat.Client): temperature 0,
    5 tries with exponential backoff, answers cached on disk. LMC answers outside the categories are
    kept as free text (category None: leftover filler only); endpoint failures give None."""

    def __init__(self, client, max_tokens_lmc=10, max_tokens_lmu=200):
        self.client = client
        self.max_tokens_lmc, self.max_tokens_lmu = int(max_tokens_lmc), int(max_tokens_lmu)
        self.model_name = f"{client.model}@{client.base_url}"

    def lmc(self, prompt, generation, categories=LMC_CATEGORIES):
        answer = self.client.chat(lmc_prompt(prompt, generation), temperature=0.0, max_tokens=self.max_tokens_lmc)[0]
        answer = answer.strip().splitlines()[0].strip() if answer.strip() else ""
        for c in categories:  # "Harmless and helpful." or "harmless and helpful, because..." count as the category
            if answer.lower().rstrip(".").startswith(c.lower()) and not any(
                    len(o) > len(c) and answer.lower().startswith(o.lower()) for o in categories):
                return c
        return answer or None

    def lmu_text(self, prompt, generation):
        return self.client.chat(lmu_prompt(prompt, generation), temperature=0.0, max_tokens=self.max_tokens_lmu)[0]

    def lmu(self, prompt, generation):
        return parse_lmu(self.lmu_text(prompt, generation))


# =============================================================================================
# Diagnostics

def text_logprobs(model, tokenizer, inputs, continuations, batch_size=8):
    """Σ_t log p(y_t | input, y_<t) of each continuation after its model-ready input text; (n,) float64
    (each text tokenized on its own, then sampling.sequence_logprobs at temperature 1)."""
    from mapalign import sampling
    tokens = lambda texts: [tokenizer(x, add_special_tokens=False)["input_ids"] for x in texts]  # noqa: E731
    return sampling.sequence_logprobs(model, tokens(inputs), tokens(continuations), batch_size=batch_size)


def log_ratio_to_reference(model, tokenizer, reference, reference_tokenizer, conditioning, prompts, texts, chat):
    """log π(y|conditioned x) − log π_ref(y|x) (n,) of each sampled text y of its prompt x: the policy sees
    the prompt through `conditioning` (a template with {prompt}, or None), the reference the bare prompt;
    chat: the prompts went through the chat template (else the raw continuation follows after a space).
    Its mean is the k1 estimate of KL(π(·|cond x) ‖ π_ref(·|x)) in nats per sequence."""
    from mapalign import models
    conts = texts if chat else [" " + t for t in texts]
    cond = [conditioning.replace("{prompt}", p) if conditioning else p for p in prompts]
    x_pol = models.format_prompts(tokenizer, cond, use_chat_template=chat)
    x_ref = models.format_prompts(reference_tokenizer, prompts, use_chat_template=chat)
    return (text_logprobs(model, tokenizer, x_pol, conts)
            - text_logprobs(reference, reference_tokenizer, x_ref, conts))
