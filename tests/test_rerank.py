"""Rerank protocols (``/rerank`` TEI, ``/v1/rerank`` and ``/v2/rerank`` Cohere/Jina/vLLM).

The real app with the fake engine (as tests/test_api.py): shapes, ordering, options,
each protocol's error bodies, limits, auth, 429, metrics, OpenAPI, and the same scores
as ``/v1/score`` for the same pairs. The client-library tests run the real cohere SDK
and LangChain's ``CohereRerank`` over HTTP against uvicorn on localhost.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.errors import EngineError
from tests.apps import InProcessServer, serve, settings_for, wait_until
from tests.fakes import FakeEngine

QUERY = "angle bracket"
TEXTS = [
    "Simpson Strong-Tie 12-Gauge Angle",
    "BEHR Premium 1-gal. Deep Base Paint",
    "angle bracket steel zinc 2 in.",
    "Everbilt 3 in. Zinc-Plated Corner Brace",
    "Hampton Bay ceiling fan",
]
LONG = "angle bracket " * 100  # over the tiny model's 128 tokens


def score_body(texts: list[str], query: str = QUERY) -> dict:
    return {"query": query, "items": [{"id": str(i), "title": t} for i, t in enumerate(texts)]}


def ranking(score_json: dict) -> list[tuple[int, float]]:
    """``/v1/score`` results as (index, score), best first, ties in input order (the rerank order)."""
    pairs = [(int(x["id"]), x["score"]) for x in score_json["results"]]
    return sorted(pairs, key=lambda p: (-p[1], p[0]))


def assert_tei_error(r: httpx.Response, status: int, error_type: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    assert r.headers["x-request-id"]
    return body["error"]


def assert_cohere_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"id", "message"} and body["message"], body
    assert body["id"] == r.headers["x-request-id"]
    return body["message"]


# -- TEI: /rerank -------------------------------------------------------------------------------


async def test_tei_rerank_matches_v1_score(make_app) -> None:
    async with serve(make_app()) as c:
        expected = ranking((await c.post("/v1/score", json=score_body(TEXTS))).json())
        r = await c.post("/rerank", json={"query": QUERY, "texts": TEXTS, "return_text": True})
        plain = await c.post("/rerank", json={"query": QUERY, "texts": TEXTS})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [(x["index"], x["score"]) for x in got] == expected
    assert [x["text"] for x in got] == [TEXTS[x["index"]] for x in got]
    assert all(set(x) == {"index", "score", "text"} for x in got)  # nothing else: Elasticsearch rejects extras
    assert [set(x) for x in plain.json()] == [{"index", "score"}] * len(TEXTS)
    assert [(x["index"], x["score"]) for x in plain.json()] == expected
    assert len({x["score"] for x in got}) > 1, "fake scores are all equal; the ordering check would be vacuous"


async def test_tei_raw_scores_are_the_logit_of_the_score(make_app) -> None:
    async with serve(make_app()) as c:
        scores = {
            x["index"]: x["score"] for x in (await c.post("/rerank", json={"query": QUERY, "texts": TEXTS})).json()
        }
        raw = (await c.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True})).json()
    for x in raw:
        assert 1 / (1 + math.exp(-x["score"])) == pytest.approx(scores[x["index"]], abs=1e-9)
    assert [x["index"] for x in raw] == sorted(scores, key=lambda i: (-scores[i], i))


async def test_tei_accepts_the_elasticsearch_hugging_face_body(make_app) -> None:
    """ES's hugging_face rerank service sends documents/top_n/return_documents (and may add fields)."""
    body = {"query": QUERY, "documents": TEXTS, "top_n": 2, "return_documents": True, "max_chunks_per_doc": 1}
    async with serve(make_app()) as c:
        expected = ranking((await c.post("/v1/score", json=score_body(TEXTS))).json())[:2]
        r = await c.post("/rerank", json=body)
    assert r.status_code == 200, r.text
    assert [(x["index"], x["score"], x["text"]) for x in r.json()] == [(i, s, TEXTS[i]) for i, s in expected]


