"""A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, ...).

Built on the official ``openai`` client, an optional dependency (``pip install
'lightning_aug_dpo[judge]'``) imported only when an :class:`OpenAIJudge` is made. The client does
the HTTP: connections, per-request timeouts, retries of 408/409/429/5xx replies, dropped and
refused connections and timeouts. This module maps the judge's settings onto it and adds what a
grading run needs: the judge's own backoff schedule (``Retry-After`` honoured, ``0`` included),
one retry budget shared with the replies the client accepts but that are no chat completion, a
key read at request time, and error messages with the key scrubbed out.

The API key is read from the environment variable named by ``api_key_env`` at each request and
handed to the client as its ``api_key`` (never the client's implicit ``OPENAI_API_KEY``, unless
that is the configured name). It travels in the ``Authorization`` header and nowhere else: not in
the cache key, not in :meth:`~OpenAIJudge.identity`, and it is scrubbed from every error message.
"""

from __future__ import annotations

import email.utils
import math
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from lightning_aug_dpo.eval.judges import ChatJudge, ChatReply, JudgeError, JudgeUnavailable

RETRY_STATUS = frozenset({408, 409, 425, 429})  # and every 5xx
INSTALL = "pip install 'lightning_aug_dpo[judge]'"


class NotChatReply(ValueError):
    """A reply with status 200 whose body is no chat completion; retried like an outage."""


def import_openai() -> ModuleType:
    """The ``openai`` package, or a :class:`JudgeError` that says how to install it."""
    try:
        import openai
    except ImportError as err:
        raise JudgeError(
            f"OpenAIJudge needs the openai package, which cannot be imported ({err}); install "
            f"it with: {INSTALL}"
        ) from None
    return openai


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


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a reply asks the client to wait (``retry-after-ms``, then ``Retry-After`` as
    seconds or an HTTP date), or ``None``."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if scale == 1.0 else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def root_cause(err: BaseException) -> str:
    """``"APIConnectionError (ConnectionRefusedError: ...)"``: the client's error and the lowest
    error under it, which says what went wrong (refused, reset, timed out)."""
    root, depth = err, 0
    while depth < 10 and (root.__cause__ or root.__context__) is not None:
        root, depth = (root.__cause__ or root.__context__), depth + 1  # type: ignore[assignment]
    if root is err:
        return f"{type(err).__name__}: {err}"
    return f"{type(err).__name__} ({type(root).__name__}: {root})"


