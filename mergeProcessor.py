"""Merge reward columns and generation shards back into one results file.

A command line over `mapalign.merging`; run with --help for every flag."""
from mapalign import cli
from mapalign.merging import MergeProcessor


if __name__ == "__main__":
    cli.main(MergeProcessor)
