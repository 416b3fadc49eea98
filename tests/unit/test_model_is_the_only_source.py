"""The entity model (sensorthings/model) is the only place that spells an entity's table or column names:
everything else (query, write, http, ingest, geo, the bridge, the CLI) takes them from the model, so that a
renamed column is one edit. Migrations define the schema and are exempt; so are tests and benchmarks, which
check the stored data and the raw ceilings independently of the code under test.

What counts as spelling one, in a string literal of a module (docstrings are prose and are skipped):
- in text that reads as SQL (it has an upper-case SQL keyword): any table name of the model, a link table, a
  column whose name is not also an everyday word (`phenomenon_time_start`, `thing_id`, ...), or a column
  of any kind qualified by a table alias (`op.name`);
- a string that is nothing but such a column (`"feature_id"`, `"e.thing_id"`): a column key.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from sensorthings.model import observation_ids
from sensorthings.model.entities import ENTITIES
from sensorthings.model.kinds import GeoJson

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("sensorthings", "ingest", "geo", "mqtt_bridge", "citystream")
EXEMPT = (ROOT / "sensorthings" / "model", ROOT / "sensorthings" / "schema")
SQL_TEXT = re.compile(r"\b(SELECT|FROM|JOIN|WHERE|INSERT|UPDATE|DELETE|COPY|RETURNING|VALUES|SET|ON CONFLICT)\b")


def _model_names() -> tuple[set[str], set[str]]:
    """(tables, columns) of every entity, link table and the id bookkeeping of Observations."""
    tables = {observation_ids.RELOCATIONS_TABLE}
    columns = {observation_ids.RELOCATED_DAY_COLUMN}
    for entity in ENTITIES.values():
        tables.add(entity.table)
        columns.update(c for f in entity.fields for c in f.columns)
        columns.update(c for c in (entity.partition_column, entity.generated_from_column) if c)
        columns.update(f.geometry_column for f in entity.fields if isinstance(f, GeoJson))
        for relation in entity.relations.values():
            tables.update(t for t in (relation.link_table,) if t)
            columns.update(c for c in (relation.column, relation.link_source_column, relation.link_target_column,
                                       relation.rank_column) if c)
        if entity.id_sequence:
            tables.add(entity.id_sequence)
    return tables, columns - tables


TABLES, COLUMNS = _model_names()
DISTINCT = TABLES | {c for c in COLUMNS if "_" in c}
_WORD = r"(?<![\w.])({})(?!\w)"
DISTINCT_IN_SQL = re.compile(_WORD.format("|".join(sorted(DISTINCT, key=len, reverse=True))))
QUALIFIED_IN_SQL = re.compile(r"\b[a-z_]\w*\.({})(?!\w)".format("|".join(sorted(COLUMNS, key=len, reverse=True))))
COLUMN_KEY = re.compile(r"(?:[a-z_]\w*\.)?({})".format("|".join(c for c in sorted(COLUMNS) if "_" in c)))


def _docstrings(tree: ast.AST) -> set[int]:
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.add(id(node.value))  # attribute docstrings and other bare strings are prose too
    return found


def spelled_names(text: str) -> set[str]:
    """The model names that `text`, one string literal, spells."""
    if COLUMN_KEY.fullmatch(text):
        return {text}
    if not SQL_TEXT.search(text):
        return set()
    return set(DISTINCT_IN_SQL.findall(text)) | set(QUALIFIED_IN_SQL.findall(text))


def test_the_guard_recognises_model_names_in_sql() -> None:
    assert spelled_names("SELECT id FROM features_of_interest WHERE id = 1") == {"features_of_interest"}
    assert spelled_names("SELECT DISTINCT op.name FROM {} JOIN {} ON op.id = {}") == {"name"}
    assert spelled_names("e.thing_id") == {"e.thing_id"}
    assert spelled_names("phenomenon_time_start") == {"phenomenon_time_start"}
    assert spelled_names("observations") == set()  # a collection id, not SQL
    assert spelled_names("publish its observations over MQTT") == set()
    assert spelled_names('SELECT tl.{} AS {} FROM {} "current_location_id"') == set()


def test_no_module_outside_the_model_spells_a_table_or_column() -> None:
    found: list[str] = []
    for package in CHECKED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(path.is_relative_to(exempt) for exempt in EXEMPT):
                continue
            tree = ast.parse(path.read_text(), str(path))
            prose = _docstrings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                    names = spelled_names(node.value)
                    if names:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(names)}")
    assert not found, "entity tables/columns spelled outside sensorthings/model (take them from the model):\n" + \
        "\n".join(found)
