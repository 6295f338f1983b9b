"""What the rerank protocols share: one query against N texts, through the ``/v1/score`` path.

A rerank call becomes a ``ScoreRequest`` (item id = ``str(index)``, title = the text)
and is scored by ``runtime.score`` through the same deadline and disconnect helper as
``/v1/score``: same batcher, model, limits, admission and metrics. The protocol modules
(``rerank_tei``, ``rerank_cohere``) only translate bodies and errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Request

from service.calls import TIMEOUT_HEADER, requested_timeout, score_unless_disconnected
from service.errors import EmptyInput, TooManyItems
from service.runtime import Runtime, ScoredCall
from service.schemas import Item, ItemScore, ScoreRequest


@dataclass(frozen=True)
class RankedText:
    """One input text with its score; ``index`` is its position in the request."""

    index: int
    item: ItemScore


@dataclass(frozen=True)
class Reranked:
    ranked: list[RankedText]  # best first (score descending, ties in input order), cut to top_n
    call: ScoredCall  # every item in input order, with tokens and truncation flags
    model: str  # the served model's name


async def rerank(
    request: Request,
    query: str,
    texts: Sequence[str],
    *,
    top_n: int | None = None,
    truncate: bool | None = None,
) -> Reranked:
    """Score ``texts`` against ``query`` and rank them; ``top_n`` (None or 0: all) keeps the best.

    Raises the service's errors (``EmptyInput``, ``TooManyItems``, ``QueueFull``, ...); each
    protocol's error formatter gives them its status and body.
    """
    runtime: Runtime = request.app.state.runtime
    max_items = runtime.settings.max_items
    if not query.strip():
        raise EmptyInput("query must not be blank")
    if not texts:
        raise EmptyInput("no documents to rerank; send at least one")
    if len(texts) > max_items:
        raise TooManyItems(f"{len(texts)} documents; at most {max_items} per request")
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise EmptyInput(f"document {blank[0]} is blank ({len(blank)} blank in all); every document needs text")
    body = ScoreRequest(query=query, items=[Item(id=str(i), title=t) for i, t in enumerate(texts)])
    timeout = requested_timeout(request.headers.get(TIMEOUT_HEADER))
    call = await score_unless_disconnected(runtime, body, timeout, request, truncate=truncate)
    order = sorted(range(len(call.items)), key=lambda i: -call.items[i].score)
    if top_n:
        order = order[:top_n]
    return Reranked([RankedText(i, call.items[i]) for i in order], call, runtime.model_info()["name"])
