"""Run the app under uvicorn with a fail-fast artifact check and a clean SIGTERM exit."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from relevance_core.manifest import ArtifactError, verify_artifact
from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings


class DrainingServer(uvicorn.Server):
    """Exit 0 after a SIGTERM drain.

    uvicorn stops accepting on SIGTERM, lets in-flight requests finish (up to
    ``timeout_graceful_shutdown``), then re-raises the signal so the process
    dies with status -15. A drained SIGTERM is the normal end of a pod's life,
    so it is not re-raised; SIGINT keeps uvicorn's behaviour.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)


def serve(settings: Settings) -> int:
    try:  # fail fast, before uvicorn starts, with a message that says what to do; the only verification
        manifest = verify_artifact(settings.model_dir)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        if not Path(settings.model_dir).exists():
            print(
                "hint: build the default DaRL artifact with `make artifact` "
                "(darl train --config configs/darl-smollm2.yaml)",
                file=sys.stderr,
            )
        return 2
    configure_logging(settings.log_level, settings.log_format)
    config = uvicorn.Config(
        create_app(settings, manifest=manifest),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our structured root handler
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        access_log=False,
    )
    DrainingServer(config).run()
    return 0
