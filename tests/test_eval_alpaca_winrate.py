"""AlpacaEval win rate and length-controlled win rate by alpaca-eval's own code, from a local
judge model or an OpenAI-compatible endpoint (a small HTTP server started here)."""

from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from tests.common import SHARED_DATA, error_line, needs_shared_data
from sftmerge.cli.main import main

LIMIT = 6  # AlpacaEval's GLM cross-validates over 5 folds: at least 5 prompts


def _eval(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


class _Judge(BaseHTTPRequestHandler):
    """Prefers the shorter response, with a confidence that grows with the length gap."""

    calls = 0

    def _reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply({"object": "list", "data": [{"id": "judge"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.calls += 1
        text = request["messages"][0]["content"]
        a = text.split("### Response A:\n")[1].split("### Response B:")[0]
        b = text.split("### Response B:\n")[1].split("Which response")[0]
        p_a = 1 / (1 + math.exp((len(a) - len(b)) / 200))
        top = [{"token": "A", "logprob": math.log(p_a)}, {"token": "B", "logprob": math.log(1 - p_a)}]
        self._reply({"choices": [{"message": {"role": "assistant", "content": "A" if p_a > 0.5 else "B"},
                                  "logprobs": {"content": [{"token": "A", "logprob": top[0]["logprob"],
                                                            "top_logprobs": top}]}}]})

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _check_alpaca_files(out, model_name):
    doc = json.loads((out / model_name / "alpaca.json").read_text())
    records = json.loads((out / model_name / "alpaca_eval" / "annotations.json").read_text())
    assert len(records) == LIMIT
    for r in records:
        assert {"instruction", "output_1", "output_2", "generator_1", "generator_2", "preference"} <= set(r)
        assert 1.0 <= r["preference"] <= 2.0 and r["generator_2"] == model_name
    # alpaca-eval re-scores the written annotations to the numbers in the result file.
    from alpaca_eval.metrics.winrate import get_winrate

    assert get_winrate(records)["win_rate"] == pytest.approx(doc["alpaca_eval"]["win_rate"])
    lc = doc["metrics"]["lc_win_rate"]
    assert 0 <= lc["value"] <= 1 and lc["value"] == pytest.approx(doc["alpaca_eval"]["length_controlled_winrate"] / 100)
    assert doc["alpaca_eval"]["glm"].startswith("length_controlled")
    return doc


@pytest.mark.slow
@needs_shared_data
def test_endpoint_judge_gives_lc_win_rate(tiny_chat_model, judge_url, tmp_path):
    out = tmp_path / "out"
    _Judge.calls = 0
    result = _eval("--models", tiny_chat_model, "--tasks", "alpaca", "--limit", LIMIT, "--max-new-tokens", 8,
                   "--backend", "hf", "--data-dir", SHARED_DATA, "--judge-url", judge_url, "--judge-model", "judge",
                   "--out", out)
    assert result.exit_code == 0, result.output
    doc = _check_alpaca_files(out, tiny_chat_model.name)
    assert _Judge.calls == 2 * LIMIT  # both orders of every prompt
    # 8-token answers against long references: a judge preferring short answers lets the model win.
    assert doc["metrics"]["win_rate"]["value"] > 0.5
    assert doc["judge"]["model"] == f"judge at {judge_url}"


@pytest.mark.slow
@needs_shared_data
def test_local_judge_gives_lc_win_rate(tiny_chat_model, tmp_path):
    out = tmp_path / "out"
    result = _eval("--models", tiny_chat_model, "--tasks", "alpaca", "--limit", LIMIT, "--max-new-tokens", 8,
                   "--backend", "hf", "--data-dir", SHARED_DATA, "--judge", tiny_chat_model, "--out", out)
    assert result.exit_code == 0, result.output
    _check_alpaca_files(out, tiny_chat_model.name)


def test_silent_endpoint_is_one_line_and_writes_nothing(tiny_chat_model, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    line = error_line(_eval("--models", tiny_chat_model, "--tasks", "alpaca", "--judge-url",
                            f"http://127.0.0.1:{port}/v1", "--out", out))
    assert "judge endpoint" in line and "did not answer" in line
    assert not out.exists()
