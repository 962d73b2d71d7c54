"""A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, ...).

Standard library only (``urllib``). The API key is read from the environment variable named by
``api_key_env`` at request time; it is sent in the ``Authorization`` header and nowhere else: not
in the cache key, not in :meth:`identity`, and it is scrubbed from every error message.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from lightning_aug_dpo.eval.judges import ChatJudge, ChatReply, JudgeError, JudgeUnavailable

RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx


def refuse_credentials(base_url: str) -> str:
    """``base_url`` unless it carries a user, password or query string: the URL is recorded in
    ``config.yaml``, grade files and logs, so a key in it would be written everywhere."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.username or parts.password or parts.query:
        raise ValueError(
            "the judge's base_url carries credentials or a query string, and would write them "
            "to config.yaml and the grade files; give the bare endpoint (e.g. "
            "https://api.openai.com/v1) and the key through the environment variable named by "
            "api_key_env"
        )
    return base_url


class OpenAIJudge(ChatJudge):
    """Judge over HTTP ``POST {base_url}/chat/completions``.

    Retries: a 429, a 5xx, a 408/409/425, a refused or dropped connection, a timeout or a reply
    that is not a chat-completion JSON is retried up to ``max_retries`` times, waiting
    ``min(max_backoff, backoff * 2**attempt)`` seconds scaled by a random factor in [0.5, 1]
    (or the server's ``Retry-After`` when it sends one); then :class:`JudgeUnavailable`. Any other
    4xx (bad key, unknown model) raises :class:`JudgeError` at once. At most ``concurrency``
    requests are in flight at a time (a semaphore; graders also size their thread pools by it).

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        model: model name sent in each request (recorded in grade files as the server echoes it).
        api_key_env: name of the environment variable holding the key; unset means no key
            (local servers).
        timeout: seconds per request (connect + read).
        max_retries: retries after the first attempt.
        backoff: first retry delay in seconds; doubles each retry.
        max_backoff: cap on one delay.
        concurrency: requests in flight at most.
        send_seed: send the grading-run index as ``seed`` (OpenAI, vLLM and SGLang accept it).
        **kwargs: prompt files, cache and protocol options of :class:`ChatJudge`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        concurrency: int = 4,
        send_seed: bool = True,
        mmvet_prompt_file: str | None = None,
        llava_rule_file: str | None = None,
        cache_path: str | None = None,
        max_attempts: int = 5,
        llava_temperature: float = 0.2,
        llava_max_tokens: int = 1024,
    ) -> None:
        super().__init__(
            mmvet_prompt_file,
            llava_rule_file,
            cache_path,
            max_attempts,
            llava_temperature,
            llava_max_tokens,
        )
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("concurrency >= 1, max_retries >= 0 and timeout > 0 are required")
        self.base_url = refuse_credentials(base_url).rstrip("/")
        self.name = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self.send_seed = send_seed
        self._slots = threading.BoundedSemaphore(concurrency)
        self._count_lock = threading.Lock()
        self.requests_sent = 0  # HTTP attempts, retries included (tests and logs)

    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "api_key_env": self.api_key_env}

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def chat(
        self, messages: list[dict[str, str]], temperature: float, max_tokens: int, seed: int
    ) -> ChatReply:
        body: dict[str, Any] = {
            "model": self.name,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if self.send_seed:
            body["seed"] = seed
        data = json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1, last))
            try:
                with self._slots:
                    with self._count_lock:
                        self.requests_sent += 1
                    payload = self._post(data)
                return self._reply(payload)
            except urllib.error.HTTPError as err:
                # Scrub, then cut: a cut first could keep most of an echoed key, unscrubbed.
                detail = self._scrub(err.read().decode("utf-8", "replace"))[:300]
                if err.code not in RETRY_STATUS and err.code < 500:
                    hint = " (set the key's environment variable)" if err.code in (401, 403) else ""
                    env = f" from ${self.api_key_env}" if self.api_key_env else ""
                    raise JudgeError(
                        f"{self.endpoint()}: HTTP {err.code} for model {self.name!r}{hint}; key "
                        f"read{env}: {detail}"
                    ) from None
                retry_after = err.headers.get("Retry-After") if err.headers else None
                last = f"HTTP {err.code}: {detail}|{retry_after or ''}"
            except (OSError, http.client.HTTPException, ValueError) as err:
                # URLError, timeouts, refused/reset connections, torn or non-JSON bodies.
                last = f"{type(err).__name__}: {self._scrub(str(err))[:300]}|"
        raise JudgeUnavailable(
            f"{self.endpoint()}: no usable reply after {self.max_retries + 1} attempts; last "
            f"error {last.rsplit('|', 1)[0]}; the judge is down or overloaded, try again later "
            "(replies so far are cached)"
        )

    def _delay(self, retry: int, last: str) -> float:
        retry_after = last.rsplit("|", 1)[-1]
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to exponential backoff
        return min(self.max_backoff, self.backoff * 2**retry) * random.uniform(0.5, 1.0)

    def _post(self, data: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint(), data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def _reply(self, payload: Any) -> ChatReply:
        try:
            text = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            shown = self._scrub(str(payload))[:200]  # scrub before the cut (see chat)
            raise ValueError(f"not a chat-completion reply: {shown}") from err
        model = payload.get("model") or self.name
        return ChatReply(text if isinstance(text, str) else "", str(model))
