"""Cohere / Jina / vLLM rerank protocol: ``POST /v1/rerank`` and ``POST /v2/rerank``.

The cohere SDK (``Client.rerank`` → ``/v1/rerank``, ``ClientV2.rerank`` → ``/v2/rerank``),
LangChain's and LlamaIndex's ``CohereRerank``, Jina clients (``/v1/rerank``) and anything
written for vLLM's rerank endpoints can point at this service.

* Request: ``{model?, query, documents: [string | {text, ...}], top_n?, return_documents?}``.
  ``model``, ``max_tokens_per_doc``, ``max_chunks_per_doc`` and ``priority`` are accepted
  and ignored (one model is served; each document is cut to the model's max length, never
  chunked). ``rank_fields`` other than ``["text"]`` is refused (400). Unknown fields are
  ignored, as vLLM does.
* Response: ``{id, model, results: [{index, relevance_score, document?, probs, label}],
  meta, usage}``, best first. One body every client parses: the cohere SDK's
  ``RerankResponse``/``V2RerankResponse`` (its models allow extra fields), Jina's
  (``model``, ``usage.total_tokens``, ``results[].document.text``) and vLLM's
  (``id``, ``model``, ``usage.{prompt_tokens,total_tokens}``, ``results[].document``).
  ``document`` is returned unless ``return_documents: false`` (Jina's and vLLM's default;
  Cohere v1 clients that do not ask simply ignore it), with every field of a ``{text, ...}``
  document preserved as Cohere v1 does.
* ``relevance_score``: the service's ``score``, the expected grade in [0, 1], as
  ``/v1/score`` returns it; ``probs`` and ``label`` are the three grade probabilities and
  the most probable grade.
* Errors: Cohere's body ``{"id": ..., "message": ...}``; a body that does not match the
  schema is 400 (Cohere's status for an invalid request), everything else keeps the
  service's status (400, 401, 413, 415, 422, 429, 499, 503, 504).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.calls import require_json
from service.errors import ErrorInfo
from service.rerank_common import rerank
from service.schemas import Probs


class CohereDocument(BaseModel):
    """A document as an object: ``text`` is ranked, other fields are echoed back."""

    model_config = ConfigDict(extra="allow")

    text: str


class CohereRerankRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "darl",
                    "query": "angle bracket",
                    "documents": ["Simpson Strong-Tie 12-Gauge Angle", {"text": "BEHR Premium 1-gal. Deep Base Paint"}],
                    "top_n": 2,
                }
            ]
        },
    )

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    query: str = Field(description="the search query; not blank")
    documents: list[str | CohereDocument] = Field(
        description="strings or {text, ...} objects, at most DARL_MAX_ITEMS; empty or blank text is refused"
    )
    top_n: int | None = Field(None, ge=0, description="keep the best N; null or 0: all")
    return_documents: bool | None = Field(None, description="echo the documents; default true (Jina, vLLM)")
    rank_fields: list[str] | None = Field(None, description='only ["text"] (or null): other fields are not ranked')
    max_tokens_per_doc: int | None = Field(None, description="accepted and ignored: text is cut to the model")
    max_chunks_per_doc: int | None = Field(None, description="accepted and ignored: documents are not chunked")
    priority: int | None = Field(None, description="accepted and ignored")

    @model_validator(mode="after")
    def _supported(self) -> CohereRerankRequest:
        if self.rank_fields not in (None, ["text"]):
            raise ValueError('rank_fields is not supported: only the "text" field of a document is ranked')
        return self


class ResultDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str


class CohereResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="expected relevance grade in [0, 1] (/v1/score's score)")
    document: ResultDocument | None = Field(None, description="the document, unless return_documents is false")
    probs: Probs = Field(description="probability of each relevance grade")
    label: str = Field(description="the most probable grade")


class ApiVersion(BaseModel):
    version: str


class MetaTokens(BaseModel):
    input_tokens: int


class CohereMeta(BaseModel):
    api_version: ApiVersion
    tokens: MetaTokens
    warnings: list[str] | None = Field(None, description="what was cut to fit, if anything")


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str = Field(description="the request id (X-Request-Id)")
    model: str = Field(description="the served model's name")
    results: list[CohereResult]
    meta: CohereMeta
    usage: RerankUsage


class CohereErrorResponse(BaseModel):
    id: str
    message: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": CohereErrorResponse, "description": description}
    for status, description in {
        400: "invalid request: schema mismatch, blank query or document, too many documents, text too long "
        "with DARL_AUTO_TRUNCATE off, unsupported rank_fields",
        401: "missing or invalid bearer token (DARL_API_KEY)",
        413: "body over DARL_MAX_BODY_BYTES",
        415: "Content-Type is not application/json",
        422: "more documents than fit the deadline even on an idle server",
        429: "queue full; see Retry-After",
        503: "the model is loading or the engine failed",
        504: "deadline exceeded",
    }.items()
}

router = APIRouter(tags=["rerank"])


@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_json)],
    summary="Rerank documents for a query (Cohere v1 / Jina / vLLM protocol)",
)
@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[Depends(require_json)],
    summary="Rerank documents for a query (Cohere v2 / vLLM protocol)",
)
async def rerank_cohere(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
    docs = [ResultDocument(text=d) if isinstance(d, str) else ResultDocument(**d.model_dump()) for d in body.documents]
    reranked = await rerank(request, body.query, [d.text for d in docs], top_n=body.top_n)
    call = reranked.call
    with_docs = body.return_documents is not False
    results = [
        CohereResult(
            index=r.index,
            relevance_score=r.item.score,
            document=docs[r.index] if with_docs else None,
            probs=r.item.probs,
            label=r.item.label,
        )
        for r in reranked.ranked
    ]
    cut = sum(item.truncated for item in call.items)
    warnings = [f"{cut} document(s) cut to fit the model's max length"] if cut else []
    if call.query_truncated:
        warnings.append("the query was cut to fit")
    version = "1" if request.url.path.startswith("/v1/") else "2"
    return CohereRerankResponse(
        id=request.state.request_id,
        model=reranked.model,
        results=results,
        meta=CohereMeta(
            api_version=ApiVersion(version=version),
            tokens=MetaTokens(input_tokens=call.tokens),
            warnings=warnings or None,
        ),
        usage=RerankUsage(prompt_tokens=call.tokens, total_tokens=call.tokens),
    )


def error_response(info: ErrorInfo) -> Response:
    """Cohere's error body; an invalid body is 400 as on Cohere, other statuses are the service's."""
    status = 400 if info.type == "invalid_request" else info.status
    body = {"id": info.request_id, "message": info.message}
    return JSONResponse(body, status_code=status, headers=info.headers or None)
