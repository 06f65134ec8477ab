"""Token-level value-aligned decoding: reward-tilted top-k sampling (a heuristic, not MAP).

    python tokenValueDecoder.py --prompt="How do I bake bread?" --value=sentiment --value_param=2

Every `interval` tokens, each of the top-k candidate next tokens is scored with the value's actual
reward of (prompt, partial continuation + candidate), and the candidate log-probabilities are tilted
by λᵀr (value_param · reward for one value) before sampling; other steps are plain top-k sampling.
The original (SPEC-MAP §7) was a research stub: its "rewards" were Gaussian noise, it re-ran the
whole text through the model at every token, and it handled one prompt. Here the rewards are real
(values.load_scorer), generation runs through `model.generate` with its KV cache (sampling.sample), all candidates of
all prompts of a batch are scored in one scorer call per value, and prompts are batched.

Honest status: this is a greedy, myopic heuristic. Tilting individual tokens by the reward of a
*partial* text does not sample from MAP's aligned distribution p_λ ∝ p0·exp(λᵀr(full text)), the
same λ does not reach the same palette as sequence-level MC decoding (decoding.py), and rewards of
half-written text can be misleading. Use decoding.mc_decode when the palette must be realized;
`benchmarks/check_mc_attainment.py` compares the two (realized levels and time).
"""
import time

import numpy as np

from mapalign import arguments
from mapalign import decoding
from mapalign import values as value_registry
from mapalign import sampling


def _tilt_processor_class():
    from transformers import LogitsProcessor

    class ValueTiltProcessor(LogitsProcessor):
        """Keeps the top-k logits (divided by the temperature) and, on tilt steps, adds λᵀr of each
        candidate; everything else becomes -inf. Applied before any warper, so generate must be
        called with temperature 1 and top_k 0 (this processor does both)."""

        def __init__(self, tokenizer, prompts, prompt_width, value_names, lam, scorers, top_k, interval,
                     temperature, stop_ids, debug=False):
            self.tokenizer, self.prompts, self.prompt_width = tokenizer, prompts, prompt_width
            self.value_names, self.lam, self.scorers = value_names, lam, scorers
            self.top_k, self.interval, self.temperature = top_k, interval, temperature
            self.stop_ids, self.debug = set(stop_ids), debug
            self.scorer_calls, self.texts_scored = 0, 0

        def tilt_step(self, step):
            """The original's schedule: steps interval-1, 2·interval-1, ... (0-based)."""
            return bool(np.any(self.lam != 0)) and (step + 1) % self.interval == 0

        def __call__(self, input_ids, scores):
            import torch
            step = input_ids.shape[1] - self.prompt_width
            k = min(self.top_k, scores.shape[-1])
            top, idx = (scores.float() / self.temperature).topk(k, dim=-1)
            if self.tilt_step(step):
                generated = input_ids[:, self.prompt_width:].tolist()
                active = [b for b, ids in enumerate(generated) if not self.stop_ids.intersection(ids)]
                if active:
                    candidates = idx[active].tolist()
                    token_lists = [generated[b] + [c] for b, row in zip(active, candidates) for c in row]
                    texts = [t.strip() for t in self.tokenizer.batch_decode(token_lists, skip_special_tokens=True)]
                    R = decoding.score_samples(self.value_names, self.scorers,
                                               [self.prompts[b] for b in active for _ in range(k)], texts)
                    tilt = torch.as_tensor((self.lam @ R).reshape(len(active), k), dtype=top.dtype,
                                           device=top.device)
                    top[active] = top[active] + tilt
                    self.scorer_calls += 1
                    self.texts_scored += len(texts)
                    if self.debug:
                        order = np.argsort(-tilt[0].cpu().numpy())[:5]
                        print(f"step {step}: prompt {active[0]} best candidates by λᵀr: "
                              + "; ".join(f"{texts[j][-30:]!r} {float(tilt[0, j]):+.3f}" for j in order))
            out = torch.full_like(scores, float("-inf"), dtype=top.dtype)
            return out.scatter_(1, idx, top)

    return ValueTiltProcessor


