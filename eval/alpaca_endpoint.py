"""An AlpacaEval judge behind an OpenAI-compatible endpoint (`--judge-url`, e.g. a vLLM server).

The judge gets the same pairwise prompt as a local judge, answers one token, and its
probability of "A" against "B" is read from the returned top log-probabilities (as
AlpacaEval's log-prob annotators do); an endpoint that returns no log-probabilities
counts its answer letter as certain. Plain HTTP with a timeout: no client library.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from typing import Dict, List, Optional

from sftmerge.errors import SftmergeError

TIMEOUT_S = 60.0


def _call(url: str, payload: Optional[Dict], timeout: float) -> Dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise SftmergeError(f"judge endpoint {url} did not answer ({type(e).__name__}: {str(reason)[:120]})") from None


def check_endpoint(base_url: str, timeout: float = 10.0) -> None:
    """GET BASE/models: an endpoint that does not answer is refused before any model is loaded."""
    _call(base_url.rstrip("/") + "/models", None, timeout)


def _p_first(reply: Dict) -> float:
    """P("A") / (P("A") + P("B")) from the first generated token's top log-probabilities."""
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise SftmergeError(f"judge endpoint: unexpected reply {str(reply)[:120]}") from None
    best = {"A": -math.inf, "B": -math.inf}
    content = ((choice.get("logprobs") or {}).get("content") or [])
    for entry in (content[0].get("top_logprobs") or [content[0]]) if content else []:
        letter = str(entry.get("token", "")).strip()
        if letter in best:
            best[letter] = max(best[letter], float(entry["logprob"]))
    if best["A"] == best["B"] == -math.inf:
        text = str((choice.get("message") or {}).get("content") or "").strip()[:1]
        return {"A": 1.0, "B": 0.0}.get(text, 0.5)
    m = max(best.values())
    a, b = math.exp(best["A"] - m), math.exp(best["B"] - m)
    return a / (a + b)


def p_first(base_url: str, model: str, prompts: List[str], timeout: float = TIMEOUT_S) -> List[float]:
    """Per prompt, the judge's probability of answering "A"."""
    url = base_url.rstrip("/") + "/chat/completions"
    out = []
    for prompt in prompts:
        reply = _call(url, {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                            "temperature": 0.0, "logprobs": True, "top_logprobs": 5}, timeout)
        out.append(_p_first(reply))
    return out
