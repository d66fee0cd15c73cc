"""The tests' copy of the platform's DDL is the platform's DDL."""

from __future__ import annotations

import pytest

from tests.fixtures.postgres import PLATFORM_SCHEMA, SHARED_PLATFORM_SCHEMA


def test_the_copy_matches_the_shared_ddl() -> None:
    if not SHARED_PLATFORM_SCHEMA.is_file():
        pytest.skip(f"{SHARED_PLATFORM_SCHEMA} is not beside this clone; the copy stands in")
    assert PLATFORM_SCHEMA.read_text() == SHARED_PLATFORM_SCHEMA.read_text(), (
        f"refresh the copy: cp {SHARED_PLATFORM_SCHEMA} {PLATFORM_SCHEMA}"
    )
