"""A small client for OpenAI-compatible HTTP endpoints (a `vllm serve` server, Ollama, llama.cpp's
server, a hosted API): `/v1/chat/completions` and `/v1/completions`, standard library only.

What it adds over a bare POST, because judges and remote engines run for hours:
* bounded retries with exponential backoff on connection errors, timeouts, HTTP 408/409/429/5xx
  and answers that are not the expected JSON; after the last try one `EndpointError` names the
  URL, the number of tries and the last failure (other 4xx answers fail at once: retrying a bad
  request cannot help);
* an on-disk cache keyed by the endpoint path and the full request payload (model, messages or
  prompt, temperature, n, seed, max_tokens, ...), written atomically, so a rerun pays nothing twice;
* `map_concurrent`, a bounded thread pool that keeps the input order and can turn per-item failures
  into None (a judge that fails on one sample must not lose the whole batch);
* the API key is read from an environment variable (`OPENAI_API_KEY` unless told otherwise), never
  taken on the command line, and never written into the cache.

    client = Client("http://127.0.0.1:8000/v1", model="smollm2", cache_dir="results/cache/judge")
    texts = client.chat([{"role": "user", "content": "Hi"}], temperature=0, max_tokens=20)   # list of n texts
"""
import concurrent.futures
import hashlib
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request

from mapalign import records
from mapalign.errors import InputError

RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


class EndpointError(InputError, OSError):
    """An endpoint gave no usable answer after the allowed tries; the message names the URL."""


