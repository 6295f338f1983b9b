"""Hugging Face text-embeddings-inference (TEI) rerank protocol: ``POST /rerank``.

Clients written for TEI (LangChain/LlamaIndex TEI rerankers, Haystack, and
Elasticsearch's ``hugging_face`` rerank service) can point at this service unchanged.

* Request: ``{query, texts, raw_scores?, return_text?, truncate?, truncation_direction?}``.
  Elasticsearch's ``hugging_face`` rerank service posts ``{query, documents, top_n?,
  return_documents?}`` instead, so ``documents``, ``top_n`` and ``return_documents`` are
  accepted as well. Unknown fields are ignored, as TEI (serde) does.
* Response: a JSON list of ``{index, score, text?}``, best first, and nothing else:
  Elasticsearch's parser fails on any field it does not know, so the grade probabilities
  are not added here (``/v1/rerank`` and ``/v1/score`` carry them).
* ``score``: the service's relevance score, the expected grade in [0, 1] (the same number
  as ``/v1/score``'s ``score``). TEI's ``score`` is ``sigmoid(logit)``; with
  ``raw_scores: true`` TEI returns the logit, so here ``raw_scores: true`` returns
  ``logit(score) = ln(score / (1 - score))``: ``sigmoid(raw) == score`` as in TEI, same order.
* ``truncate``: absent or null follows ``DARL_AUTO_TRUNCATE`` (TEI follows ``--auto-truncate``
  the same way); ``true`` cuts long text to fit; ``false`` refuses any text that would be cut
  (over the character limits or the model's max length) with 413 ``Validation``, as TEI does.
  ``truncation_direction: "Left"`` is refused (422): the service always keeps the query and
  the start of each text.
* Errors: TEI's body ``{"error": "...", "error_type": "..."}`` with TEI's status per type
  (router/src/http/server.rs): ``Empty`` 400, ``Validation`` 413, ``Tokenizer`` 422,
  ``Backend`` 424, ``Overloaded`` 429, ``Unhealthy`` 503. A body that does not parse is 422
  (axum's status for it) or 400 for malformed JSON, with ``error_type`` ``Validation``.
  401, 415 and 504 keep the service's status.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.calls import require_json
from service.errors import (
    DeadlineTooShort,
    EmptyInput,
    EngineError,
    ErrorInfo,
    InputTooLong,
    NotReady,
    QueueFull,
    TooManyItems,
)
from service.rerank_common import rerank

TeiErrorType = Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]
_RAW_EPS = 1e-7  # keeps logit(score) finite for a score of exactly 0 or 1


class TeiRerankRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "query": "angle bracket",
                    "texts": ["Simpson Strong-Tie 12-Gauge Angle", "BEHR Premium 1-gal. Deep Base Paint"],
                    "return_text": True,
                }
            ]
        },
    )

    query: str = Field(description="the search query; not blank")
    texts: list[str] | None = Field(
        None, description="the texts to rank, at most DARL_MAX_ITEMS; required unless `documents` is sent"
    )
    documents: list[str] | None = Field(
        None, description="the same as `texts` (the name Elasticsearch's hugging_face rerank service sends)"
    )
    raw_scores: bool = Field(False, description="true: logit(score) instead of the score in [0, 1]")
    return_text: bool = Field(False, description="echo each text in the result")
    return_documents: bool | None = Field(None, description="the same as `return_text` (Elasticsearch)")
    truncate: bool | None = Field(
        None,
        description="null: DARL_AUTO_TRUNCATE; true: cut long text to fit; false: refuse text that would be cut (413)",
    )
    truncation_direction: Literal["Right", "Left"] = Field(
        "Right", description="only Right: the service keeps the query and the start of each text"
    )
    top_n: int | None = Field(None, ge=0, description="keep the best N (Elasticsearch sends it); null or 0: all")

    @model_validator(mode="after")
    def _supported(self) -> TeiRerankRequest:
        if (self.texts is None) == (self.documents is None):
            raise ValueError("send the texts to rank as `texts` (or `documents`), exactly one of them")
        if self.truncation_direction == "Left":
            raise ValueError("truncation_direction 'Left' is not supported; the service cuts the end of each text")
        return self


class TeiRank(BaseModel):
    index: int = Field(description="position of the text in the request")
    score: float = Field(description="expected relevance grade in [0, 1]; logit of it with raw_scores")
    text: str | None = Field(None, description="the text, with return_text (or return_documents)")


class TeiErrorResponse(BaseModel):
    error: str
    error_type: TeiErrorType


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": TeiErrorResponse, "description": description}
    for status, description in {
        400: "Empty: blank query, no texts or a blank text; malformed JSON",
        401: "missing or invalid bearer token (DARL_API_KEY)",
        413: "Validation: more texts than DARL_MAX_ITEMS, a body over DARL_MAX_BODY_BYTES, text too long "
        "with truncate=false, or more texts than fit the deadline",
        415: "Content-Type is not application/json",
        422: "Validation: a body that does not match the schema, or an unsupported option",
        424: "Backend: the engine failed",
        429: "Overloaded: queue full; see Retry-After",
        503: "Unhealthy: the model is loading or the engine died",
        504: "Backend: deadline exceeded",
    }.items()
}

router = APIRouter(tags=["rerank"])


@router.post(
    "/rerank",
    response_model=list[TeiRank],
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_json)],
    summary="Rerank texts for a query (Hugging Face text-embeddings-inference protocol)",
)
async def rerank_tei(body: TeiRerankRequest, request: Request) -> list[TeiRank]:
    texts = body.texts if body.texts is not None else body.documents
    assert texts is not None  # the validator guarantees one of them
    reranked = await rerank(request, body.query, texts, top_n=body.top_n, truncate=body.truncate)
    with_text = body.return_text or bool(body.return_documents)
    return [
        TeiRank(
            index=r.index,
            score=_logit(r.item.score) if body.raw_scores else r.item.score,
            text=texts[r.index] if with_text else None,
        )
        for r in reranked.ranked
    ]


def _logit(p: float) -> float:
    p = min(max(p, _RAW_EPS), 1 - _RAW_EPS)
    return math.log(p / (1 - p))


def error_response(info: ErrorInfo) -> Response:
    """TEI's error body, with TEI's status for each error type."""
    status, error_type = _status_and_type(info)
    body = {"error": info.message, "error_type": error_type}
    return JSONResponse(body, status_code=status, headers=info.headers or None)


def _status_and_type(info: ErrorInfo) -> tuple[int, TeiErrorType]:
    err = info.error
    if isinstance(err, EmptyInput):
        return 400, "Empty"
    if isinstance(err, TooManyItems | InputTooLong | DeadlineTooShort) or info.type == "payload_too_large":
        return 413, "Validation"
    if isinstance(err, QueueFull):
        return 429, "Overloaded"
    if isinstance(err, EngineError):
        return 424, "Backend"
    if isinstance(err, NotReady):
        return 503, "Unhealthy"
    return info.status, "Backend" if info.status >= 500 else "Validation"
