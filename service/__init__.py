"""The relevance scoring service: API, micro-batcher, engines, observability."""
