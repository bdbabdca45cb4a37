"""What the LLM gateway charges a worker: Anthropic's and OpenAI's list prices, USD per million
tokens.

OpenAI's table is ``worker_base.agents.openai_pricing`` (the CODEX driver prices Codex's own
usage reports with the same rows, and the wrapper cannot import the manager); this module adds
:class:`OpenAIUsage`, the Responses API's ``usage`` as the gateway meters it. The rest of this
docstring is Anthropic's.

The gateway meters each response from the API's own ``usage`` and adds its cost to the worker's
spend, which its ``max_cost_usd`` is checked against. The table is matched by model *family*, a
substring of the model id (``claude-sonnet-4-5-20250929`` is ``sonnet``), most specific first,
so dated snapshots and new minor versions of a family are priced without a table change.

**An unknown model is charged the most expensive known price.** A budget is a promise to the
operator that a worker spends at most that much; charging an unknown (new, or misspelled) model
too much stops a worker early, which an operator notices and fixes by adding a row, while
charging it too little would let a worker run past its budget unnoticed.

Cache writes are priced as Anthropic prices them: a 5-minute cache write at 1.25 × the input
price, a 1-hour write (``usage.cache_creation.ephemeral_1h_input_tokens``) at 2 ×, a cache read
at 0.1 ×. Sonnet 4.x requests whose prompt (input, cache write and cache read together) exceeds
200 000 tokens, possible with the 1M-context beta, are charged the API's long-context rate
(input 2 ×, output 1.5 ×).

Server tools (web search, web fetch, code execution) are refused by the gateway before the API
(:mod:`worker_manager.egress.routes`), so an answer should never report any. Should one get
through all the same, every request its ``usage.server_tool_use`` counts is charged at web
search's fee (:data:`SERVER_TOOL_REQUEST_USD`, the dearest per-request fee): more, not less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker_base.agents.openai_pricing import (
    OPENAI_PRICES,
    UNKNOWN_OPENAI_PRICE,
    OpenAIPrice,
    openai_cost_usd,
    openai_price_of,
)

__all__ = [
    "LONG_CONTEXT_TOKENS",
    "OPENAI_PRICES",
    "PRICES",
    "SERVER_TOOL_REQUEST_USD",
    "UNKNOWN_MODEL_PRICE",
    "UNKNOWN_OPENAI_PRICE",
    "OpenAIPrice",
    "OpenAIUsage",
    "Price",
    "Usage",
    "openai_price_of",
    "price_of",
]

PER_MILLION = 1_000_000
#: What each server-tool request an answer reports costs (web search: 10 USD per 1 000).
SERVER_TOOL_REQUEST_USD = 0.01


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of one model family."""

    input: float
    output: float
    #: The price once a prompt exceeds ``LONG_CONTEXT_TOKENS`` (None: the same price).
    long_context: Price | None = None

    @property
    def cache_write(self) -> float:
        """A 5-minute cache write (the API's default ``cache_control``)."""
        return self.input * 1.25

    @property
    def cache_write_1h(self) -> float:
        return self.input * 2.0

    @property
    def cache_read(self) -> float:
        return self.input * 0.1


#: Family substring → price, most specific first (``haiku-4-5`` before ``haiku-3-5`` before
#: ``haiku``): the first substring found in the model id wins.
PRICES: tuple[tuple[str, Price], ...] = (
    ("opus", Price(15.0, 75.0)),
    ("sonnet-4", Price(3.0, 15.0, long_context=Price(6.0, 22.5))),
    ("sonnet", Price(3.0, 15.0)),
    ("haiku-4-5", Price(1.0, 5.0)),
    ("haiku-4", Price(1.0, 5.0)),
    ("3-5-haiku", Price(0.8, 4.0)),
    ("haiku-3-5", Price(0.8, 4.0)),
    ("3-haiku", Price(0.25, 1.25)),
    ("haiku-3", Price(0.25, 1.25)),
)
#: What a model no row matches is charged: the most expensive row (see the module docstring).
UNKNOWN_MODEL_PRICE: Price = max((p for _, p in PRICES), key=lambda p: (p.output, p.input))
#: Past this many prompt tokens a request is priced at its model's ``long_context`` rate.
LONG_CONTEXT_TOKENS = 200_000