async def test_tei_truncation_follows_the_request(make_app) -> None:
    async with serve(make_app()) as c:
        for truncate in (None, True):  # null: DARL_AUTO_TRUNCATE (on); true: cut
            r = await c.post("/rerank", json={"query": QUERY, "texts": [LONG, "x"], "truncate": truncate})
            assert r.status_code == 200, r.text
        r = await c.post("/rerank", json={"query": QUERY, "texts": ["short", LONG], "truncate": False})
        assert "max length" in assert_tei_error(r, 413, "Validation")
        r = await c.post("/rerank", json={"query": QUERY, "texts": ["x" * 10_001], "truncate": False})
        assert "at most 10000" in assert_tei_error(r, 413, "Validation")
        assert (
            await c.post("/rerank", json={"query": QUERY, "texts": ["short"], "truncate": False})
        ).status_code == 200
    async with serve(make_app(auto_truncate=False)) as c:  # the service's strict mode applies when truncate is null
        r = await c.post("/rerank", json={"query": QUERY, "texts": ["x" * 10_001]})
        assert "DARL_AUTO_TRUNCATE" in assert_tei_error(r, 413, "Validation")
        assert (await c.post("/rerank", json={"query": QUERY, "texts": ["x" * 10_001], "truncate": True})).is_success


@pytest.mark.parametrize(
    ("payload", "status", "error_type", "fragment"),
    [
        ({"query": " ", "texts": TEXTS}, 400, "Empty", "query"),
        ({"query": QUERY, "texts": []}, 400, "Empty", "no documents"),
        ({"query": QUERY, "texts": ["a", "  "]}, 400, "Empty", "document 1"),
        ({"query": QUERY, "texts": [f"t{i}" for i in range(5)]}, 413, "Validation", "at most 4"),
        ({"query": QUERY}, 422, "Validation", "texts"),
        ({"query": QUERY, "texts": ["a"], "documents": ["b"]}, 422, "Validation", "exactly one"),
        ({"query": QUERY, "texts": ["a"], "truncation_direction": "Left"}, 422, "Validation", "Left"),
        ({"query": QUERY, "texts": "a"}, 422, "Validation", "texts"),
        ({"texts": ["a"]}, 422, "Validation", "query"),
    ],
)
async def test_tei_errors(make_app, engine: FakeEngine, payload, status, error_type, fragment) -> None:
    async with serve(make_app(max_items=4)) as c:
        r = await c.post("/rerank", json=payload)
    assert fragment in assert_tei_error(r, status, error_type)
    assert len(engine.batches) == 2  # only the warm-up and seeding batches ran


async def test_tei_transport_errors(make_app) -> None:
    async with serve(make_app(max_body_bytes=2048)) as c:
        headers = {"content-type": "application/json"}
        assert_tei_error(await c.post("/rerank", content=b'{"query": ', headers=headers), 400, "Validation")
        r = await c.post("/rerank", content=b"{}", headers={"content-type": "text/plain"})
        assert_tei_error(r, 415, "Validation")
        big = json.dumps({"query": "q", "texts": ["x" * 100] * 50})
        assert_tei_error(await c.post("/rerank", content=big, headers=headers), 413, "Validation")
        r = await c.post("/rerank", json={"query": "q", "texts": ["a"]}, headers={"X-Request-Timeout": "soon"})
        assert "X-Request-Timeout" in assert_tei_error(r, 400, "Validation")


# -- Cohere / Jina / vLLM: /v1/rerank, /v2/rerank -----------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
async def test_cohere_rerank_matches_v1_score(make_app, path: str) -> None:
    documents = [TEXTS[0], {"text": TEXTS[1], "sku": "B-2"}, *TEXTS[2:]]  # strings and {text, ...} objects
    async with serve(make_app()) as c:
        scored = (await c.post("/v1/score", json=score_body(TEXTS))).json()
        r = await c.post(
            path, json={"model": "anything", "query": QUERY, "documents": documents}, headers={"X-Request-Id": "rr-1"}
        )
        top = await c.post(path, json={"query": QUERY, "documents": TEXTS, "top_n": 2, "return_documents": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "rr-1" and body["model"] == "tiny"
    assert [(x["index"], x["relevance_score"]) for x in body["results"]] == ranking(scored)
    by_id = {int(x["id"]): x for x in scored["results"]}
    for x in body["results"]:
        assert x["probs"] == by_id[x["index"]]["probs"] and x["label"] == by_id[x["index"]]["label"]
        assert x["document"]["text"] == TEXTS[x["index"]]
    assert next(x for x in body["results"] if x["index"] == 1)["document"] == {"text": TEXTS[1], "sku": "B-2"}
    tokens = scored["usage"]["tokens"]
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert body["meta"]["api_version"]["version"] == path[2] and body["meta"]["tokens"]["input_tokens"] == tokens
    assert "warnings" not in body["meta"]
    assert [(x["index"], x["relevance_score"]) for x in top.json()["results"]] == ranking(scored)[:2]
    assert all("document" not in x for x in top.json()["results"])


async def test_cohere_reports_cut_text_in_meta_warnings(make_app) -> None:
    async with serve(make_app()) as c:
        r = await c.post("/v2/rerank", json={"query": QUERY, "documents": [LONG, "short"]})
    assert r.json()["meta"]["warnings"] == ["1 document(s) cut to fit the model's max length"]


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"query": "", "documents": TEXTS}, 400, "query"),
        ({"query": QUERY, "documents": []}, 400, "no documents"),
        ({"query": QUERY, "documents": [{"text": " "}]}, 400, "document 0"),
        ({"query": QUERY, "documents": [f"t{i}" for i in range(5)]}, 400, "at most 4"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, 400, "text"),
        ({"query": QUERY, "documents": ["a"], "rank_fields": ["title"]}, 400, "rank_fields"),
        ({"query": QUERY, "documents": ["a"], "top_n": -1}, 400, "top_n"),
        ({"documents": ["a"]}, 400, "query"),
    ],
)
async def test_cohere_errors(make_app, engine: FakeEngine, payload, status, fragment) -> None:
    async with serve(make_app(max_items=4)) as c:
        r = await c.post("/v2/rerank", json=payload)
    assert fragment in assert_cohere_error(r, status)
    assert len(engine.batches) == 2


