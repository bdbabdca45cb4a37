"""What a FACTORY turn is counted as against ``max_cost_usd``: droid's tokens at list prices.

Droid's stream-jsonrpc protocol reports tokens, never dollars: ``agent_turn_completed`` carries
the turn's ``tokenUsage`` (``inputTokens``, ``outputTokens``, ``cacheCreationTokens``,
``cacheReadTokens``, ``thinkingTokens``, and on Factory's plans ``factoryCredits``). Factory
bills its own plans in its own units, whose price in dollars the protocol does not say, so the
wrapper cannot know what a turn cost the operator. What it counts instead is an **estimate at the
model vendor's list prices** (USD per million tokens) of the model the session runs
(``settings.modelId`` of the session droid loaded or created), the same prices the LLM gateway
charges CLAUDE and CODEX workers with:

- Anthropic's families (rows as ``worker_manager.egress.pricing``): a cache write at 1.25 × the
  input price, a cache read at 0.1 ×;
- OpenAI's models (``worker_base.agents.openai_pricing``): a cache read at the cached-input
  price, a cache write at the input price;
- ``thinkingTokens`` at the output price, *on top of* ``outputTokens``: the protocol does not
  say whether output includes them, and counting them twice errs on the side of the budget;
- **a model no row matches is charged the most expensive row** (today ``gpt-5-pro``'s), so a
  budget stops a worker early rather than late (Factory's own model ids, e.g. ``custom:…``,
  land here);
- ``factoryCredits`` are passed through in the result's ``usage`` and not priced.

So for FACTORY, ``max_cost_usd`` bounds that estimate, checked after every turn: the turn that
crosses it finishes, and the next input is refused. A turn droid never completes (a timeout, a
cancel, a crash) reports no tokens and is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker_base.agents.openai_pricing import OPENAI_PRICES

PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


def _anthropic(input_usd: float, output_usd: float) -> TokenPrice:
    return TokenPrice(input_usd, output_usd, input_usd * 1.25, input_usd * 0.1)


#: Model substring → price, most specific first: the first substring found in the id wins.
FACTORY_PRICES: tuple[tuple[str, TokenPrice], ...] = (
    ("opus", _anthropic(15.0, 75.0)),
    ("sonnet", _anthropic(3.0, 15.0)),
    ("haiku-4", _anthropic(1.0, 5.0)),
    ("3-5-haiku", _anthropic(0.8, 4.0)),
    ("haiku-3-5", _anthropic(0.8, 4.0)),
    ("haiku", _anthropic(1.0, 5.0)),
    *(
        (family, TokenPrice(price.input, price.output, price.input, price.cached_input))
        for family, price in OPENAI_PRICES
    ),
)
#: What a model no row matches is charged: the most expensive row.
UNKNOWN_FACTORY_PRICE: TokenPrice = max(
    (price for _, price in FACTORY_PRICES), key=lambda p: (p.output, p.input)
)


def factory_price_of(model: str | None) -> TokenPrice:
    name = (model or "").lower()
    for family, price in FACTORY_PRICES:
        if family in name:
            return price
    return UNKNOWN_FACTORY_PRICE


def _count(usage: Mapping[str, object], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def factory_cost_usd(model: str | None, usage: Mapping[str, object]) -> float:
    """The estimate for one ``tokenUsage`` (the protocol's ``TokenUsage``)."""
    price = factory_price_of(model)
    return (
        _count(usage, "inputTokens") * price.input
        + (_count(usage, "outputTokens") + _count(usage, "thinkingTokens")) * price.output
        + _count(usage, "cacheCreationTokens") * price.cache_write
        + _count(usage, "cacheReadTokens") * price.cache_read
    ) / PER_MILLION
