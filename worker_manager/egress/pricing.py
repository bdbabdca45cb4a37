"""What the LLM gateway charges a worker: Anthropic's list prices, in USD per million tokens.

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
(input 2 ×, output 1.5 ×). Per-request server-tool fees (web search) are not metered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PER_MILLION = 1_000_000


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

    @property
    def empty(self) -> bool:
        return not (
            self.input_tokens
            or self.output_tokens
            or self.cache_creation_input_tokens
            or self.cache_read_input_tokens
        )

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
        ) / PER_MILLION
