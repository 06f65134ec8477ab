"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1 (started here) that fails
twice and then answers: retries, the cache on rerun, and the one error naming the URL."""
import http.server
import json
import threading

import pytest

from mapalign import openai_compat


class _Server:
    """A local endpoint: the first `fail_first` POSTs get HTTP 500 (or garbage), then it answers."""

    def __init__(self, fail_first=2, garbage=False):
        self.requests = []
        self.fail_first = fail_first
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, body, self.headers.get("Authorization")))
                if len(owner.requests) <= owner.fail_first:
                    if garbage:
                        self._send(200, b"<html>not json</html>")
                    else:
                        self._send(500, b'{"error": "warming up"}')
                    return
                if self.path.endswith("/chat/completions"):
                    last = body["messages"][-1]["content"]
                    choices = [{"index": i, "message": {"role": "assistant", "content": f"echo {last} {i}"}}
                               for i in range(body["n"])]
                else:
                    choices = [{"index": i, "text": f"{body['prompt']}+{body['temperature']}"} for i in range(body["n"])]
                self._send(200, json.dumps({"choices": choices}).encode())

            def _send(self, code, data):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_then_cache_hit_on_rerun(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    with _Server(fail_first=2) as server:
        client = openai_compat.Client(server.url, model="m", api_key_env="JUDGE_KEY", backoff=0.01,
                                      cache_dir=str(tmp_path / "cache"))
        assert client.chat("hello", temperature=0, n=2, seed=3, max_tokens=7) == ["echo hello 0", "echo hello 1"]
        assert len(server.requests) == 3 and client.stats["retries"] == 2
        path, body, auth = server.requests[-1]
        assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
        assert body == {"model": "m", "messages": [{"role": "user", "content": "hello"}], "temperature": 0.0,
                        "n": 2, "seed": 3, "max_tokens": 7}
        # a fresh client on the same cache pays nothing; a different payload does reach the server
        rerun = openai_compat.Client(server.url, model="m", backoff=0.01, cache_dir=str(tmp_path / "cache"))
        assert rerun.chat("hello", temperature=0, n=2, seed=3, max_tokens=7) == ["echo hello 0", "echo hello 1"]
        assert len(server.requests) == 3 and rerun.stats["cache_hits"] == 1
        assert rerun.completions("p", temperature=0.5) == ["p+0.5"]
        assert len(server.requests) == 4 and server.requests[-1][0] == "/v1/completions"
        assert "sk-test" not in "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))


def test_garbage_answers_are_retried(tmp_path):
    with _Server(fail_first=1, garbage=True) as server:
        client = openai_compat.Client(server.url, model="m", backoff=0.01)
        assert client.completions("x") == ["x+0.0"]
        assert len(server.requests) == 2


def test_down_server_gives_one_error_naming_the_url():
    with _Server(fail_first=99) as server:
        client = openai_compat.Client(server.url, model="m", max_tries=3, backoff=0.01)
        with pytest.raises(openai_compat.EndpointError, match=r"127\.0\.0\.1.*/v1/chat/completions: no valid "
                                                               r"answer after 3 tries.*HTTP 500"):
            client.chat("hi")
        assert len(server.requests) == 3


def test_map_concurrent_keeps_order_and_turns_failures_into_none():
    def f(x):
        if x == 3:
            raise openai_compat.EndpointError("down")
        return x * x
    assert openai_compat.map_concurrent(f, range(6), concurrency=3, errors="none") == [0, 1, 4, None, 16, 25]
    with pytest.raises(openai_compat.EndpointError):
        openai_compat.map_concurrent(f, range(6), concurrency=2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="base_url"):
        openai_compat.Client("localhost:8000")
    with pytest.raises(ValueError, match="model"):
        openai_compat.Client("http://127.0.0.1:1/v1").chat("x")