def price_of(model: str | None) -> Price:
    """The price of ``model`` (an API model id such as ``claude-opus-4-1-20250805``)."""
    name = (model or "").lower()
    for family, price in PRICES:
        if family in name:
            return price
    return UNKNOWN_MODEL_PRICE


@dataclass(slots=True)
class Usage:
    """The tokens of one response, as the API's ``usage`` reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    #: Of ``cache_creation_input_tokens``, those written to the 1-hour cache (priced higher).
    cache_creation_1h_tokens: int = 0
    #: Server-tool requests (``usage.server_tool_use``, every kind together).
    server_tool_requests: int = 0
    model: str | None = None

    def update(self, usage: Any) -> None:
        """Take the counts present in a ``usage`` object; later reports supersede earlier ones
        (the usage of ``message_delta`` is cumulative for the message)."""
        if not isinstance(usage, dict):
            return
        for field in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = usage.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, field, value)
        creation = usage.get("cache_creation")
        if isinstance(creation, dict):
            hour = creation.get("ephemeral_1h_input_tokens")
            if isinstance(hour, int) and not isinstance(hour, bool) and hour >= 0:
                self.cache_creation_1h_tokens = hour
        tools = usage.get("server_tool_use")
        if isinstance(tools, dict):
            self.server_tool_requests = sum(
                count for count in map(_count, tools.values()) if count is not None
            )

    @property
    def empty(self) -> bool:
        return not (
            self.input_tokens
            or self.output_tokens
            or self.cache_creation_input_tokens
            or self.cache_read_input_tokens
            or self.server_tool_requests
        )

    def counts(self) -> dict[str, int]:
        """What this usage adds to the integer fields of the worker's usage hash."""
        counts = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }
        if self.server_tool_requests:
            counts["server_tool_requests"] = self.server_tool_requests
        return counts

    def cost_usd(self) -> float:
        price = price_of(self.model)
        prompt = self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
        if price.long_context is not None and prompt > LONG_CONTEXT_TOKENS:
            price = price.long_context
        hour = min(self.cache_creation_1h_tokens, self.cache_creation_input_tokens)
        minutes = self.cache_creation_input_tokens - hour
        return (
            self.input_tokens * price.input
            + self.output_tokens * price.output
            + minutes * price.cache_write
            + hour * price.cache_write_1h
            + self.cache_read_input_tokens * price.cache_read
        ) / PER_MILLION + self.server_tool_requests * SERVER_TOOL_REQUEST_USD


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(slots=True)
class OpenAIUsage:
    """The tokens of one Responses API answer, as its ``usage`` reports them: ``input_tokens``
    includes the ``cached_tokens`` read from the prompt cache, ``output_tokens`` the
    ``reasoning_tokens`` (both billed as output)."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    model: str | None = None

    def update(self, usage: Any) -> None:
        """Take the counts present in a ``usage`` object (the final one supersedes)."""
        if not isinstance(usage, dict):
            return
        for field in ("input_tokens", "output_tokens"):
            value = _count(usage.get(field))
            if value is not None:
                setattr(self, field, value)
        for details, key, field in (
            ("input_tokens_details", "cached_tokens", "cached_tokens"),
            ("output_tokens_details", "reasoning_tokens", "reasoning_tokens"),
        ):
            inner = usage.get(details)
            value = _count(inner.get(key)) if isinstance(inner, dict) else None
            if value is not None:
                setattr(self, field, value)

    @property
    def empty(self) -> bool:
        return not (self.input_tokens or self.output_tokens)

    def counts(self) -> dict[str, int]:
        """The usage hash's fields: input without the cached part, as Anthropic's counts are."""
        cached = min(self.cached_tokens, self.input_tokens)
        return {
            "input_tokens": self.input_tokens - cached,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": cached,
            "reasoning_tokens": self.reasoning_tokens,
        }

    def cost_usd(self) -> float:
        return openai_cost_usd(
            self.model, self.input_tokens, self.cached_tokens, self.output_tokens
        )
