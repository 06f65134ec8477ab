"""Generation throughput: one prompt at a time vs batched HF sampling (gendata's default path) vs vLLM.

Same model (the embedded SmolLM2-135M-Instruct), same prompts, same sampling config, dtype and threads.
EOS is suppressed (min_new_tokens = max_new_tokens) so every run generates exactly prompts × max_new_tokens
tokens. vLLM (gendata --engine=vllm: in-process, or `vllm serve` from .venv-vllm) gets all prompts in one
call; its start-up is reported separately. Prints the thread count, tokens/s of each, and ends with
`ratio=<vLLM tokens/s ÷ one-at-a-time tokens/s>` (batched HF ÷ one-at-a-time when vLLM is not available,
said so on the line before).

    .venv/bin/python benchmarks/bench_gendata.py [--num_prompts=32 --max_new_tokens=32 --batch_size=32]
"""
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from mapalign import cli  # noqa: E402
from mapalign.generation import TextGeneration  # noqa: E402
from mapalign.models import fast_dtype  # noqa: E402
from mapalign.models import DEFAULT_MODEL  # noqa: E402


def timed_generation(tg, prompts, batch_size):
    """(seconds, new tokens) to sample one continuation per prompt in batches of `batch_size`."""
    tg.tokens_generated = 0
    t0 = time.perf_counter()
    for lo in range(0, len(prompts), batch_size):
        tg.sample_continuations(prompts[lo:lo + batch_size], num_samples=1, batch_size=batch_size, seed_key=lo)
    return time.perf_counter() - t0, tg.tokens_generated


def main(num_prompts=32, max_new_tokens=32, batch_size=32, dtype=None, threads=1, model=DEFAULT_MODEL, engine="vllm"):
    """Benchmark batched vs one-at-a-time generation.

    Args:
        num_prompts: prompts of the built-in set used by both runs.
        max_new_tokens: tokens generated per prompt (EOS suppressed, so exactly this many).
        batch_size: prompts per forward pass in the batched run.
        dtype: model dtype; default the faster one here (models.fast_dtype: bfloat16 only with native CPU
            bf16 support or a GPU, else float32), as the demo chooses.
        threads: torch threads (1 by default: the machines are shared).
        model: model name (default the embedded SmolLM2).
        engine: "vllm" (default; skipped with a note when not available) or "none".
    """
    import torch
    torch.set_num_threads(int(threads))
    dtype = dtype or fast_dtype()
    tg = TextGeneration(basemodel_name=model, data_name="builtin", num_prompts=num_prompts, dtype=dtype,
                        max_new_tokens=max_new_tokens, progress=False)
    tg.sampling["min_new_tokens"] = int(max_new_tokens)  # equal work in both runs
    prompts = tg.prompts
    tg.load_model()
    print(f"model={model} dtype={dtype} threads={torch.get_num_threads()} prompts={len(prompts)} "
          f"max_new_tokens={max_new_tokens} batch_size={batch_size}")
    timed_generation(tg, prompts[:2], 2)  # warm-up (first-call allocations)
    base_s, base_tokens = timed_generation(tg, prompts, 1)
    print(f"one prompt at a time: {base_tokens} tokens in {base_s:.2f} s = {base_tokens / base_s:.1f} tok/s")
    cand_s, cand_tokens = timed_generation(tg, prompts, int(batch_size))
    print(f"batched ({batch_size}):        {cand_tokens} tokens in {cand_s:.2f} s = {cand_tokens / cand_s:.1f} tok/s")
    batched_ratio = (base_s / base_tokens) / (cand_s / cand_tokens)
    from mapalign import engines
    if engine == "none" or not engines.vllm_available():
        print(f"vLLM: not run ({'--engine=none' if engine == 'none' else 'not available here: make vllm'}); the ratio "
              "below is batched HF / one at a time")
        print(f"ratio={batched_ratio:.2f}")
        return
    tv = TextGeneration(basemodel_name=model, data_name="builtin", num_prompts=num_prompts, dtype=dtype,
                        max_new_tokens=max_new_tokens, progress=False, engine="vllm")
    tv.sampling["min_new_tokens"] = int(max_new_tokens)
    t0 = time.perf_counter()
    tv._engine = engines.make_engine("vllm", model, tokenizer=tv.load_tokenizer(), dtype=dtype, threads=int(threads),
                                     max_model_len=1024)
    startup = time.perf_counter() - t0
    try:
        info = tv._engine.info()
        print(f"vLLM start-up ({info.get('mode')}, {info.get('version')}, {dtype}, {threads} threads): {startup:.1f} s "
              "(not in the throughput below)")
        timed_generation(tv, prompts[:2], 2)  # warm-up
        v_s, v_tokens = timed_generation(tv, prompts, len(prompts))
    finally:
        tv.close_engine()
    v_rate = v_tokens / v_s
    print(f"vLLM (all prompts in one call): {v_tokens} tokens in {v_s:.2f} s = {v_rate:.1f} tok/s "
          f"(x{v_rate / (cand_tokens / cand_s):.2f} batched HF; with start-up {v_tokens / (v_s + startup):.1f} tok/s)")
    print(f"batched HF / one at a time: {batched_ratio:.2f}")
    print(f"ratio={(base_s / base_tokens) / (v_s / v_tokens):.2f}")


if __name__ == "__main__":
    cli.main(main)
