"""Generate continuations of a prompt set with a causal LM and save them as a MAP results file.

A command line over `mapalign.generation`; run with --help for every flag."""
from mapalign import cli
from mapalign.generation import TextGeneration


if __name__ == "__main__":
    cli.main(TextGeneration)
