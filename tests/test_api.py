"""HTTP API: contract, error envelope and status mapping, health, metrics.

Most tests use a fake engine behind the real app (renderer, batcher, routes);
``test_real_torch_engine_*`` run the real torch engine on a tiny checkpoint.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.errors import EngineError
from tests.apps import ITEMS, assert_envelope, serve, settings_for, wait_until
from tests.fakes import FakeEngine


async def test_score_contract(make_app, engine: FakeEngine) -> None:
    async with serve(make_app()) as c:
        r = await c.post(
            "/v1/score", json={"query": "angle bracket", "items": ITEMS}, headers={"X-Request-Id": "req-1"}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "req-1" == r.headers["x-request-id"]
    assert body["model"]["name"] == "tiny" and len(body["model"]["version"]) == 16
    assert [x["id"] for x in body["results"]] == ["a1", "b2", "c3"]
    for x in body["results"]:
        p = x["probs"]
        assert list(p) == ["irrelevant", "weak", "strong"]
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-6)
        assert x["label"] == max(p, key=p.get)
        assert x["score"] == pytest.approx((p["weak"] + 2 * p["strong"]) / 2, abs=1e-6)
    assert [x["truncated"] for x in body["results"]] == [False, False, True]
    assert body["query_truncated"] is False
    assert body["usage"]["pairs"] == 3
    assert body["usage"]["deadline_s"] == pytest.approx(5.0 + 0.1 * 3)  # the default: base + per item
    assert body["usage"]["tokens"] == sum(len(p) for p in engine.scored_pairs[-3:])


@pytest.mark.parametrize(
    ("payload", "status", "type_", "fragment"),
    [
        ({"query": "", "items": ITEMS}, 422, "invalid_request", "query"),
        ({"query": "   ", "items": ITEMS}, 422, "invalid_request", "blank"),
        ({"query": "q", "items": []}, 422, "invalid_request", "items"),
        (
            {"query": "q", "items": [{"id": "x", "title": "t"}, {"id": "x", "title": "u"}]},
            422,
            "invalid_request",
            "duplicate",
        ),
        ({"query": "q", "items": [{"id": "x"}]}, 422, "invalid_request", "title"),
        ({"query": "q", "items": [{"id": "x", "title": ""}]}, 422, "invalid_request", "title"),
        ({"query": "q", "items": [{"id": 1, "title": "t"}]}, 422, "invalid_request", "id"),
        ({"query": "q", "items": "nope"}, 422, "invalid_request", "items"),
        ({"query": "q", "items": [{"id": "x", "title": "t"}], "model": "/etc/passwd"}, 422, "invalid_request", "model"),
        ({"items": ITEMS}, 422, "invalid_request", "query"),
        ([1, 2, 3], 422, "invalid_request", "body"),
        ({"query": "q", "items": [{"id": str(i), "title": "t"} for i in range(5)]}, 400, "bad_request", "at most 4"),
    ],
)
async def test_bad_input_gets_4xx_envelope(make_app, engine: FakeEngine, payload, status, type_, fragment) -> None:
    async with serve(make_app(max_items=4, max_query_chars=100)) as c:
        r = await c.post("/v1/score", json=payload)
    err = assert_envelope(r, status, type_)
    assert fragment in err["message"]
    assert len(engine.batches) == 2  # only the warm-up pair and the seeding batch ran


async def test_malformed_json_wrong_type_and_oversized_body(make_app) -> None:
    async with serve(make_app(max_body_bytes=2048)) as c:
        headers = {"content-type": "application/json"}
        assert_envelope(await c.post("/v1/score", content=b'{"query": "q",', headers=headers), 400, "invalid_json")
        assert_envelope(await c.post("/v1/score", content=b"", headers=headers), 422, "invalid_request")
        assert_envelope(
            await c.post("/v1/score", content=b"{}", headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
        big = json.dumps({"query": "q", "items": [{"id": str(i), "title": "x" * 100} for i in range(50)]})
        assert_envelope(await c.post("/v1/score", content=big, headers=headers), 413, "payload_too_large")

        async def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(10):
                yield b" " * 1000

        assert_envelope(await c.post("/v1/score", content=chunks(), headers=headers), 413, "payload_too_large")
        assert_envelope(await c.get("/nope"), 404, "not_found")
        assert_envelope(await c.get("/v1/score"), 405, "method_not_allowed")


async def test_long_text_is_cut_and_flagged_unless_strict(make_app, engine: FakeEngine) -> None:
    """A 17,000-character title or an over-long query costs one flag, not the call;
    DARL_AUTO_TRUNCATE=false keeps the strict 400s. The tiny artifact's template (darl-prompt-v2)
    does not read descriptions: a long one (CrowdFlower has 17,000-character ones) is never cut,
    flagged or refused."""
    long_title = {"id": "cf", "title": "Sony headphones great sound " * 600}
    long_desc = {"id": "cd", "title": "Sony headphones", "description": "great sound " * 1500}
    items = [long_title, *ITEMS[:2]]
    async with serve(make_app()) as c:
        r = await c.post("/v1/score", json={"query": "headphones", "items": items})
        assert r.status_code == 200, r.text
        assert [x["truncated"] for x in r.json()["results"]] == [True, False, False]
        assert r.json()["query_truncated"] is False
        for query in ("word " * 200, "q" * 1500):  # over half the max length in tokens; over the chars limit
            r = await c.post("/v1/score", json={"query": query, "items": ITEMS[:2]})
            assert r.status_code == 200 and r.json()["query_truncated"] is True, r.text
        short = [len(p) for p in engine.scored_pairs[-2:]]
    assert max(short) <= 128  # every prompt still within the artifact's max length
    async with serve(make_app(auto_truncate=False)) as c:
        r = await c.post("/v1/score", json={"query": "headphones", "items": items})
        assert "title has 16800 characters; at most 10000" in assert_envelope(r, 400, "bad_request")["message"]
        r = await c.post("/v1/score", json={"query": "headphones", "items": [long_desc, *ITEMS[:1]]})
        assert r.status_code == 200 and [x["truncated"] for x in r.json()["results"]] == [False, False], r.text
        r = await c.post("/v1/score", json={"query": "word " * 200, "items": ITEMS[:1]})
        assert "query too long" in assert_envelope(r, 400, "bad_request")["message"]
        r = await c.post("/v1/score", json={"query": "q" * 1001, "items": ITEMS[:1]})
        assert "at most 1000" in assert_envelope(r, 400, "bad_request")["message"]


async def test_queue_full_is_429_with_retry_after(make_app, engine: FakeEngine) -> None:
    app = make_app(max_queue_pairs=3, max_batch_pairs=1, request_timeout_s=10)

    def c_app_queue() -> int:
        return app.state.runtime.batcher.queued_pairs

    async with serve(app) as c:
        engine.gate = asyncio.Event()
        first = asyncio.create_task(c.post("/v1/score", json={"query": "q", "items": ITEMS[:1]}))
        await wait_until(lambda: len(engine.batches) == 3)  # warm-up, seeding batch, the first request
        second = asyncio.create_task(c.post("/v1/score", json={"query": "q", "items": ITEMS[:3]}))
        await wait_until(lambda: c_app_queue() == 3)
        r = await c.post("/v1/score", json={"query": "q", "items": ITEMS[:2]})
        assert_envelope(r, 429, "queue_full")
        assert int(r.headers["retry-after"]) >= 1
        engine.gate.set()
        assert (await first).status_code == 200 and (await second).status_code == 200


async def test_deadline_is_504(make_app, engine: FakeEngine) -> None:
    async with serve(make_app(request_timeout_s=0.2)) as c:
        engine.gate = asyncio.Event()
        r = await c.post("/v1/score", json={"query": "q", "items": ITEMS[:1]})
        assert_envelope(r, 504, "deadline_exceeded")
        engine.gate.set()


async def test_engine_error_is_503_and_service_recovers(make_app, engine: FakeEngine) -> None:
    async with serve(make_app()) as c:
        engine.fail_next = EngineError("device lost")
        assert (
            "device lost"
            in assert_envelope(await c.post("/v1/score", json={"query": "q", "items": ITEMS}), 503, "engine_error")[
                "message"
            ]
        )
        assert (await c.post("/v1/score", json={"query": "q", "items": ITEMS})).status_code == 200


async def test_readiness_waits_for_warm_up(tiny_artifact: Path, cache_dir: Path) -> None:
    gate = asyncio.Event()

    class SlowStart(FakeEngine):
        async def start(self) -> None:
            await gate.wait()

    app = create_app(settings_for(tiny_artifact, cache_dir), engine_factory=lambda s, a: SlowStart())
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert_envelope(await c.get("/readyz"), 503, "not_ready")
        assert_envelope(await c.post("/v1/score", json={"query": "q", "items": ITEMS}), 503, "not_ready")
        gate.set()
        await app.state.runtime.wait_ready()
        assert (await c.get("/readyz")).status_code == 200


async def test_failed_engine_start_fails_liveness(tiny_artifact: Path, cache_dir: Path) -> None:
    class Broken(FakeEngine):
        async def start(self) -> None:
            raise RuntimeError("no such device")

    app = create_app(settings_for(tiny_artifact, cache_dir), engine_factory=lambda s, a: Broken())
    async with serve(app) as c:
        assert "no such device" in assert_envelope(await c.get("/healthz"), 503, "engine_error")["message"]
        assert_envelope(await c.get("/readyz"), 503, "engine_error")


async def test_dead_engine_turns_health_and_readiness_503(make_app, engine: FakeEngine) -> None:
    async with serve(make_app()) as c:
        assert (await c.get("/readyz")).status_code == 200
        engine.dead = True
        assert_envelope(await c.get("/healthz"), 503, "engine_error")
        assert_envelope(await c.get("/readyz"), 503, "engine_error")


async def test_metrics_and_models(make_app) -> None:
    async with serve(make_app()) as c:
        await c.post("/v1/score", json={"query": "q", "items": ITEMS})
        await c.post("/v1/score", json={"query": "", "items": ITEMS})
        text = (await c.get("/metrics")).text
        models = (await c.get("/v1/models")).json()["data"][0]
    for name in (
        'darl_requests_total{route="/v1/score",status="200"} 1.0',
        'darl_requests_total{route="/v1/score",status="422"} 1.0',
        "darl_request_duration_seconds_bucket",
        "darl_queue_depth_pairs 0.0",
        "darl_queue_wait_seconds_count 3.0",
        "darl_inference_duration_seconds_count",
        "darl_batch_pairs_bucket",
        "darl_batch_tokens_bucket",
        "darl_pairs_total 3.0",  # the warm-up bypasses the batcher
        'darl_model_info{dtype="float32",engine="fake",name="tiny"',
        "darl_engine_ready 1.0",
    ):
        assert name in text, name
    assert models["name"] == "tiny" and models["labels"] == ["irrelevant", "weak", "strong"]
    assert models["engine"] == "fake" and models["ready"] is True and models["template_version"] == "darl-prompt-v2"


async def test_openapi_documents_the_score_route(make_app) -> None:
    async with serve(make_app()) as c:
        spec = (await c.get("/openapi.json")).json()
        assert (await c.get("/docs")).status_code == 200
    op = spec["paths"]["/v1/score"]["post"]
    assert "ScoreRequest" in json.dumps(op["requestBody"])
    assert {"200", "400", "422", "429", "503", "504"} <= set(op["responses"])
    assert "timeout_s" in json.dumps(spec["components"]["schemas"]["ScoreRequest"])


async def test_real_torch_engine_matches_the_checkpoint(tiny_artifact: Path, cache_dir: Path, tokenizer) -> None:
    """The whole path (render → batch → torch engine → softmax) against a direct HF forward."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from relevance_core.prompt import PromptRenderer

    app = create_app(settings_for(tiny_artifact, cache_dir))
    async with serve(app) as c:
        r = await c.post("/v1/score", json={"query": "angle bracket", "items": ITEMS})
        assert (await c.get("/readyz")).status_code == 200
    assert r.status_code == 200, r.text
    got = np.array([[x["probs"][k] for k in ("irrelevant", "weak", "strong")] for x in r.json()["results"]])

    model = AutoModelForSequenceClassification.from_pretrained(tiny_artifact / "model", dtype=torch.float32).eval()
    rendered = PromptRenderer(tokenizer, 128).render_many(
        "angle bracket", [(i["title"], i.get("description")) for i in ITEMS]
    )
    with torch.inference_mode():
        want = np.stack([model(torch.tensor([x.token_ids])).logits.softmax(-1)[0].numpy() for x in rendered])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.std() > 1e-3, "tiny model outputs are degenerate; the comparison would be vacuous"