async def test_cohere_accepts_and_ignores_the_tuning_fields(make_app) -> None:
    extra = {"max_tokens_per_doc": 16, "max_chunks_per_doc": 3, "priority": 1, "rank_fields": ["text"], "foo": 1}
    async with serve(make_app()) as c:
        plain = (await c.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS})).json()["results"]
        tuned = (await c.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS, **extra})).json()["results"]
    assert tuned == plain


# -- shared behaviour: engine, deadline, auth, 429, metrics, OpenAPI ----------------------------


async def test_engine_failure_and_deadline_in_each_protocol(make_app, engine: FakeEngine) -> None:
    async with serve(make_app()) as c:
        engine.fail_next = EngineError("device lost")
        assert "device lost" in assert_tei_error(
            await c.post("/rerank", json={"query": "q", "texts": ["a"]}), 424, "Backend"
        )
        engine.fail_next = EngineError("device lost")
        assert "device lost" in assert_cohere_error(
            await c.post("/v1/rerank", json={"query": "q", "documents": ["a"]}), 503
        )
        engine.gate = asyncio.Event()
        fast = {"X-Request-Timeout": "0.2"}  # the client's deadline, as on /v1/score
        assert_tei_error(await c.post("/rerank", json={"query": "q", "texts": ["a"]}, headers=fast), 504, "Backend")
        assert_cohere_error(await c.post("/v2/rerank", json={"query": "q", "documents": ["a"]}, headers=fast), 504)
        engine.gate.set()


async def test_bearer_auth_in_each_protocol(make_app) -> None:
    async with serve(make_app(api_key="s3cret")) as c:
        r = await c.post("/rerank", json={"query": "q", "texts": ["a"]})
        assert_tei_error(r, 401, "Validation")
        assert r.headers["www-authenticate"] == "Bearer"
        r = await c.post("/v2/rerank", json={"query": "q", "documents": ["a"]}, headers={"Authorization": "Bearer no"})
        assert "bearer token" in assert_cohere_error(r, 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert (await c.post("/rerank", json={"query": "q", "texts": ["a"]}, headers=ok)).status_code == 200
        assert (await c.post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=ok)).status_code == 200


async def test_queue_full_is_429_with_retry_after_in_each_protocol(make_app, engine: FakeEngine) -> None:
    app = make_app(max_queue_pairs=3, max_batch_pairs=1, request_timeout_s=10)
    async with serve(app) as c:
        engine.gate = asyncio.Event()
        first = asyncio.create_task(c.post("/rerank", json={"query": "q", "texts": ["a"]}))
        await wait_until(lambda: len(engine.batches) == 3)  # warm-up, seeding batch, the first request
        second = asyncio.create_task(c.post("/v2/rerank", json={"query": "q", "documents": ["a", "b", "c"]}))
        await wait_until(lambda: app.state.runtime.batcher.queued_pairs == 3)
        r = await c.post("/rerank", json={"query": "q", "texts": ["a", "b"]})
        assert_tei_error(r, 429, "Overloaded")
        assert int(r.headers["retry-after"]) >= 1
        r = await c.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
        assert_cohere_error(r, 429)
        assert int(r.headers["retry-after"]) >= 1
        engine.gate.set()
        assert (await first).status_code == 200 and (await second).status_code == 200


