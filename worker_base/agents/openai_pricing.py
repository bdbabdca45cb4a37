"""OpenAI's list prices for the models Codex runs, USD per million tokens: one table, two readers.

The LLM gateway (``worker_manager.egress.pricing``) charges a CODEX worker from the Responses
API's own ``usage`` with it (the spend its ``max_cost_usd`` is checked against), and the CODEX
driver (``worker_base.agents.codex``) prices the usage Codex reports for each input with the
same rows, for the result's ``cost_usd`` (Claude Code reports money itself; Codex reports only
tokens). It lives here, in the wrapper's package, because the wrapper cannot import the manager
while the manager may import the wrapper (it already does, for ``WrapperConfig``).

Rows are matched by a substring of the model id, most specific first (``gpt-5-mini`` before
``gpt-5``), so dated snapshots are priced without a table change. **An unknown model is charged
the most expensive row**, as for Anthropic: a budget that stops a worker early is noticed and
fixed with a row; one that lets a worker run past it is not noticed at all.

The Responses API counts ``input_tokens`` including ``input_tokens_details.cached_tokens`` (billed
at the cached price) and ``output_tokens`` including ``output_tokens_details.reasoning_tokens``
(billed as output): the cost is ``(input - cached) × input + cached × cached_input + output ×
output``.
"""

from __future__ import annotations

from dataclasses import dataclass

PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class OpenAIPrice:
    """USD per million tokens of one model family."""

    input: float
    cached_input: float
    output: float


#: Model substring → price, most specific first: the first substring found in the id wins.
OPENAI_PRICES: tuple[tuple[str, OpenAIPrice], ...] = (
    ("gpt-5-pro", OpenAIPrice(15.0, 15.0, 120.0)),
    ("gpt-5.2", OpenAIPrice(1.75, 0.175, 14.0)),
    ("codex-mini-latest", OpenAIPrice(1.5, 0.375, 6.0)),
    ("codex-mini", OpenAIPrice(0.25, 0.025, 2.0)),
    ("gpt-5-mini", OpenAIPrice(0.25, 0.025, 2.0)),
    ("gpt-5-nano", OpenAIPrice(0.05, 0.005, 0.4)),
    ("gpt-5", OpenAIPrice(1.25, 0.125, 10.0)),
    ("o4-mini", OpenAIPrice(1.1, 0.275, 4.4)),
    ("o3", OpenAIPrice(2.0, 0.5, 8.0)),
    ("gpt-4.1-mini", OpenAIPrice(0.4, 0.1, 1.6)),
    ("gpt-4.1", OpenAIPrice(2.0, 0.5, 8.0)),
    ("gpt-4o-mini", OpenAIPrice(0.15, 0.075, 0.6)),
    ("gpt-4o", OpenAIPrice(2.5, 1.25, 10.0)),
)
#: What a model no row matches is charged: the most expensive row.
UNKNOWN_OPENAI_PRICE: OpenAIPrice = max(
    (price for _, price in OPENAI_PRICES), key=lambda p: (p.output, p.input)
)


def openai_price_of(model: str | None) -> OpenAIPrice:
    """The price of ``model`` (an API model id such as ``gpt-5-codex``)."""
    name = (model or "").lower()
    for family, price in OPENAI_PRICES:
        if family in name:
            return price
    return UNKNOWN_OPENAI_PRICE


def openai_cost_usd(
    model: str | None, input_tokens: int, cached_tokens: int, output_tokens: int
) -> float:
    """What one usage costs; ``cached_tokens`` is the part of ``input_tokens`` read from cache
    (a count above the input is taken as all of it)."""
    price = openai_price_of(model)
    input_tokens, output_tokens = max(0, input_tokens), max(0, output_tokens)
    cached = min(max(0, cached_tokens), input_tokens)
    return (
        (input_tokens - cached) * price.input
        + cached * price.cached_input
        + output_tokens * price.output
    ) / PER_MILLION
