"""The naive peer: what a team writes by hand with FastAPI and ``transformers``.

Same API body as the service (``POST /v1/score``), same prompt rendering
(``relevance_core``), bf16, one padded forward pass per request over that
request's items, no batching across requests. Forward passes are serialised by a
lock: running them concurrently on the threadpool would give every request its
own OpenMP team and oversubscribe the cores (the first thing such a team fixes).

    python -m benchmarks.naive_server --checkpoint DIR --port 8001
"""

from __future__ import annotations

import argparse
import threading

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from relevance_core.labels import LABELS
from relevance_core.postprocess import expected_grade, probs_from_logits
from relevance_core.prompt import PromptRenderer


class Item(BaseModel):
    id: str
    title: str
    description: str | None = None


class ScoreRequest(BaseModel):
    query: str
    items: list[Item]


def create_app(checkpoint: str, max_length: int, dtype: str = "bfloat16") -> FastAPI:
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).eval()
    renderer = PromptRenderer(tok, max_length)
    pad = int(model.config.pad_token_id)
    lock = threading.Lock()
    app = FastAPI(title="naive relevance scorer")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/score")
    def score(req: ScoreRequest) -> dict:
        rendered = renderer.render_many(req.query, [(it.title, it.description) for it in req.items])
        width = max(len(r.token_ids) for r in rendered)
        ids = torch.full((len(rendered), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rendered):
            ids[i, : len(r.token_ids)] = torch.tensor(r.token_ids)
            mask[i, : len(r.token_ids)] = 1
        with lock, torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits.float().numpy()
        probs = probs_from_logits(logits)
        scores = expected_grade(probs)
        return {
            "results": [
                {
                    "id": it.id,
                    "probs": dict(zip(LABELS, map(float, p), strict=True)),
                    "label": LABELS[int(np.argmax(p))],
                    "score": float(s),
                    "truncated": r.truncated,
                }
                for it, p, s, r in zip(req.items, probs, scores, rendered, strict=True)
            ]
        }

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    app = create_app(args.checkpoint, args.max_length, args.dtype)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
