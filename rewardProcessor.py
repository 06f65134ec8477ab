"""Score results files with human values and summarise the levels before and after alignment.

A command line over `mapalign.rewarding`; run with --help for every flag."""
from mapalign import cli
from mapalign.rewarding import RewardProcessor


if __name__ == "__main__":
    cli.main(RewardProcessor)
