"""The λ target file format: a λ together with what it was fitted on (values, palette, estimator, solver,
sampling config, base model, results file), as `alignValues.py` writes it (results/alignValues.jsonl next
to alignValues.txt, or one object with `optimize_lambda --save_lambda=FILE`) and the trainers and the
`@FILE` form of λ flags read it.

A target is a JSON object {values, lam, c, status, estimator, solver, sampling, base_model, results_file};
only `values` and `lam` are required on reading. This module is low-level on purpose (it imports only
errors): the argument parsing of every CLI reads `--lam_list=@FILE` through it.
"""
import json
import os

from mapalign.errors import InputError, NotFoundError


def make_target(values, lam, c=None, estimator=None, sampling=None, base_model=None, results_file=None,
                solver_name=None, status=None):
    """A λ target record (JSON-ready dict): the λ, its values and palette, and what it was fitted on."""
    return {"values": list(values), "lam": [float(x) for x in lam],
            "c": None if c is None else [float(x) for x in c], "status": status, "estimator": estimator,
            "solver": solver_name, "sampling": sampling, "base_model": base_model, "results_file": results_file}


def append_target(target, path):
    """Append one λ target as a JSON line to `path` (the sidecar of alignValues.txt)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(target) + "\n")


def load_target(path, index=-1, flag="--lambda_file="):
    """A λ target from a .json file (one object, e.g. `optimize_lambda --save_lambda`) or a .jsonl sidecar
    (entry `index`, default the last). `flag` is how error messages name the input."""
    where = f"{flag}{path!r}"
    if not os.path.isfile(path):
        raise NotFoundError(f"{where} does not exist; alignValues.py writes results/alignValues.jsonl next to "
                            "alignValues.txt, and `optimize_lambda --save_lambda=FILE` one target")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith(".jsonl"):
            lines = [json.loads(x) for x in text.splitlines() if x.strip()]
            if not lines:
                raise InputError(f"{where} holds no λ")
            target = lines[int(index)]
        else:
            target = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where} is not valid JSON ({e.msg}, line {e.lineno}); rewrite it with alignValues.py "
                         "optimize_lambda") from None
    if not isinstance(target, dict) or "lam" not in target or "values" not in target:
        raise InputError(f"{where}: expected an object with 'values' and 'lam'")
    if any(not isinstance(x, (int, float)) for x in target["lam"]):
        raise InputError(f"{where}: its λ is {target['lam']} (the palette was not reached)")
    return target