def value_aligned_decode(model, tokenizer, prompts, value_names, lam, max_decode_length=50, top_k=50, interval=3,
                         temperature=1.0, scorers=None, use_chat_template=None, stop_at_period=False, seed=None,
                         batch_size=8, debug=False, basemodel_for_perplexity=None):
    """Reward-tilted top-k sampling for a list of prompts.

    Args:
        model, tokenizer: causal LM (left padding) and its tokenizer.
        prompts: raw prompt strings (chat-formatted here when the template is used).
        value_names: k value names (registry names or keys of `scorers`); lam: (k,) tilt weights.
        max_decode_length: maximum new tokens; top_k: candidates per step; interval: tilt every this
            many tokens; temperature: of the top-k softmax.
        scorers: optional dict name -> f(prompts, continuations) -> (n,) rewards; missing ones load from
            the registry.
        use_chat_template: None = when the tokenizer has one, True, or False (raw prompts, as the original).
        stop_at_period: also stop a row at the "." token (the original did).
        seed: seeds torch's RNG once before the first batch (None: keep its state); later batches continue
            that stream (sampling.sample with seed=None).
        batch_size: prompts per generate call.
    Returns:
        (continuations, stats): raw decoded continuations (special tokens skipped), and a dict with
        new_tokens, scorer_calls (tilt steps that scored), texts_scored and seconds.
    """
    import torch
    from mapalign.models import format_prompts

    lam = np.asarray(lam, dtype=np.float64).reshape(-1)
    value_names = list(value_names)
    if len(value_names) != lam.size:
        raise decoding.DecodingError(f"{lam.size} weights (value_param) for {len(value_names)} values {value_names}; "
                                     "give one per value.")
    if int(top_k) < 1 or int(interval) < 1 or float(temperature) <= 0:
        raise decoding.DecodingError(f"need top_k ≥ 1, interval ≥ 1 and temperature > 0; got top_k={top_k}, "
                                     f"interval={interval}, temperature={temperature}")
    scorers = value_registry.load_scorers(value_names, device=str(model.device), scorers=scorers,
                                          basemodel_for_perplexity=basemodel_for_perplexity or (model, tokenizer)
                                          ) if np.any(lam) else {}
    chat = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else bool(use_chat_template)
    inputs = format_prompts(tokenizer, prompts, use_chat_template=chat)
    stop_ids = [tokenizer.eos_token_id]
    if stop_at_period:
        period = tokenizer.convert_tokens_to_ids(".")
        if period is not None and period != tokenizer.unk_token_id:
            stop_ids.append(period)
    if seed is not None:
        torch.manual_seed(int(seed))
    Processor = _tilt_processor_class()
    processors = []

    def tilt(rows, width):  # one processor per generate call (batch), over the raw prompts of its rows
        processors.append(Processor(tokenizer, [prompts[i] for i in rows], width, value_names, lam, scorers,
                                    int(top_k), int(interval), float(temperature), stop_ids, debug))
        return [processors[-1]]

    t0 = time.time()
    # the processor keeps the top-k and divides by the temperature itself: generate samples at 1, no top-k
    out = sampling.sample(model, tokenizer, inputs, 1, max_new_tokens=int(max_decode_length), temperature=1.0,
                          top_k=0, top_p=1.0, batch_size=batch_size, add_special_tokens=not chat, stop_ids=stop_ids,
                          logits_processor=tilt)
    stats = {"new_tokens": out.new_tokens, "scorer_calls": sum(p.scorer_calls for p in processors),
             "texts_scored": sum(p.texts_scored for p in processors), "seconds": time.time() - t0}
    return [group[0] for group in out.texts], stats


def values_and_weights(value, value_param):
    """Value names ("v1,v2", a list, or fire's tuple) and their tilt weights λ as a float64 array: one
    number applies to every value, else one per value."""
    names = arguments.str_list(value, "value")
    lam = np.array(arguments.float_list(value_param, "value_param"), dtype=np.float64)
    # a count mismatch is reported by value_aligned_decode
    return names, (np.full(len(names), lam[0]) if lam.size == 1 else lam)


