"""Benchmark: MC-aligned decoding (decoding.mc_decode) with batched HF and with vLLM vs the original's
per-prompt loop.

    python benchmarks/bench_mc_decoding.py                       # CPU, SmolLM2, 8 prompts, M = 16
    python benchmarks/bench_mc_decoding.py --device=cuda --num_prompts=64 --batch_size=1024
    python benchmarks/bench_mc_decoding.py --engine=none         # without the vLLM run

Both runs use the same model, prompts, M, sampling config (top-k 50, temperature 1), λ and scorers,
in the same process. The baseline re-implements the original loop (SPEC-MAP §3): for one prompt at a
time, generate M samples with num_return_sequences=M, score them value by value, then resample with
exp(λᵀr)/Σexp(λᵀr) in float32 (no max-subtraction, as the original; λ here is small enough not to
overflow). The candidate batches several prompts × M samples per generate call, shares each
prompt's KV cache among its samples, scores the whole batch once per value and resamples with a
stable softmax. The vLLM run is the same mc_decode with its samples drawn by engines.make_engine
("vllm": in-process vLLM, or `vllm serve` from .venv-vllm) with the same model, dtype, threads and
sampling config, all prompts in one engine call; its start-up is timed and reported separately.
Throughput = generated tokens (up to EOS, inclusive) per second, end to end (generation + scoring +
resampling). Prints the thread count; the last line is `ratio=<vLLM tokens/s ÷ per-prompt loop tokens/s>`
(batched HF ÷ loop when vLLM is not available here, said so on the line before).
"""
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from mapalign import arguments  # noqa: E402
from mapalign import cli  # noqa: E402
from mapalign import decoding  # noqa: E402
from mapalign import values as value_registry  # noqa: E402
from mapalign import sampling  # noqa: E402


def original_loop(model, tokenizer, prompts, inputs, lam, value_names, scorers, M, max_new_tokens, top_k=50,
                  temperature=1.0, add_special_tokens=False):
    """The original generate_from_MC_aligned_model loop, one prompt at a time.
    Returns (chosen raw continuations, generated-token count)."""
    import torch
    lam_t = torch.tensor(np.asarray(lam, dtype=np.float32))
    chosen, tokens = [], 0
    for prompt, text in zip(prompts, inputs):
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0,
                                 num_beams=1, max_new_tokens=max_new_tokens, num_return_sequences=M,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        tokens += int(sampling.count_new_tokens(new, [tokenizer.eos_token_id]).sum())
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        reward_vectors = [scorers[v]([prompt] * M, [t.strip() for t in texts]) for v in value_names]
        reward_matrix = torch.tensor(np.array(reward_vectors), dtype=torch.float32)
        exp_scores = torch.exp(lam_t @ reward_matrix)
        probabilities = exp_scores / exp_scores.sum()
        chosen.append(texts[torch.multinomial(probabilities, 1).item()])
    return chosen, tokens


