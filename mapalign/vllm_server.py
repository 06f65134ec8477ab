"""Start, list and stop a vLLM server (`vllm serve` from .venv-vllm, built by `make vllm`) on 127.0.0.1.

    python vllmServer.py start                       # the embedded SmolLM2 on a free port; prints its URL
    python vllmServer.py start --model_name=models/x --port=8000 --dtype=float32 --threads=2
    python vllmServer.py status
    python vllmServer.py stop --port=8000            # or: stop (all servers started here)

Then sample through it from any sampling stage, e.g.
    python gendata.py --engine=server --engine_url=http://127.0.0.1:8000/v1 ... generate_from_original_model

The server runs with the settings measured best on CPU (engines.ManagedServer: bf16 where the CPU has
native bf16 else float32, eager, no engine multiprocessing, all cores bound, tcmalloc preloaded,
max_num_batched_tokens 16384). `--engine=vllm` does this by itself for one job (start, use, stop); a
server started here outlives the command and serves many jobs. State files and logs live in
$MAP_CACHE_DIR/vllm-serve/ (default ~/.cache/map_toolkit/vllm-serve/).
"""
import json
import os

from mapalign import engines
from mapalign import records
from mapalign.models import DEFAULT_MODEL, cache_dir
from mapalign.errors import InputError


def state_dir():
    return os.path.join(cache_dir(), "vllm-serve")


def _states():
    """Servers started here: {port: state dict}, dropping state files of processes that are gone."""
    out = {}
    folder = state_dir()
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            os.remove(path)
            continue
        out[int(state["port"])] = state
    return out


class Server:
    """Manage vLLM servers on this machine."""

    def start(self, model_name=DEFAULT_MODEL, port=8000, dtype=None, threads=None, max_model_len=2048,
              kv_cache_gb=4, timeout=600):
        """Start `vllm serve` for model_name on 127.0.0.1:port and wait until it answers.

        Args:
            model_name: models.py name (the embedded SmolLM2 by default, served from its converted folder).
            port: TCP port on 127.0.0.1.
            dtype: "bfloat16" | "float32" | ...; default bf16 on CPUs with native bf16 (or a GPU), else float32.
            threads: CPU cores for vLLM's OpenMP pool (default all).
            max_model_len: longest prompt + continuation in tokens.
            kv_cache_gb: CPU KV-cache size (VLLM_CPU_KVCACHE_SPACE).
            timeout: seconds to wait for the server to answer.
        Returns the API root URL (pass it as --engine_url).
        """
        if int(port) in _states():
            raise InputError(f"a server started here already listens on port {port}; `python vllmServer.py stop "
                             f"--port={port}` first, or choose another --port")
        server = engines.ManagedServer(model_name, port=port, dtype=dtype, threads=threads,
                                       max_model_len=max_model_len, kv_cache_gb=kv_cache_gb, stop_at_exit=False)
        print(f"vllmServer: starting {model_name} on {server.url} (log {server.log_path}) ...")
        server.wait_ready(timeout)
        state = {"pid": server.pid, "port": server.port, "url": server.url, "model_name": model_name,
                 "location": server.location, "log": server.log_path, "command": server.command}
        records.save_json_atomic(state, os.path.join(state_dir(), f"{server.port}.json"), indent=2)
        print(f"vllmServer: ready. Use --engine=server --engine_url={server.url}; stop with "
              f"`python vllmServer.py stop --port={server.port}`")
        return server.url

    def status(self):
        """List the servers started here (port, pid, model, URL)."""
        states = _states()
        if not states:
            print("vllmServer: no server started here is running")
        for port, st in states.items():
            print(f"port {port}  pid {st['pid']}  model {st['model_name']}  {st['url']}  log {st['log']}")
        return sorted(states)

    def stop(self, port=None):
        """Stop the server on `port` (default: every server started here)."""
        states = _states()
        ports = sorted(states) if port is None else [int(port)]
        for p in ports:
            if p not in states:
                raise InputError(f"no server started here runs on port {p}; running: {sorted(states) or 'none'}")
            engines.stop_process_group(states[p]["pid"])
            os.remove(os.path.join(state_dir(), f"{p}.json"))
            print(f"vllmServer: stopped the server on port {p}")
        return ports
