"""Find the λ that aligns a model to a palette of human values (MAP), or prove the palette infeasible.

A command line over `mapalign.align`; run with --help for every flag."""
from mapalign import cli
from mapalign.align import AlignValues


if __name__ == "__main__":
    cli.main(AlignValues)
