"""Request and response bodies of the HTTP API (pydantic v2)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256, description="caller's item id, echoed back")
    title: str = Field(
        min_length=1, description="item title; required, not blank", json_schema_extra={"pattern": r"\S"}
    )
    description: str | None = Field(None, description="optional longer text, truncated first")

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("title must not be blank")
        return v


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "query": "angle bracket",
                    "items": [
                        {"id": "a1", "title": "Simpson Strong-Tie 12-Gauge Angle"},
                        {"id": "a2", "title": "BEHR Premium 1-gal. Deep Base Paint"},
                    ],
                }
            ]
        },
    )

    query: str = Field(min_length=1, description="the search query; not blank", json_schema_extra={"pattern": r"\S"})
    items: list[Item] = Field(
        min_length=1,
        description="candidate items, scored in input order; ids unique within the request; "
        "at most DARL_MAX_ITEMS (default 512)",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="this call's deadline in seconds (the X-Request-Timeout header does the same), at most "
        "DARL_MAX_REQUEST_TIMEOUT_S; default DARL_REQUEST_TIMEOUT_S + DARL_REQUEST_TIMEOUT_PER_PAIR_S per item",
    )

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must not be blank")
        return v

    @model_validator(mode="after")
    def _unique_ids(self) -> ScoreRequest:
        seen: set[str] = set()
        for item in self.items:
            if item.id in seen:
                raise ValueError(f"duplicate item id {item.id!r}; ids must be unique per request")
            seen.add(item.id)
        return self


class Probs(BaseModel):
    irrelevant: float
    weak: float
    strong: float


class ItemScore(BaseModel):
    id: str
    probs: Probs
    label: str = Field(description="the most probable grade")
    score: float = Field(description="expected grade in [0, 1]; sort by this to rank")
    truncated: bool = Field(
        description="the item's text was cut: to the model's max length, or a field over DARL_MAX_FIELD_CHARS"
    )


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="content hash of the served artifact")


class Usage(BaseModel):
    pairs: int
    tokens: int
    deadline_s: float = Field(description="the deadline this call was admitted with")


class ScoreResponse(BaseModel):
    request_id: str
    model: ModelRef
    query_truncated: bool = Field(
        description="the query was cut: over DARL_MAX_QUERY_CHARS characters, or over half the model's max "
        "length in tokens (its first tokens were kept)"
    )
    results: list[ItemScore]
    usage: Usage


class ErrorBody(BaseModel):
    type: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody
