"""The shape the conventions in backend/README.md ("Layout") promise, held by the code itself."""

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
ADAPTERS = [*sorted((APP / "routes").glob("*.py")), APP / "cli.py"]
MAX_FUNCTION_LINES = 60

# How a caller would reach the database, or the process's state, past the catalog and `db`.
REACHING_PAST_THE_CATALOG = (
    "app.state",
    "create_async_engine",
    "async_sessionmaker",
    "AsyncSession",
    "import asyncpg",
    "import sqlalchemy",
    "from sqlalchemy",
    ".engine",
)


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda path: path.relative_to(APP).as_posix())
def test_routes_and_commands_reach_the_database_only_through_the_catalog(adapter: Path) -> None:
    source = adapter.read_text()

    assert [word for word in REACHING_PAST_THE_CATALOG if word in source] == []


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for path in sorted(APP.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(APP)}:{node.lineno} {node.name} ({lines} lines)")

    assert long == []
