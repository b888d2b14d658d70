"""The profile summary of `bench.pipeline_profile` (pure: collapsed stacks in, lines out)."""

from __future__ import annotations

from pathlib import Path

from bench.pipeline_profile import breakdown


def test_samples_are_shared_by_package_and_innermost_platform_frame(tmp_path: Path) -> None:
    stacks = tmp_path / "projections.txt"
    stacks.write_text(
        "run (uvicorn/main.py:1);apply_slice (services/common/kafka_positions.py:9);"
        "execute (psycopg/cursor_async.py:113) 6\n"
        "run (uvicorn/main.py:1);Runner.run (asyncio/runners.py:118) 3\n"
        "run (uvicorn/main.py:1);fold (services/handling/callbacks.py:5);"
        "validate_json (pydantic/type_adapter.py:466) 1\n"
    )
    lines = breakdown(stacks)
    assert lines[0] == "== projections (10 samples)"
    assert lines[1] == "  by package: psycopg 60%, (event loop idle) 30%, pydantic 10%"
    assert lines[2] == "  innermost platform frames: apply_slice 60%; fold 10%"