class OpenAIJudge(ChatJudge):
    """Judge over ``POST {base_url}/chat/completions`` with the official ``openai`` client.

    Retries: a 429, a 5xx, a 408/409/425, a refused or dropped connection, a timeout or a reply
    that is not a chat completion is retried; ``max_retries`` bounds the retries of one request
    in all (the client's retries and the judge's together), then :class:`JudgeUnavailable`.
    Each wait is ``min(max_backoff, backoff * 2**retry)`` seconds scaled by a random factor in
    [0.5, 1], or the server's ``Retry-After`` (capped at ``max_backoff``) when it sends one. Any
    other 4xx (bad key, unknown model) raises :class:`JudgeError` at once. At most
    ``concurrency`` requests are in flight at a time (a semaphore; graders also size their thread
    pools by it).

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``.
        model: model name sent in each request (grade files record the model the server names).
        api_key_env: name of the environment variable holding the key; ``null`` or an unset
            variable means no key (local servers).
        timeout: seconds per request (connect, read, write each).
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
        import_openai()  # fail when the judge is configured, not hours later at the first grade
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
        self._local = threading.local()  # HTTP attempts of the request this thread is making
        self._clients: dict[int, Any] = {}  # openai clients by retry budget, made on first use
        self._clients_lock = threading.Lock()
        self.requests_sent = 0  # HTTP attempts, retries included (tests and logs)

    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def label(self) -> str:
        return f"openai:{self.name}"

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "api_key_env": self.api_key_env}

    def _key(self) -> str:
        return (os.environ.get(self.api_key_env) or "") if self.api_key_env else ""

    def _request_key(self) -> str:
        # The client's key provider: the key this thread read when its request began, so that
        # the header decision and the header agree even if the variable changes meanwhile.
        return getattr(self._local, "key", "")

    def _scrub(self, text: str) -> str:
        # The key this request sent and the one in the environment now (if it was rotated).
        for key in (getattr(self._local, "key", ""), self._key()):
            text = text.replace(key, "***") if key else text
        return text

    def _delay(self, retry: int, wait: float | None) -> float:
        if wait is not None:
            return min(self.max_backoff, wait)
        return min(self.max_backoff, self.backoff * 2**retry) * random.uniform(0.5, 1.0)

    def _on_request(self, request: Any) -> None:
        # An httpx event hook: runs in the calling thread for every attempt, retries included.
        self._local.sent = getattr(self._local, "sent", 0) + 1
        with self._count_lock:
            self.requests_sent += 1

    def _client(self, max_retries: int) -> Any:
        with self._clients_lock:
            if max_retries not in self._clients:
                self._clients[max_retries] = self._make_client(max_retries)
            return self._clients[max_retries]

    def _make_client(self, max_retries: int) -> Any:
        openai = import_openai()
        judge = self
        shared = next(iter(self._clients.values()), None)

        class JudgeClient(openai.OpenAI):  # type: ignore[misc, name-defined]
            # The client's own schedule (0.5 s doubling to 8 s; Retry-After 0 ignored) would
            # override the judge's configured backoff; this keeps one schedule for all retries.
            def _calculate_retry_timeout(
                self, remaining_retries: int, options: Any, response_headers: Any = None
            ) -> float:
                return judge._delay(judge._local.sent - 1, retry_after(response_headers))

        http = shared._client if shared is not None else None
        if http is None:
            http = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]})
        return JudgeClient(
            api_key=self._request_key,  # a callable, so never $OPENAI_API_KEY implicitly
            admin_api_key="",  # chat needs none; "" keeps $OPENAI_ADMIN_KEY out of the client
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=max_retries,
            http_client=http,
        )

    def close(self) -> None:
        """Close the HTTP connections (a later request opens new ones)."""
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        if clients:
            clients[0].close()  # they share one connection pool

    def chat(
        self, messages: list[dict[str, str]], temperature: float, max_tokens: int, seed: int
    ) -> ChatReply:
        openai = import_openai()
        body: dict[str, Any] = {
            "model": self.name,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if self.send_seed:
            body["seed"] = seed
        attempts = self.max_retries + 1
        self._local.sent = 0
        self._local.key = self._key()
        # A local server without a key: send no Authorization header at all.
        headers = None if self._local.key else {"Authorization": openai.Omit()}
        last = ""
        for turn in range(attempts):
            wait: float | None = None
            try:
                with self._slots:
                    client = self._client(attempts - max(self._local.sent, turn) - 1)
                    raw = client.chat.completions.with_raw_response.create(
                        **body, extra_headers=headers
                    )
                return self._reply(raw)
            except openai.APIStatusError as err:
                # Scrub, then cut: a cut first could keep most of an echoed key, unscrubbed.
                detail = self._scrub(err.response.text)[:300]
                code = err.status_code
                if code not in RETRY_STATUS and code < 500:
                    hint = " (set the key's environment variable)" if code in (401, 403) else ""
                    env = f" from ${self.api_key_env}" if self.api_key_env else ""
                    raise JudgeError(
                        f"{self.endpoint()}: HTTP {code} for model {self.name!r}{hint}; key "
                        f"read{env}: {detail}"
                    ) from None
                last, wait = f"HTTP {code}: {detail}", retry_after(err.response.headers)
            except openai.APIConnectionError as err:  # refused, dropped, timed out
                last = self._scrub(root_cause(err))[:300]
            except NotChatReply as err:  # a 200 that is no chat completion
                last = f"ValueError: {err}"
            sent = max(self._local.sent, turn + 1)
            if sent >= attempts:
                break
            time.sleep(self._delay(sent - 1, wait))
        raise JudgeUnavailable(
            f"{self.endpoint()}: no usable reply after {max(self._local.sent, 1)} attempts; last "
            f"error {last}; the judge is down or overloaded, try again later (replies so far are "
            "cached)"
        )

    def _reply(self, raw: Any) -> ChatReply:
        """The text and model of a raw chat-completion reply; :class:`NotChatReply` (scrubbed)
        if the body is no chat completion (HTML from a proxy, an error object with status 200)."""
        try:
            completion = raw.parse()
            text = completion.choices[0].message.content
            model = completion.model
        except (ValueError, AttributeError, IndexError, KeyError, TypeError):
            shown = self._scrub(raw.http_response.text)[:200]  # scrub before the cut (see chat)
            raise NotChatReply(f"not a chat-completion reply: {shown}") from None
        return ChatReply(text if isinstance(text, str) else "", str(model or self.name))
