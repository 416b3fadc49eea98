"""Duration literals and arithmetic on times in `$filter`/`$orderby` (issue 15): parsing, and the shape of
the compiled SQL, without any service.

Checked here: `duration'…'` literals become Python timedeltas (plus calendar months) in the AST and bind
parameters in the SQL (never text), datetime ± duration is reckoned in UTC, intervals are shifted on both
bounds and give spans of durations compared by their bounds, the type errors and malformed literals are
400s (BadRequest) that say what was expected, and nesting grows the SQL linearly.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from psycopg import sql

from sensorthings.model.entities import ENTITIES
from sensorthings.model.errors import BadRequest
from sensorthings.query import odata
from sensorthings.query.expressions import ExpressionCompiler
from sensorthings.query.sql import SqlBuilder, relation_join

# ------------------------------------------------------------------------------------------ helpers


def duration_of(text: str) -> odata.Duration:
    """The Duration value of `duration'text'` as parsed inside a comparison."""
    expr = odata.parse("filter", f"duration'{text}' eq duration'PT0S'")
    assert isinstance(expr, odata.Compare) and isinstance(expr.left, odata.Literal)
    value = expr.left.value
    assert isinstance(value, odata.Duration)
    return value


def compiled(entity: str, expression: str, option: str = "filter") -> tuple[str, dict[str, Any]]:
    """The SQL text and the bind parameters (without the base URL) of a $filter or $orderby."""
    b = SqlBuilder("http://example.org/v1.1")
    compiler = ExpressionCompiler(b, ENTITIES[entity], sql.Identifier("e"), relation_join, f"${option}")
    if option == "filter":
        text = compiler.predicate(odata.parse("filter", expression)).as_string(None)
    else:
        keys = [key for item in odata.parse("orderby", expression) for key in compiler.order_values(item.expr)]
        text = sql.SQL(", ").join(keys).as_string(None)
    return text, {name: value for name, value in b.params.items() if name != "p0"}


def rejected(entity: str, expression: str, *fragments: str, option: str = "filter") -> str:
    with pytest.raises(BadRequest) as info:
        compiled(entity, expression, option)
    message = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------------ literals


@pytest.mark.parametrize(("text", "months", "delta"), [
    ("P1DT2H30M", 0, timedelta(days=1, hours=2, minutes=30)),
    ("PT24H", 0, timedelta(days=1)),
    ("P1D", 0, timedelta(days=1)),
    ("PT0.5S", 0, timedelta(milliseconds=500)),
    ("PT1,25S", 0, timedelta(seconds=1, milliseconds=250)),
    ("PT0.0000015S", 0, timedelta(microseconds=2)),  # rounded to the microsecond (half to even)
    ("-P7D", 0, timedelta(days=-7)),
    ("+PT90M", 0, timedelta(minutes=90)),
    ("-PT1H", 0, timedelta(hours=-1)),
    ("p1dt1h", 0, timedelta(days=1, hours=1)),
    ("P1Y", 12, timedelta(0)),
    ("P1Y2M3DT4H", 14, timedelta(days=3, hours=4)),
    ("-P1M1D", -1, timedelta(days=-1)),
    ("P3652425D", 0, timedelta(days=3_652_425)),
])
def test_duration_literals_parse_to_months_and_a_timedelta(text: str, months: int, delta: timedelta) -> None:
    value = duration_of(text)
    assert (value.text, value.months, value.delta) == (text, months, delta)


def test_the_duration_prefix_is_case_insensitive() -> None:
    assert odata.parse("filter", "DURATION'PT1H' eq duration'PT60M'").left.value.delta == timedelta(hours=1)


@pytest.mark.parametrize(("text", "fragment"), [
    ("1 day", "not an ISO 8601 duration"),
    ("", "not an ISO 8601 duration"),
    ("P", "not an ISO 8601 duration"),
    ("PT", "not an ISO 8601 duration"),
    ("P1DT", "not an ISO 8601 duration"),
    ("PT5", "not an ISO 8601 duration"),
    ("P1H", "not an ISO 8601 duration"),
    ("P1.5D", "not an ISO 8601 duration"),
    ("P1W", "not an ISO 8601 duration"),
    (" P1D", "not an ISO 8601 duration"),
    ("P\uff11D", "not an ISO 8601 duration"),  # a fullwidth digit is no ASCII digit
    ("P3652426D", "10,000 years"),
    ("P120001M", "10,000 years"),
    ("PT" + "9" * 40 + "S", "10,000 years"),
    ("P" + "9" * 200 + "D", "longer than 100 characters"),
])
def test_malformed_or_absurd_durations_are_400s(text: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        odata.parse("filter", f"resultTime gt now() sub duration'{text}'")
    assert "$filter" in str(info.value) and fragment in str(info.value)


def test_a_malformed_duration_inside_expand_names_the_option() -> None:
    with pytest.raises(BadRequest, match=r"^\$expand: .*not an ISO 8601 duration"):
        odata.parse("expand", "Observations($filter=resultTime gt now() sub duration'1 day')")


def test_the_masterportal_filter_parses_to_a_comparison_with_arithmetic() -> None:
    expr = odata.parse("filter", "resultTime gt now() sub duration'PT24H'")
    assert expr == odata.Compare("gt", odata.Path(("resultTime",)), odata.Arithmetic(
        "sub", odata.Function("now", ()), odata.Literal(odata.Duration("PT24H", 0, timedelta(days=1)))))


def test_a_duration_filter_inside_expand_parses() -> None:
    (item,) = odata.parse("expand", "Observations($filter=phenomenonTime gt now() sub duration'P1D')")
    assert isinstance(item.filter, odata.Compare) and isinstance(item.filter.right, odata.Arithmetic)


# ------------------------------------------------------------------------------------------ compiled SQL


def test_datetime_minus_duration_is_reckoned_in_utc_with_the_timedelta_bound() -> None:
    text, params = compiled("Observation", "resultTime gt now() sub duration'PT24H'")
    assert text == ("(\"e\".\"result_time\" > ((((now()) AT TIME ZONE 'UTC') - %(p1)s::interval) "
                    "AT TIME ZONE 'UTC'))")
    assert params == {"p1": timedelta(days=1)}


def test_an_interval_after_an_instant_starts_after_it() -> None:
    text, params = compiled("Observation", "phenomenonTime gt now() sub duration'P1D'")
    assert text.startswith('("e"."phenomenon_time_start" > ') and "phenomenon_time_end" not in text
    assert params == {"p1": timedelta(days=1)}


def test_an_interval_before_an_instant_ends_before_it() -> None:
    text, _ = compiled("Observation", "phenomenonTime lt now() sub duration'P1D'")
    assert text.startswith('(coalesce("e"."phenomenon_time_end", "e"."phenomenon_time_start") < ')


def test_a_shifted_interval_moves_both_bounds() -> None:
    text, params = compiled("Datastream", "phenomenonTime add duration'PT1H' eq 2024-05-01T01:00:00Z")
    assert text.count("+ %(p1)s::interval") == 2
    assert '"e"."phenomenon_time_start"' in text and '"e"."phenomenon_time_end"' in text
    assert params["p1"] == timedelta(hours=1)


def test_time_minus_interval_is_a_span_compared_by_its_shortest_for_gt() -> None:
    text, params = compiled("Observation", "resultTime sub phenomenonTime gt duration'PT1H'")
    assert text == ('(("e"."result_time" - coalesce("e"."phenomenon_time_end", "e"."phenomenon_time_start")) '
                    "> %(p1)s::interval)")
    assert params == {"p1": timedelta(hours=1)}


def test_time_minus_interval_is_a_span_compared_by_its_longest_for_lt() -> None:
    text, _ = compiled("Observation", "resultTime sub phenomenonTime lt duration'PT1H'")
    assert text == '(("e"."result_time" - "e"."phenomenon_time_start") < %(p1)s::interval)'


def test_a_span_equals_a_duration_only_when_both_bounds_do() -> None:
    text, _ = compiled("Observation", "resultTime sub phenomenonTime eq duration'PT1H'")
    assert " AND " in text and text.count("%(p1)s::interval") == 2


def test_instants_subtract_exactly() -> None:
    text, params = compiled("HistoricalLocation", "now() sub time le duration'PT30M'")
    assert text == '((now() - "e"."time") <= %(p1)s::interval)'
    assert params == {"p1": timedelta(minutes=30)}


def test_durations_add_subtract_and_scale() -> None:
    text, params = compiled("Observation",
                            "(duration'PT1H' add duration'PT30M') mul 2 div 3 ne duration'PT1H' sub duration'PT1S'")
    assert text == ("((((%(p1)s::interval + %(p2)s::interval) * (%(p3)s::bigint)::double precision) / "
                    "NULLIF((%(p4)s::bigint)::double precision, 0)) IS DISTINCT FROM "
                    "(%(p5)s::interval - %(p6)s::interval))")
    assert params == {"p1": timedelta(hours=1), "p2": timedelta(minutes=30), "p3": 2, "p4": 3,
                      "p5": timedelta(hours=1), "p6": timedelta(seconds=1)}


def test_a_negative_literal_factor_swaps_the_bounds_of_a_span() -> None:
    text, _ = compiled("Observation", "(resultTime sub phenomenonTime) mul -1 gt duration'-PT1H'")
    assert text.startswith('((("e"."result_time" - "e"."phenomenon_time_start") * ')


def test_a_negated_span_swaps_its_bounds() -> None:
    text, _ = compiled("Observation", "-(resultTime sub phenomenonTime) gt duration'-PT1H'")
    assert text.startswith('((-("e"."result_time" - "e"."phenomenon_time_start")) > ')


def test_calendar_months_are_bound_as_an_integer_and_added_in_utc() -> None:
    text, params = compiled("Observation", "phenomenonTime lt now() sub duration'P1Y2M3D'")
    assert "make_interval(months => %(p1)s::integer) + %(p2)s::interval" in text and "AT TIME ZONE 'UTC'" in text
    assert params == {"p1": 14, "p2": timedelta(days=3)}


def test_a_date_takes_part_as_utc_midnight() -> None:
    text, params = compiled("Observation", "resultTime sub 2024-05-01 gt duration'PT1H'")
    assert "::date::timestamp AT TIME ZONE 'UTC'" in text and params["p2"] == timedelta(hours=1)


def test_durations_go_through_relations_and_in() -> None:
    text, params = compiled("Datastream", "Observations/resultTime sub Observations/phenomenonTime "
                                          "in (duration'PT1H', duration'PT2H')")
    assert text.startswith("EXISTS (SELECT 1 FROM ")
    assert list(params.values()) == [timedelta(hours=1), timedelta(hours=2)]


def test_null_arithmetic_on_times_is_missing() -> None:
    text, _ = compiled("Observation", "resultTime add null eq null")
    assert text == "(NULL IS NULL)"


def test_the_literal_text_never_reaches_the_sql() -> None:
    text, params = compiled("Observation", "resultTime gt now() sub duration'P12DT3H'")
    assert "P12DT3H" not in text and "12" not in text and params == {"p1": timedelta(days=12, hours=3)}


def test_orderby_takes_time_arithmetic() -> None:
    text, params = compiled("Observation", "resultTime sub phenomenonTime desc, phenomenonTime add duration'PT1H'",
                            option="orderby")
    assert text.startswith('("e"."result_time" - coalesce("e"."phenomenon_time_end", "e"."phenomenon_time_start"))')
    assert params == {"p1": timedelta(hours=1)}


def test_nesting_grows_the_sql_linearly() -> None:
    def size(n: int) -> int:
        expression = "resultTime sub phenomenonTime"
        for _ in range(n):
            expression = f"(({expression}) add (phenomenonTime sub resultTime)) mul -2"
        return len(compiled("Observation", f"{expression} eq duration'PT1H'")[0])
    assert size(40) < 2.2 * size(20)


# ------------------------------------------------------------------------------------------ errors


def test_a_string_plus_a_duration_says_what_add_takes() -> None:
    rejected("Thing", "name add duration'P1D' eq now()",
             "cannot add name (a string value) and duration'P1D' (a duration value)",
             "a datetime (or interval) and a duration")


def test_a_duration_compared_with_a_number_says_what_it_compares_with() -> None:
    rejected("Observation", "duration'P1D' gt 5", "cannot compare a number value with a duration",
             "compares with another duration")


def test_a_datetime_compared_with_a_duration_is_rejected() -> None:
    rejected("Observation", "resultTime gt duration'P1D'", "cannot compare a datetime value with a duration")


def test_a_datetime_plus_a_number_is_rejected() -> None:
    rejected("Observation", "now() add 5 gt resultTime", "cannot add now(…) (a datetime value) and 5",
             "add takes two numbers")


@pytest.mark.parametrize("expression", [
    "duration'P1D' sub now() gt now()",
    "duration'P1D' div duration'PT1H' eq 24",
    "duration'P1D' mod 2 eq duration'P1D'",
    "now() mul duration'P1D' eq null",
    "2 div duration'P1D' eq null",
    "parameters/x sub duration'P1D' gt now()",
])
def test_arithmetic_outside_the_supported_kinds_is_a_400(expression: str) -> None:
    rejected("Observation", expression, "cannot", "takes")


def test_a_duration_is_not_a_condition() -> None:
    rejected("Observation", "duration'P1D'", "duration value, not a condition")


@pytest.mark.parametrize("expression", [
    "duration'P1M' gt duration'P30D'",
    "now() sub phenomenonTime gt duration'P1Y'",
    "duration'P1M' mul 2 eq duration'P2M'",
])
def test_calendar_durations_do_not_compare_or_scale(expression: str) -> None:
    rejected("Observation", expression, "years or months", "phenomenonTime lt now() sub duration'P1M'")


def test_ordering_by_a_calendar_duration_is_rejected() -> None:
    rejected("Observation", "(now() sub phenomenonTime) add duration'P1M'", "years or months", option="orderby")


def test_a_span_scaled_by_a_non_literal_is_rejected() -> None:
    rejected("Observation", "(resultTime sub phenomenonTime) mul result gt duration'PT1H'", "number literal")
