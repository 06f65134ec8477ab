"""Trainer configs, TRL's pattern: a trainer's settings are one dataclass whose fields carry their
documentation (metadata["help"]) and defaults; a command line maps fire's flags onto it
(config_from_flags) and `document` gives the command the signature and `Args:` that fire's --help shows.
Low level: imports only errors, so trainers and CLIs both use it."""
import dataclasses
import difflib
import inspect

from mapalign.errors import InputError


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


def unknown_flag_error(unknown, valid):
    """The one InputError for flags nobody takes: the first unknown flag with the closest valid name as a
    hint, the other unknown ones, and the valid flags. unknown, valid: flag names without dashes."""
    close = difflib.get_close_matches(unknown[0], list(valid), n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    also = f" (and --{', --'.join(unknown[1:])})" if unknown[1:] else ""
    return InputError(f"unknown flag --{unknown[0]}{hint}{also}; valid flags: " + ", ".join(f"--{n}" for n in valid))


def config_from_flags(config_cls, flags, args=()):
    """config_cls built from a command line's flags (fire's keyword arguments) and positional `args` (the
    required fields, in declaration order). Raises errors.InputError naming the flag for an unknown flag
    (listing the valid ones), a missing required one, or a flag given twice."""
    fields = config_fields(config_cls)
    names = [f.name for f in fields]
    required = [f.name for f in fields if _required(f)]
    unknown = [k for k in flags if k not in names]
    if unknown:
        raise unknown_flag_error(unknown, names)
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