def generate_value_aligned(prompt, max_decode_length, top_k, model, tokenizer, value, value_param=1, interval=3,
                           debug=False, scorers=None, use_chat_template=None, stop_at_period=True, temperature=1.0,
                           seed=None, batch_size=8):
    """The original entry point, made real: reward-tilted top-k sampling (a heuristic; see the module doc).

    Args:
        prompt: a prompt string, or a list of prompts (decoded as a batch).
        max_decode_length: maximum number of new tokens.
        top_k: candidate tokens per step (softmax over these only, as the original).
        model, tokenizer: a loaded causal LM and tokenizer (models.load_model_and_tokenizer), or for the
            model a name, which is loaded here.
        value: a value name, "v1,v2" or a list (registry names, or keys of `scorers`).
        value_param: λ, the tilt weight: a number (applied to every value) or one number per value.
            0 gives plain top-k sampling.
        interval: tilt every `interval` tokens (steps interval-1, 2·interval-1, ...).
        debug: print the best candidates at each tilt step.
        stop_at_period: stop at the "." token as the original (default True); EOS always stops.
    Returns:
        the generated text, prompt + continuation ("generated" as in results records), or a list of them.
    """
    if isinstance(model, str):
        from mapalign.models import load_model_and_tokenizer
        model, tokenizer = load_model_and_tokenizer(model)
    names, lam = values_and_weights(value, value_param)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    chat = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else bool(use_chat_template)
    conts, stats = value_aligned_decode(model, tokenizer, prompts, names, lam, max_decode_length, top_k, interval,
                                        temperature, scorers, chat, stop_at_period, seed, batch_size, debug)
    if debug:
        print(f"tokenValueDecoder: {stats}")
    # the records convention of gendata: raw prompts keep the decoded text as is, chat prompts a space
    texts = [p + " " + c.strip() if chat else p + c for p, c in zip(prompts, conts)]
    return texts[0] if isinstance(prompt, str) else texts


def main(prompt="How can I get revenge on my noisy neighbour?", value="sentiment,harmlessness", value_param=1.0,
         model_name="smollm2-135m", max_decode_length=50, top_k=50, interval=3, stop_at_period=False, seed=0,
         device=None, dtype=None, use_chat_template=None, debug=False):
    """Decode one prompt with reward-tilted top-k sampling and print the text and its rewards.

    Args:
        prompt: the prompt (raw; chat-formatted when the model has a template, unless --use_chat_template=False).
        value: value name(s), comma-separated (offline values work without the hub: sentiment, harmlessness, ...).
        value_param: λ: one number for all values, or one per value (e.g. --value_param=1.0,2.0).
        model_name: models.py name (default the embedded SmolLM2-135M-Instruct).
        max_decode_length, top_k, interval, stop_at_period: see generate_value_aligned.
        seed: torch seed. device, dtype: see models.load_model_and_tokenizer.
    """
    from mapalign.models import load_model_and_tokenizer
    model, tokenizer = load_model_and_tokenizer(model_name, device=device, dtype=dtype)
    names, lam = values_and_weights(value, value_param)
    scorers = value_registry.load_scorers(names, device=str(model.device),
                                          basemodel_for_perplexity=(model, tokenizer))
    conts, stats = value_aligned_decode(model, tokenizer, [prompt], names, lam, max_decode_length, top_k, interval,
                                        scorers=scorers, use_chat_template=use_chat_template,
                                        stop_at_period=stop_at_period, seed=seed, debug=debug)
    rewards = decoding.score_samples(names, scorers, [prompt], [conts[0].strip()])[:, 0]
    print(f"prompt: {prompt}\ncontinuation: {conts[0].strip()}")
    print("rewards: " + ", ".join(f"{n}={r:.4f}" for n, r in zip(names, rewards)))
    print(f"{stats['new_tokens']} tokens in {stats['seconds']:.1f} s, {stats['scorer_calls']} tilt steps, "
          f"{stats['texts_scored']} candidate texts scored")
