"""What the top-level fire CLIs share: one entry point (the project's input errors print one clear
line, not a traceback; bugs keep theirs) and the normalisation of list arguments as fire passes them."""
import dataclasses
import inspect
import math
import os
import sys

import fire

from mapalign.errors import InputError


def main(component, **fire_kwargs):
    """Run `component` under python-fire (fire_kwargs go to fire.Fire), reporting input errors as
    `report_input_errors` does."""
    command = fire_kwargs.pop("command", None)
    command = _help_command(component, list(sys.argv[1:] if command is None else command))
    return report_input_errors(fire.Fire, component, command=command, **fire_kwargs)


def _help_command(component, argv):
    """`-h`/`--help` as fire's separated `-- --help` for a command that takes its flags through a **flags
    catch-all (a trainer command, see `document`): fire would hand it a bare --help as one more flag. A
    dict of commands keeps the command's name; other flags are dropped (help was asked for, not a run).
    Every other command line is left as it is."""
    path = argv[:1] if isinstance(component, dict) and argv and argv[0] in component else []
    target = component[path[0]] if path else component
    if "--" in argv or not any(a in ("-h", "--help") for a in argv) or not inspect.isroutine(target):
        return argv
    if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values()):
        return argv
    return path + ["--", "--help"]


def report_input_errors(fn, *args, **kwargs):
    """Call fn(*args, **kwargs) for a command line. The project's own input errors (errors.InputError
    and its subclasses: records.RecordsError, a missing file or model, an unknown value, a bad
    palette, ...) exit with status 2 and the message alone; set MAP_DEBUG=1 to see their traceback.
    Any other exception (KeyError, TypeError, a library's ValueError, ...) is a bug, not bad input:
    it keeps its traceback and exits 1."""
    try:
        return fn(*args, **kwargs)
    except InputError as e:
        if os.environ.get("MAP_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def float_list(x, name):
    """A list of floats from what fire passes: a number (`--c=0.5`), a tuple (`--c=1,2`), a string
    ("1, 2" or "[1,2]"), a list/array, or "@FILE": the λ of a target file written by
    `alignValues.py ... optimize_lambda --save_lambda=FILE` (how pipelines pass a solved λ on).
    Raises errors.InputError naming `--{name}` for anything else, an empty list or non-finite numbers."""
    if isinstance(x, str) and x.startswith("@"):
        x = _lambda_file(x[1:], name)
    if isinstance(x, str):
        items = [s for s in x.replace(" ", "").strip("[]").split(",") if s]
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        items = [x]
    elif hasattr(x, "__iter__"):
        items = [v for v in (x.ravel() if hasattr(x, "ravel") else x)]
    else:
        raise InputError(f"--{name} must be a number or a comma-separated list of numbers; got {x!r}")
    try:
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        raise InputError(f"--{name} must hold numbers only; got {x!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise InputError(f"--{name} must be a non-empty list of finite numbers; got {x!r}")
    return out


def _lambda_file(path, name):
    from mapalign import primaldual  # imported here: it pulls in the solver, which most CLIs never need
    return primaldual.load_target(path, flag=f"--{name}=@")["lam"]


def str_list(x, name):
    """A list of strings from what fire passes: a comma-separated string or a list/tuple (fire makes
    `--x=a,b` a tuple). Items are stripped; empty ones dropped. Raises errors.InputError naming `--{name}`
    for other types or an empty list."""
    if isinstance(x, str):
        items = x.split(",")
    elif isinstance(x, (list, tuple)):
        items = [str(v) for v in x]
    else:
        raise InputError(f"--{name} must be a comma-separated string or a list; got {x!r}")
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise InputError(f"--{name} is empty")
    return items


def values_and_lambda(value_list, lam_list):
    """The aligned values (values.expand_value_list) and their λ, one per value, as lists.
    Raises errors.InputError when the counts differ."""
    from mapalign.values import expand_value_list
    values = expand_value_list(value_list)
    lam = float_list(lam_list, "lam_list")
    if len(lam) != len(values):
        raise InputError(f"--lam_list has {len(lam)} entries but --value_list names {len(values)} values "
                         f"({values}); give one λ per value, in the same order.")
    return values, lam


# ---------------------------------------------------------------------------------------------
# Trainer configs (TRL's pattern): a trainer's settings are one dataclass whose fields carry their
# documentation (metadata["help"]) and defaults; its command line maps fire's flags onto it.

def option(default=dataclasses.MISSING, doc=""):
    """A config field: `default` (leave it out for a required one) and `doc`, what the flag means and its
    units; --help shows it with the default."""
    return dataclasses.field(default=default, metadata={"help": doc})


def config_fields(config_cls):
    """The init fields of a config dataclass, its own first: a field declared (or re-declared) in a subclass
    comes before those it inherits, so --help starts with the method's flags, not the shared ones."""
    def place(f):  # (how far up the class that declares it is, its place in that class's declarations)
        for depth, c in enumerate(config_cls.__mro__):
            own = list(c.__dict__.get("__annotations__", {}))
            if f.name in own:
                return depth, own.index(f.name)
    return sorted((f for f in dataclasses.fields(config_cls) if f.init), key=place)


def _required(f):
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def config_from_flags(config_cls, flags, args=()):
    """config_cls built from a command line's flags (fire's keyword arguments) and positional `args` (the
    required fields, in declaration order). Raises errors.InputError naming the flag for an unknown flag
    (listing the valid ones), a missing required one, or a flag given twice."""
    fields = config_fields(config_cls)
    names = [f.name for f in fields]
    required = [f.name for f in fields if _required(f)]
    unknown = [k for k in flags if k not in names]
    if unknown:
        also = f" (and --{', --'.join(unknown[1:])})" if unknown[1:] else ""
        raise InputError(f"unknown flag --{unknown[0]}{also}; valid flags: " + ", ".join(f"--{n}" for n in names))
    if len(args) > len(required):
        raise InputError(f"too many positional arguments {list(args)}: only {required} may be given without a flag")
    flags = dict(flags)
    for name, value in zip(required, args):
        if name in flags:
            raise InputError(f"--{name} is given twice (as a positional argument and as a flag)")
        flags[name] = value
    missing = [n for n in required if n not in flags]
    if missing:
        raise InputError(f"--{missing[0]} is required" + "".join(f", --{n} too" for n in missing[1:]))
    return config_cls(**flags)


def flags_doc(config_cls, indent=8, show_defaults=True):
    """The config's fields as a Google-style `Args:` body (what fire's --help shows): one `name: doc`
    entry per field, with `(default X)` when show_defaults."""
    out = []
    for f in config_fields(config_cls):
        text = " ".join(f.metadata.get("help", "").split())  # one line per entry (TRL's helps span several)
        if _required(f):
            text += " (required)"
        elif show_defaults:
            text += f" (default {_default(f)!r})"
        out.append(" " * indent + f"{f.name}: {text}")
    return "\n".join(out)


def document(fn, configs, flags_default=True, accept_unknown=True):
    """Give `fn(*args, **flags)`, which builds a config dataclass from its flags, the signature and docstring
    fire reads, so `--help` lists and explains every field. `configs` is the config class or a tuple of
    them (a command whose flags fill several). For a class, its `__init__(self, ..., **flags)` gets the
    signature and the class docstring the entries (fire shows the class's). Returns fn.

    The signature is fn's own required parameters, then the configs' required fields (positional or
    flag), then their other fields as flags, then fn's own optional parameters, then (accept_unknown) a
    **flags catch-all so that an unknown flag reaches config_from_flags and its one clear error. A class
    whose commands take flags of their own passes accept_unknown=False (fire hands a catch-all every flag
    of the line, the commands' too). flags_default=None gives every field the default None (a run
    folder's recorded settings fill what is left out); the docstring then states the config's defaults."""
    configs = configs if isinstance(configs, tuple) else (configs,)
    target = fn.__init__ if inspect.isclass(fn) else fn
    own = [p for p in inspect.signature(target).parameters.values()
           if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    fields = [f for c in configs for f in config_fields(c)]
    params = [p for p in own if p.default is p.empty]
    params += [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for f in fields if _required(f)]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_default(f) if flags_default else None)
               for f in fields if not _required(f)]
    params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.default is not p.empty]
    if accept_unknown:
        params.append(inspect.Parameter("flags", inspect.Parameter.VAR_KEYWORD))
    target.__signature__ = inspect.Signature(params)
    doc = inspect.cleandoc(fn.__doc__ or "")
    # fire shows each flag's `Default:` itself; the entries say the config's defaults where flags default to None
    entries = "\n".join(flags_doc(c, indent=4, show_defaults=flags_default is None) for c in configs)
    if "\nArgs:\n" in doc:
        doc = doc.replace("\nArgs:\n", "\nArgs:\n" + entries + "\n", 1)
    else:
        doc += "\n\nArgs:\n" + entries
    fn.__doc__ = doc
    return fn