def main(model_name="smollm2-135m", num_prompts=8, MC_nsamples=16, max_new_tokens=32, batch_size=128,
         values="sentiment,harmlessness", lam="1.0,1.0", device="cpu", dtype=None, threads=1, seed=0,
         ablation=False, engine="vllm"):
    """Time the per-prompt loop and batched MC decoding on the same prompts.

    Args:
        model_name: models.py name (default the embedded SmolLM2-135M-Instruct).
        num_prompts: first N prompts of the builtin prompt set.
        MC_nsamples: M, samples per prompt (the original pipelines used 16).
        max_new_tokens: tokens per sample.
        batch_size: sequences per generate call of the batched decoder (prompts per call = batch_size // M).
        values, lam: aligned values (offline scorers by default) and λ.
        device, dtype: see models.load_model_and_tokenizer ("cuda", "bfloat16", ...).
        threads: torch CPU threads (1 by default: the machines are shared).
        ablation: also time the batched decoder without prompt KV-cache sharing.
        engine: "vllm" (default; skipped with a note when vLLM is not available), "server --engine_url" is not
            timed here; "none" skips it.
    """
    import torch
    from mapalign.models import format_prompts, load_model_and_tokenizer
    from mapalign.prompts import load_prompts

    torch.set_num_threads(int(threads))
    model, tokenizer = load_model_and_tokenizer(model_name, device=device, dtype=dtype)
    value_names = arguments.str_list(values, "values")
    lam = decoding.parse_lam_list(lam)
    scorers = value_registry.load_scorers(value_names, device=str(model.device),
                                          basemodel_for_perplexity=(model, tokenizer))
    prompts = load_prompts("builtin")[:int(num_prompts)]
    inputs = format_prompts(tokenizer, prompts)
    print(f"threads={torch.get_num_threads()} device={model.device} dtype={model.dtype} model={model_name} "
          f"prompts={len(prompts)} M={MC_nsamples} max_new_tokens={max_new_tokens} values={value_names} "
          f"lam={lam.tolist()} batch_size={batch_size}")

    # warm-up (first-call allocations and scorer imports), outside both timings
    decoding.mc_decode(model, tokenizer, prompts[:1], lam, value_names, 2, scorers=scorers, max_new_tokens=4)
    original_loop(model, tokenizer, prompts[:1], inputs[:1], lam, value_names, scorers, 2, 4)

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(seed)
    sync()
    t0 = time.perf_counter()
    _, base_tokens = original_loop(model, tokenizer, prompts, inputs, lam, value_names, scorers, int(MC_nsamples),
                                   int(max_new_tokens))
    sync()
    base_s = time.perf_counter() - t0
    base_rate = base_tokens / base_s
    print(f"per-prompt loop (original): {base_tokens} tokens in {base_s:.2f} s = {base_rate:.1f} tok/s")

    runs = [("batched MC decoding", True)] + ([("batched, no prefix sharing", False)] if ablation else [])
    rate = None
    for label, share in runs:
        sync()
        t0 = time.perf_counter()
        results, tokens = decoding.mc_decode(model, tokenizer, prompts, lam, value_names, int(MC_nsamples),
                                             scorers=scorers, batch_size=int(batch_size),
                                             max_new_tokens=int(max_new_tokens), seed=seed, share_prefix=share)
        sync()
        seconds = time.perf_counter() - t0
        ess = np.mean([r["mc_ess"] for r in results])
        print(f"{label}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tok/s "
              f"(x{tokens / seconds / base_rate:.2f}; mean ESS {ess:.1f} of {MC_nsamples})")
        rate = rate or tokens / seconds
    hf_rate = rate
    from mapalign import engines
    if engine == "none" or not engines.vllm_available():
        print(f"vLLM: not run ({'--engine=none' if engine == 'none' else 'not available here: make vllm'}); the ratio "
              "below is batched HF / per-prompt loop")
        print(f"ratio={hf_rate / base_rate:.2f}")
        return
    dtype_name = str(model.dtype).replace("torch.", "")
    t0 = time.perf_counter()
    eng = engines.make_engine("vllm", model_name, dtype=dtype_name, threads=int(threads), tokenizer=tokenizer,
                              max_model_len=1024)
    startup = time.perf_counter() - t0
    try:
        info = eng.info()
        print(f"vLLM start-up ({info.get('mode')}, {info.get('version')}, {dtype_name}, {threads} threads): "
              f"{startup:.1f} s (not in the throughput below)")
        decoding.mc_decode(model, tokenizer, prompts[:1], lam, value_names, 2, scorers=scorers, max_new_tokens=4,
                           engine=eng)  # warm-up
        t0 = time.perf_counter()
        results, tokens = decoding.mc_decode(model, tokenizer, prompts, lam, value_names, int(MC_nsamples),
                                             scorers=scorers, batch_size=len(prompts) * int(MC_nsamples),
                                             max_new_tokens=int(max_new_tokens), seed=seed, engine=eng)
        seconds = time.perf_counter() - t0
    finally:
        eng.close()
    v_rate = tokens / seconds
    ess = np.mean([r["mc_ess"] for r in results])
    print(f"vLLM MC decoding: {tokens} tokens in {seconds:.2f} s = {v_rate:.1f} tok/s (x{v_rate / base_rate:.2f} the "
          f"loop, x{v_rate / hf_rate:.2f} batched HF; mean ESS {ess:.1f} of {MC_nsamples}); with start-up "
          f"{tokens / (seconds + startup):.1f} tok/s")
    print(f"ratio={v_rate / base_rate:.2f}")


if __name__ == "__main__":
    cli.main(main)
