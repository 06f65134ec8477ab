"""Multi-objective reward models saved as folders: ridge probes (ArmoRM-style) and k-output regression
models (rewardTrainer.py --objective=regression), one loader for both.

A reward-model folder holds `map_reward_model.json` with at least
    kind         "ridge" or "regression" (folders without it are regression models)
    attributes   the k output names, in order
    template     the input text, formatted with {prompt} and {response}
    scale        optional: {"lo": [...], "hi": [...]}; outputs are mapped linearly so that lo -> 10 and
                 hi -> 90 (DPA's 0-100 scale, where HelpSteer's 0..4 labels become 10..90)
A ridge folder adds `backbone` (a model name models.py resolves), `pooling` ("last" token or "mean"),
`max_length`, and `ridge_probes.npz` (coef (k, d), intercept (k,), alpha (k,)).

Ridge probes: a frozen backbone embeds every rendered text (the last layer's hidden state at the last
real token, or the mean over real tokens); for each attribute, a ridge regression on the rows where that
attribute is labelled (NaN = missing), with the L2 strength α chosen from a grid by validation MSE on a
seeded hold-out, then refitted on all labelled rows with that α. Closed form through one SVD per
attribute, so it is cheap on CPU.

The value registry (mapalign.values) names a folder's heads as `rm:FOLDER` (all heads) or `rm:FOLDER/attr`.
"""
import json
import os

import numpy as np

from mapalign.errors import InputError, NotFoundError

RM_FILE = "map_reward_model.json"
RIDGE_FILE = "ridge_probes.npz"
DEFAULT_TEMPLATE = "User: {prompt}\nAssistant: {response}"
DEFAULT_ALPHAS = tuple(10.0 ** np.arange(-4, 5))


class RewardModelError(InputError):
    """A reward-model folder or its training input cannot be used; the message names it."""


# ---------------------------------------------------------------------------------------------
# Math (pure)

