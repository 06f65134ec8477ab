"""Token-level value-aligned decoding: reward-tilted top-k sampling (a heuristic, not MAP).

A command line over `mapalign.token_decoder`; run with --help for every flag."""
from mapalign import cli
from mapalign.token_decoder import main


if __name__ == "__main__":
    cli.main(main)