async def test_metrics_label_each_rerank_route(make_app) -> None:
    async with serve(make_app()) as c:
        await c.post("/rerank", json={"query": "q", "texts": ["a"]})
        await c.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        await c.post("/v2/rerank", json={"query": "q", "documents": []})
        text = (await c.get("/metrics")).text
    for line in (
        'darl_requests_total{route="/rerank",status="200"} 1.0',
        'darl_requests_total{route="/v1/rerank",status="200"} 1.0',
        'darl_requests_total{route="/v2/rerank",status="400"} 1.0',
        'darl_request_duration_seconds_count{route="/rerank"} 1.0',
        "darl_pairs_total 2.0",
    ):
        assert line in text, line


async def test_openapi_documents_the_rerank_routes(make_app) -> None:
    async with serve(make_app()) as c:
        spec = (await c.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    tei = spec["paths"]["/rerank"]["post"]
    assert "TeiRerankRequest" in json.dumps(tei["requestBody"])
    assert "TeiRank" in json.dumps(tei["responses"]["200"])
    assert {"400", "401", "413", "415", "422", "424", "429", "503", "504"} <= set(tei["responses"])
    assert "TeiErrorResponse" in json.dumps(tei["responses"]["424"])
    for path in ("/v1/rerank", "/v2/rerank"):
        op = spec["paths"][path]["post"]
        assert "CohereRerankRequest" in json.dumps(op["requestBody"])
        assert "CohereRerankResponse" in json.dumps(op["responses"]["200"])
        assert {"400", "401", "413", "415", "422", "429", "503", "504"} <= set(op["responses"])
    assert {"raw_scores", "return_text", "truncate", "truncation_direction"} <= set(
        schemas["TeiRerankRequest"]["properties"]
    )
    assert {"top_n", "return_documents", "rank_fields"} <= set(schemas["CohereRerankRequest"]["properties"])


# -- the real client libraries over HTTP --------------------------------------------------------


@pytest.fixture
def server_url(tiny_artifact: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """uvicorn on localhost with the fake engine and an API key; nothing leaves the machine."""
    for var in ("LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING"):
        monkeypatch.setenv(var, "false")
    for var in ("CO_API_URL", "COHERE_API_KEY", "CO_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    settings = settings_for(tiny_artifact, cache_dir, api_key="k3y")
    with InProcessServer(create_app(settings, engine_factory=lambda s, a: FakeEngine())) as url:
        yield url


def expected_ranking(url: str, texts: list[str]) -> list[tuple[int, float]]:
    r = httpx.post(url + "/v1/score", json=score_body(texts), headers={"Authorization": "Bearer k3y"})
    return ranking(r.json())


def test_cohere_sdk_v1_and_v2(server_url: str) -> None:
    cohere = pytest.importorskip("cohere")
    expected = expected_ranking(server_url, TEXTS)
    v2 = cohere.ClientV2(api_key="k3y", base_url=server_url)
    res = v2.rerank(model="darl", query=QUERY, documents=TEXTS, top_n=3)
    assert [(x.index, x.relevance_score) for x in res.results] == expected[:3]
    assert res.id and res.meta.tokens.input_tokens > 0
    v1 = cohere.Client(api_key="k3y", base_url=server_url)
    res = v1.rerank(model="darl", query=QUERY, documents=TEXTS, return_documents=True)
    assert [(x.index, x.relevance_score) for x in res.results] == expected
    assert [x.document.text for x in res.results] == [TEXTS[i] for i, _ in expected]
    with pytest.raises(cohere.errors.BadRequestError) as bad:
        v2.rerank(model="darl", query=" ", documents=TEXTS)
    assert "query" in bad.value.body["message"]
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=server_url).rerank(model="darl", query=QUERY, documents=TEXTS)


def test_langchain_cohere_rerank(server_url: str) -> None:
    cohere = pytest.importorskip("cohere")
    langchain_cohere = pytest.importorskip("langchain_cohere")
    from langchain_core.documents import Document

    expected = expected_ranking(server_url, TEXTS)
    client = cohere.ClientV2(api_key="k3y", base_url=server_url)
    reranker = langchain_cohere.CohereRerank(client=client, model="darl", top_n=3)
    docs = [Document(page_content=t, metadata={"n": i}) for i, t in enumerate(TEXTS)]
    out = reranker.compress_documents(docs, QUERY)
    assert [(d.metadata["n"], d.metadata["relevance_score"]) for d in out] == expected[:3]
    ranked = reranker.rerank(TEXTS, QUERY, top_n=None)
    assert [(x["index"], x["relevance_score"]) for x in ranked] == expected