def fit_ridge(X, y, alphas=DEFAULT_ALPHAS):
    """Ridge regression with an intercept for every α in `alphas`, by one SVD of the centred X.

    X: (n, d) features; y: (n,) finite targets. Returns (coefs (A, d), intercepts (A,)).
    Minimises Σ (y − Xw − b)² + α·|w|² (the intercept is not penalised).
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mx, my = X.mean(axis=0), y.mean()
    U, s, Vt = np.linalg.svd(X - mx, full_matrices=False)
    uty = U.T @ (y - my)
    coefs = np.stack([Vt.T @ (s / (s * s + a) * uty) for a in alphas])
    return coefs, my - coefs @ mx


def fit_ridge_probes(X, Y, alphas=DEFAULT_ALPHAS, val_fraction=0.2, seed=0):
    """One ridge probe per attribute, α chosen by validation MSE, NaN labels masked.

    X: (n, d) embeddings; Y: (n, k) labels with NaN where an attribute is missing.
    For attribute j, the rows with a finite label are split (seeded) into train/validation; every α is
    fitted on train and scored by validation MSE; the best α is refitted on all labelled rows.
    Returns dict coef (k, d), intercept (k,), alpha (k,), val_mse (k,), n_labelled (k,).
    Raises RewardModelError when an attribute has fewer than 4 labelled rows.
    """
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or X.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise RewardModelError(f"embeddings {X.shape} and labels {Y.shape} do not match")
    alphas = np.asarray(alphas, dtype=np.float64)
    rng = np.random.default_rng(seed)
    k, d = Y.shape[1], X.shape[1]
    out = {"coef": np.zeros((k, d)), "intercept": np.zeros(k), "alpha": np.zeros(k), "val_mse": np.zeros(k),
           "n_labelled": np.zeros(k, dtype=np.int64)}
    for j in range(k):
        rows = np.flatnonzero(np.isfinite(Y[:, j]))
        if rows.size < 4:
            raise RewardModelError(f"attribute {j} has {rows.size} labelled rows; a ridge probe needs at least 4")
        perm = rng.permutation(rows)
        n_val = max(1, int(round(val_fraction * rows.size)))
        val, train = perm[:n_val], perm[n_val:]
        coefs, intercepts = fit_ridge(X[train], Y[train, j], alphas)
        mse = ((X[val] @ coefs.T + intercepts - Y[val, j][:, None]) ** 2).mean(axis=0)
        best = int(np.argmin(mse))
        coef, intercept = fit_ridge(X[rows], Y[rows, j], alphas[best:best + 1])
        out["coef"][j], out["intercept"][j] = coef[0], intercept[0]
        out["alpha"][j], out["val_mse"][j], out["n_labelled"][j] = alphas[best], mse[best], rows.size
    return out


def to_dpa_scale(y, lo, hi):
    """Map y linearly so lo -> 10 and hi -> 90 (DPA's 0-100 scale); per column."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    return 10.0 + 80.0 * (np.asarray(y, dtype=np.float64) - lo) / span


def label_range(Y, output_scale, given=None):
    """The (lo, hi) per attribute that the 0-100 scale maps to 10 and 90: `given` ((lo, hi) pairs, e.g.
    0,4 for HelpSteer labels) or the labels' observed min and max. None when output_scale is off."""
    if output_scale in (None, False, "", "none", "raw"):
        return None
    if output_scale not in ("0-100", "0_100", 100, "100"):
        raise RewardModelError(f"output_scale must be '0-100' or none; got {output_scale!r}")
    if given is not None:
        g = np.asarray(given, dtype=np.float64).reshape(-1, 2)
        if g.shape[0] == 1:
            g = np.repeat(g, Y.shape[1], axis=0)
        if g.shape[0] != Y.shape[1]:
            raise RewardModelError(f"label_range gives {g.shape[0]} (lo, hi) pairs for {Y.shape[1]} attributes")
        return {"lo": g[:, 0].tolist(), "hi": g[:, 1].tolist()}
    return {"lo": np.nanmin(Y, axis=0).tolist(), "hi": np.nanmax(Y, axis=0).tolist()}


# ---------------------------------------------------------------------------------------------
# Embeddings of a frozen backbone

def load_backbone(name, device=None):
    """(base model without LM head, tokenizer with right padding) of a models.py model name."""
    from mapalign import models
    _, location = models.resolve_model_name(name)
    model, tokenizer, _ = models.load_pretrained(location, "AutoModel", device=device, what="reward-model backbone")
    tokenizer.padding_side = "right"
    return model, tokenizer


def embed(model, tokenizer, texts, pooling="last", batch_size=16, max_length=512, progress=False):
    """(n, d) float64 embeddings: the last layer's hidden state at the last real token ("last") or the
    mean over real tokens ("mean"). Right padding, so a batch embeds like one text at a time."""
    import torch
    from tqdm.auto import tqdm
    if pooling not in ("last", "mean"):
        raise RewardModelError(f"pooling must be 'last' or 'mean'; got {pooling!r}")
    tokenizer.truncation_side = "left"  # keep the response's end
    out = []
    with torch.no_grad():
        for lo in tqdm(range(0, len(texts), batch_size), desc="embed", unit="batch", disable=not progress):
            enc = tokenizer(list(texts[lo:lo + batch_size]), padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt", padding_side="right").to(model.device)
            h = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"]
            if pooling == "last":
                e = h[torch.arange(h.shape[0]), mask.sum(1) - 1]
            else:
                m = mask.unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(e.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size))


def render(template, prompt, response):
    return template.format(prompt=prompt, response=response)


# ---------------------------------------------------------------------------------------------
# Folders

def read_info(folder):
    """The folder's map_reward_model.json, checked: it must name its attributes."""
    path = os.path.join(str(folder), RM_FILE)
    if not os.path.isdir(str(folder)):
        raise NotFoundError(f"reward-model folder not found: {folder!r}")
    if not os.path.isfile(path):
        raise RewardModelError(f"{folder!r} is not a reward-model folder: it has no {RM_FILE} (its attribute "
                               "list). Train one with python rewardTrainer.py --objective=ridge|regression ...")
    with open(path, encoding="utf-8") as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError as e:
            raise RewardModelError(f"{path} is not valid JSON ({e.msg}); retrain the reward model") from None
    attributes = info.get("attributes")
    if not isinstance(attributes, list) or not attributes or not all(isinstance(a, str) and a for a in attributes):
        raise RewardModelError(f"{path} has no attribute list (key 'attributes': a non-empty list of names)")
    if info.get("kind", "regression") == "ridge" and not os.path.isfile(os.path.join(str(folder), RIDGE_FILE)):
        raise RewardModelError(f"ridge reward model {folder!r} lacks {RIDGE_FILE}; retrain it")
    return info


def train_ridge_reward_model(backbone, rows, attributes, output_dir, pooling="last", template=DEFAULT_TEMPLATE,
                             prompt_column="prompt", response_column="continuation", alphas=DEFAULT_ALPHAS,
                             val_fraction=0.2, seed=0, output_scale=None, label_range_given=None, max_length=512,
                             batch_size=16, device=None, progress=True):
    """Fit ridge probes on a frozen backbone's embeddings and save the folder; returns output_dir.

    rows: list of dicts with the prompt/response columns and one float (or null/NaN) per attribute.
    output_scale: None (attribute units) or "0-100" (lo -> 10, hi -> 90; see label_range).
    The probes are written first and map_reward_model.json last (atomically), so a folder with the
    json is complete.
    """
    from mapalign import records
    import time
    attributes = list(attributes)
    Y = np.full((len(rows), len(attributes)), np.nan)
    for j, a in enumerate(attributes):
        if not any(a in r for r in rows):
            raise RewardModelError(f"attribute {a!r} is not a column of the training rows")
        for i, r in enumerate(rows):
            x = r.get(a)
            if isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x):
                Y[i, j] = float(x)
    scale = label_range(Y, output_scale, label_range_given)
    model, tokenizer = load_backbone(backbone, device=device)
    texts = [render(template, r.get(prompt_column, ""), r[response_column]) for r in rows]
    t0 = time.time()
    X = embed(model, tokenizer, texts, pooling=pooling, batch_size=batch_size, max_length=max_length,
              progress=progress)
    probes = fit_ridge_probes(X, Y, alphas=alphas, val_fraction=val_fraction, seed=seed)
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, ".tmp-" + RIDGE_FILE)
    np.savez(tmp, coef=probes["coef"], intercept=probes["intercept"], alpha=probes["alpha"])
    os.replace(tmp, os.path.join(output_dir, RIDGE_FILE))
    info = {"kind": "ridge", "attributes": attributes, "template": template, "backbone": str(backbone),
            "pooling": pooling, "max_length": int(max_length), "scale": scale, "seed": int(seed),
            "alphas": [float(a) for a in alphas], "val_fraction": float(val_fraction),
            "alpha": probes["alpha"].tolist(), "val_mse": probes["val_mse"].tolist(),
            "n_labelled": probes["n_labelled"].tolist(), "n_rows": len(rows), "embed_seconds": time.time() - t0}
    records.save_json_atomic(info, os.path.join(output_dir, RM_FILE), indent=2)
    return output_dir