class Client:
    """An OpenAI-compatible endpoint.

    Args:
        base_url: the API root, e.g. "http://127.0.0.1:8000/v1" (a trailing "/" is ignored; a root
            without "/v1" is used as given).
        model: default model name for requests (each call may override it).
        api_key_env: environment variable holding the API key; unset or empty sends no
            Authorization header (local servers need none).
        timeout: seconds per HTTP request.
        max_tries: attempts per request (first try included), ≥ 1.
        backoff: seconds before the first retry; doubled after every failure, capped at max_backoff,
            with ±25% jitter so parallel workers do not retry in lockstep.
        cache_dir: folder of the on-disk answer cache; None disables it.
    """

    def __init__(self, base_url, model=None, api_key_env="OPENAI_API_KEY", timeout=60.0, max_tries=5,
                 backoff=1.0, max_backoff=30.0, cache_dir=None):
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise InputError(f"base_url must start with http:// or https://; got {base_url!r} "
                             "(e.g. --judge_base_url=http://127.0.0.1:8000/v1)")
        if int(max_tries) < 1:
            raise InputError(f"max_tries must be ≥ 1; got {max_tries}")
        self.base_url = str(base_url).rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_tries = int(max_tries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.cache_dir = cache_dir
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0}

    # -----------------------------------------------------------------------------------------
    # the two endpoints

    def chat(self, messages, model=None, temperature=0.0, n=1, seed=None, max_tokens=None, **extra):
        """POST /chat/completions. messages: a list of {"role", "content"} dicts, or a string (sent as
        one user message). Returns the list of the n answer texts (message content)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        payload = self._payload(model, temperature, n, seed, max_tokens, extra, messages=list(messages))
        answer = self.request("chat/completions", payload)
        return [c["message"]["content"] for c in answer["choices"]]

    def completions(self, prompt, model=None, temperature=0.0, n=1, seed=None, max_tokens=None, **extra):
        """POST /completions for one prompt string. Returns the list of the n completion texts."""
        payload = self._payload(model, temperature, n, seed, max_tokens, extra, prompt=str(prompt))
        answer = self.request("completions", payload)
        return [c["text"] for c in sorted(answer["choices"], key=lambda c: c.get("index", 0))]

    def _payload(self, model, temperature, n, seed, max_tokens, extra, **content):
        model = model or self.model
        if not model:
            raise InputError("no model name: pass model= (e.g. --judge_model=...) for the OpenAI-compatible endpoint "
                             f"{self.base_url}")
        payload = dict(model=model, **content, temperature=float(temperature), n=int(n))
        if seed is not None:
            payload["seed"] = int(seed)
        if max_tokens is not None:
            payload["max_tokens"] = int(max_tokens)
        payload.update(extra)
        return payload

    # -----------------------------------------------------------------------------------------
    # one request: cache, retries, validation

    def cache_path(self, endpoint, payload):
        """Cache file of a request: sha256 of the endpoint and the canonical JSON payload."""
        key = json.dumps({"endpoint": endpoint, "payload": payload}, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return os.path.join(self.cache_dir, digest[:2], digest + ".json")

    def request(self, endpoint, payload):
        """POST `payload` to `{base_url}/{endpoint}` and return the decoded JSON answer (a dict with a
        non-empty "choices" list). Served from the cache when present; stored there after success.
        Raises EndpointError naming the URL after max_tries failures."""
        path = self.cache_path(endpoint, payload) if self.cache_dir else None
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    answer = json.load(f)
                _check_answer(answer, endpoint)
                self.stats["cache_hits"] += 1
                return answer
            except (ValueError, KeyError, TypeError):
                pass  # a corrupt cache entry is refetched and overwritten
        url = f"{self.base_url}/{endpoint}"
        last = None
        for attempt in range(self.max_tries):
            if attempt:
                self.stats["retries"] += 1
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                time.sleep(delay * random.uniform(0.75, 1.25))
            try:
                self.stats["requests"] += 1
                answer = self._post(url, payload)
                _check_answer(answer, endpoint)
            except _Fatal as e:
                self.stats["failures"] += 1
                raise EndpointError(f"{url} refused the request: {e}") from None
            except (OSError, ValueError, KeyError, TypeError) as e:  # URLError, timeouts, 5xx, bad JSON
                last = e
                continue
            if path:
                records.write_text_atomic(json.dumps(answer, ensure_ascii=False), path)
            return answer
        self.stats["failures"] += 1
        raise EndpointError(f"{url}: no valid answer after {self.max_tries} tries (last error: "
                            f"{type(last).__name__}: {last}). Check that the server is running and serves model "
                            f"{payload.get('model')!r}.")

    def _post(self, url, payload):
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env or "", "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code in RETRY_STATUS:
                raise OSError(f"HTTP {e.code}: {detail}") from None
            raise _Fatal(f"HTTP {e.code}: {detail}") from None
        except socket.timeout:
            raise OSError(f"timed out after {self.timeout:g} s") from None
        return json.loads(body.decode("utf-8"))


class _Fatal(Exception):
    """A 4xx answer that a retry cannot fix (bad model name, malformed request, auth)."""


def _check_answer(answer, endpoint):
    """Raise ValueError unless `answer` has the fields the caller reads."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"answer has no 'choices': {str(answer)[:200]}")
    for c in choices:
        text = c["message"]["content"] if endpoint == "chat/completions" else c["text"]
        if not isinstance(text, str):
            raise ValueError(f"answer text is not a string: {str(c)[:200]}")


def map_concurrent(fn, items, concurrency=4, errors="raise", progress=False, desc="requests"):
    """[fn(x) for x in items] on at most `concurrency` threads, in input order.

    errors: "raise" re-raises the first failure; "none" puts None where fn raised (the caller counts
    and drops those). Threads suit HTTP calls, which wait on the network, not on Python.
    """
    from tqdm.auto import tqdm
    if errors not in ("raise", "none"):
        raise ValueError(f"errors must be 'raise' or 'none'; got {errors!r}")
    items = list(items)
    out = [None] * len(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(concurrency))) as pool:
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        for fut in tqdm(concurrent.futures.as_completed(futures), total=len(items), desc=desc, disable=not progress):
            try:
                out[futures[fut]] = fut.result()
            except Exception:
                if errors == "raise":
                    for f in futures:
                        f.cancel()
                    raise
    return out
