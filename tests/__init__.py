from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository root: cwd of the commands the tests run
