"""Start, list and stop a vLLM server (`vllm serve` from .venv-vllm, built by `make vllm`) on 127.0.0.1.

A command line over `mapalign.vllm_server`; run with --help for every flag."""
from mapalign import cli
from mapalign.vllm_server import Server


if __name__ == "__main__":
    cli.main(Server)
