"""The value registry: the one place that says which human values exist and how each is scored.

Importing this module is cheap (no torch): scorers import their heavy dependencies when first used.
"""

# The original MAP task lists (SPEC-MAP §4). "all" expands to the list of TASK_NAME.
TASK_VALUES = {
    "conversation": ["humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence", "perplexity"],
    "sentiment_control": ["positive", "humor", "gpt2-helpful", "gpt2-harmless", "diversity",
                          "coherence", "perplexity"],
}
TASK_NAME = "conversation"
ALL_SUPPORTED_VALUES = TASK_VALUES[TASK_NAME]

# Values that MAP "maintains" rather than raises: the palette mode of assess_original_value
# repeats their mean in every quantile row (SPEC-MAP §2.3).
MAINTAINED_VALUES = ("diversity", "coherence", "perplexity")

DISPLAY_NAMES = {
    "humor": "Humor",
    "positive": "Positiveness",
    "gpt2-helpful": "Helpfulness",
    "gpt2-harmless": "Harmlessness",
    "harmless": "Harmlessness (legacy)",
    "diversity": "Diversity",
    "coherence": "Coherence",
    "perplexity": "Perplexity",
}


def display_name(value):
    """Human-readable label for plots and tables ("gpt2-helpful" -> "Helpfulness")."""
    return DISPLAY_NAMES.get(value, value.replace("_", " ").replace("-", " ").title())


def expand_value_list(value_list):
    """Normalise a value list as users and fire pass it.

    Accepts "all" (the task's list), a comma-separated string, a list, or the tuple that fire
    makes of `--value_list=humor,harmless`. Returns a list of value names (whitespace stripped).
    """
    if isinstance(value_list, str):
        if value_list.strip() == "all":
            return list(ALL_SUPPORTED_VALUES)
        names = value_list.split(",")
    elif isinstance(value_list, (list, tuple)):
        names = [str(v) for v in value_list]
    else:
        raise ValueError(f"value_list must be 'all', a comma-separated string or a list; got {value_list!r}")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("value_list is empty: name at least one value, e.g. --value_list=humor")
    if len(set(names)) != len(names):
        raise ValueError(f"value_list names a value twice: {names}")
    return names
