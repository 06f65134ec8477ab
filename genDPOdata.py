"""Preference data for the DPO baseline: a seeded harmless/helpful mixture of Anthropic HH-RLHF.

A command line over `mapalign.dpodata`; run with --help for every flag."""
from mapalign import cli
from mapalign.dpodata import gen_mixed_preference_data, main, preprocess_data


if __name__ == "__main__":
    cli.main({"main": main, "gen_mixed_preference_data": gen_mixed_preference_data,
               "preprocess_data": preprocess_data})