class RewardModel:
    """A saved multi-objective reward model: `rm(prompts, continuations)` -> (n, k) float64 in the
    folder's units (0-100 when it was saved with a scale). Loaded lazily on the first call."""

    def __init__(self, folder, device=None, batch_size=16):
        self.folder, self.device, self.batch_size = str(folder), device, int(batch_size)
        self.info = read_info(folder)
        self.kind = self.info.get("kind", "regression")
        self.attributes = list(self.info["attributes"])
        self._model = self._tokenizer = None

    def _load(self):
        import torch
        if self.kind == "ridge":
            self._model, self._tokenizer = load_backbone(self.info["backbone"], device=self.device)
            p = np.load(os.path.join(self.folder, RIDGE_FILE))
            self._probes = (p["coef"], p["intercept"])
        else:
            from mapalign import models
            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model, self._tokenizer, _ = models.load_pretrained(
                self.folder, "AutoModelForSequenceClassification", device=self.device, what="reward model")
            self._tokenizer.truncation_side = self.info.get("truncation_side", "left")

    def raw(self, prompts, continuations):
        """(n, k) outputs before the 0-100 scale."""
        import torch
        if self._model is None:
            self._load()
        texts = [render(self.info["template"], p, c) for p, c in zip(prompts, continuations)]
        if self.kind == "ridge":
            X = embed(self._model, self._tokenizer, texts, pooling=self.info["pooling"], batch_size=self.batch_size,
                      max_length=self.info["max_length"])
            coef, intercept = self._probes
            return X @ coef.T + intercept
        out = []
        with torch.no_grad():
            for lo in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(texts[lo:lo + self.batch_size], padding=True, truncation=True,
                                        max_length=self.info["max_length"], return_tensors="pt").to(self._model.device)
                out.append(self._model(**batch).logits.float().cpu().numpy())
        scores = np.concatenate(out, axis=0) if out else np.zeros((0, len(self.attributes)))
        return scores.astype(np.float64) * np.asarray(self.info["std"]) + np.asarray(self.info["mean"])

    def __call__(self, prompts, continuations):
        y = self.raw(list(prompts), list(continuations))
        scale = self.info.get("scale")
        return to_dpa_scale(y, scale["lo"], scale["hi"]) if scale else y


_LOADED = {}


def load(folder, device=None):
    """The RewardModel of a folder, once per process (shared by all its heads)."""
    key = (os.path.abspath(str(folder)), device)
    if key not in _LOADED:
        _LOADED[key] = RewardModel(folder, device=device)
    return _LOADED[key]
