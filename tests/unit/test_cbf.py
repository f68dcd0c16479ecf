"""Property-based tests of the pure CBF module: always valid, one tag set per resource, exact decimals."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cloudzero_provider.cbf as cbf_module
from cloudzero_provider.cbf import (
    CBFError,
    cbf_cost,
    cbf_lines,
    exact_decimal,
    resource_id,
    to_cbf,
    transform,
    transform_pairs,
)
from cloudzero_provider.cbf_rules import NUMBER_RE, row_errors
from cloudzero_provider.dimensions import BUILTIN, DEFAULT_DIMENSIONS, resolve
from cloudzero_provider.json_lines import encode_line

H13 = datetime(2026, 11, 1, 13, tzinfo=timezone.utc)
DIMS = resolve([*DEFAULT_DIMENSIONS, "end_user", "api_key_alias", "tag:taskName"])
TAGS = {d.name: d.tag for d in DIMS}
decimals = st.decimals(min_value=0, allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: d.adjusted() < 30 and d.adjusted() > -60
)
values = st.one_of(st.none(), st.text(max_size=40))
dim_values = st.fixed_dictionaries({d.name: values for d in DIMS})
hours = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda t: t.replace(minute=0, second=0, microsecond=0, tzinfo=timezone.utc)
)


@given(hours, dim_values, decimals, st.integers(min_value=0, max_value=10**15), st.integers(0, 10**9))
@settings(max_examples=300)
def test_every_row_is_valid_cbf(hour, dims, spend, tokens, requests):
    row = to_cbf(hour, dims, spend=spend, total_tokens=tokens, requests=requests, tag_keys=TAGS)
    assert row_errors(row) == []
    assert row["time/usage_start"] == hour.strftime("%Y-%m-%dT%H:00:00Z")
    assert Decimal(row["cost/cost"]) == spend
    assert all(isinstance(v, str) for v in row.values())
    assert not any(k.startswith("resource/tag:") and ("token" in k or "request" in k) for k in row)


@given(st.lists(dim_values, min_size=2, max_size=30))
@settings(max_examples=200)
def test_one_tag_set_per_resource_id(dim_sets):
    seen: dict[str, dict[str, str]] = {}
    for dims in dim_sets:
        row = to_cbf(H13, dims, spend="1", total_tokens=1, requests=1, tag_keys=TAGS)
        tags = {k: v for k, v in row.items() if k.startswith("resource/tag:")}
        assert seen.setdefault(row["resource/id"], tags) == tags
    distinct = {tuple(sorted(d.items(), key=lambda kv: kv[0])) for d in dim_sets}
    assert len({resource_id(dict(d)) for d in distinct}) == len(distinct)


def test_ids_differing_only_in_case_or_punctuation_stay_apart():
    variants = ["Team A", "team a", "team-a", "team_a", "team.a", "TEAM-A", "team a ", ""]
    ids = {resource_id({"team_id": v, "model": "gpt-4o"}) for v in variants}
    ids.add(resource_id({"team_id": None, "model": "gpt-4o"}))
    assert len(ids) == len(variants) + 1


@given(decimals)
@settings(max_examples=500)
def test_decimal_round_trip_is_exact(value):
    text = exact_decimal(value)
    assert NUMBER_RE.match(text), text
    assert Decimal(text) == value
    assert "e" not in text.lower()


@pytest.mark.parametrize(
    ("value", "text"),
    [("1E-12", "0.000000000001"), ("0.300000000000000", "0.3"), ("1E+6", "1000000"), ("-0", "0"), ("0E-20", "0"),
     ("0.30000000000000004", "0.30000000000000004"), ("100", "100")],
)  # fmt: skip
def test_exact_decimal_examples(value, text):
    assert exact_decimal(value) == text


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-0.1", "abc"])
def test_exact_decimal_refuses(bad):
    with pytest.raises(CBFError):
        exact_decimal(bad)


def test_litellm_shape():
    row = to_cbf(H13, {"team_id": "team-123", "model": "gpt-4o", "provider": "openai"},
                 spend="0.002", total_tokens=150, requests=3, tag_keys=TAGS)  # fmt: skip
    assert row["resource/id"].startswith("czrn:litellm:openai:cross-region:team-123:llm-usage:gpt-4o-")
    assert row["resource/service"] == "litellm" and row["resource/account"] == "team-123"
    assert row["resource/region"] == "cross-region" and row["resource/usage_family"] == "llm-usage"
    assert row["resource/tag:provider"] == "openai" and row["resource/tag:model"] == "gpt-4o"
    assert row["usage/amount"] == "150" and row["lineitem/type"] == "Usage"
    assert row["lineitem/description"] == "LiteLLM spend: 3 requests"


def test_transform_names_the_bad_row():
    rows = [
        {
            "hour": H13,
            "dims": {"model": "m"},
            "spend": "1",
            "total_tokens": 1,
            "requests": 1,
        },
        {
            "hour": H13,
            "dims": {"model": "m"},
            "spend": "-1",
            "total_tokens": 1,
            "requests": 1,
        },
    ]
    with pytest.raises(
        CBFError, match=r"aggregated row 1 \(hour '2026-11-01T13:00:00Z'\): spend '-1' is negative"
    ):
        list(transform(rows, resolve(["model"])))


@given(
    st.lists(
        st.tuples(hours, st.sampled_from(range(4)), decimals, st.integers(-2, 10**6), st.integers(0, 10**6)),
        min_size=1,
        max_size=40,
    ),
    st.lists(dim_values, min_size=4, max_size=4),
)
@settings(max_examples=200)
def test_transform_reuses_a_combination_and_still_checks_every_row(rows, combinations):
    """Rows that share a dimension combination (its resource columns built and checked once) come out exactly as
    each row built and checked whole would, and a bad figure in any of them still fails, naming that row."""
    staged = [
        {"hour": h, "dims": dict(combinations[c]), "spend": str(sp), "total_tokens": t, "requests": r}
        for h, c, sp, t, r in rows
    ]
    expected: list[dict[str, str]] = []
    failure = None
    for index, row in enumerate(staged):
        try:
            cbf = to_cbf(row["hour"], row["dims"], spend=row["spend"], total_tokens=row["total_tokens"],
                         requests=row["requests"], tag_keys=TAGS)  # fmt: skip
        except CBFError as exc:
            failure = f"aggregated row {index} (hour '{row['hour']:%Y-%m-%dT%H:00:00Z}'): {exc}"
            break
        assert row_errors(cbf) == []
        expected.append(cbf)
    if failure is None:
        out = list(transform(staged, DIMS))
        assert out == expected
        assert [list(r) for r in out] == [list(r) for r in expected], "columns in the same order"
    else:
        with pytest.raises(CBFError) as caught:
            list(transform(staged, DIMS))
        assert str(caught.value) == failure


def test_dimension_resolution_errors():
    assert [d.name for d in resolve(None)] == list(DEFAULT_DIMENSIONS)
    with pytest.raises(ValueError, match="unknown dimension 'team'"):
        resolve(["team"])
    with pytest.raises(ValueError, match="listed twice"):
        resolve(["model", "model"])
    with pytest.raises(ValueError, match="request-tag prefix 'a b'"):
        resolve(["tag:a b"])
    assert set(DEFAULT_DIMENSIONS) <= set(BUILTIN)


def test_sums_never_round():
    from cloudzero_provider.cbf import exact_sum

    parts = ["1000000000", "0.000000000000000000001", "1E-300"]
    total = exact_sum(parts)
    assert exact_decimal(total) == "1000000000.000000000000000000001" + "0" * 278 + "1"
    assert sum(Decimal(p) for p in parts) != total, "the default context would have rounded"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "(other)"]),
            st.sampled_from(["m1", "m2", "m3"]),
            st.decimals(min_value=0, max_value=100, places=6),
        ),
        min_size=0,
        max_size=40,
        unique_by=lambda t: (t[0], t[1]),
    ),
    st.integers(1, 8),
)
@settings(max_examples=300)
def test_capping_an_hours_rows_keeps_its_totals_exactly(groups, cap):
    from cloudzero_provider.cbf import fold_smallest_groups

    rows = [{"hour": H13, "dims": {"user": u, "model": m}, "spend": str(s), "requests": 1, "total_tokens": 3}
            for u, m, s in groups]  # fmt: skip
    out, folded = fold_smallest_groups(rows, cap)
    assert len(out) <= cap
    assert sum(Decimal(r["spend"]) for r in out) == sum(Decimal(r["spend"]) for r in rows)
    assert sum(r["requests"] for r in out) == len(rows) and sum(r["total_tokens"] for r in out) == 3 * len(
        rows
    )
    assert len({tuple(sorted(r["dims"].items())) for r in out}) == len(out), (
        "no two rows with the same dimensions"
    )
    if len(rows) > cap:
        assert folded == len(rows) - (cap - 1)
        kept = [
            r
            for r in rows
            if r["dims"] in [o["dims"] for o in out] and set(r["dims"].values()) != {"(other)"}
        ]
        gone = [r for r in rows if r not in kept and set(r["dims"].values()) != {"(other)"}]
        if kept and gone:
            assert min(Decimal(r["spend"]) for r in kept) >= max(Decimal(r["spend"]) for r in gone), (
                "smallest folded"
            )


numeric_texts = st.one_of(
    decimals.map(lambda d: format(d, "f")),  # as PostgreSQL writes a numeric: plain, trailing zeros kept
    st.from_regex(r"-?[0-9]{0,3}(\.[0-9]{0,4})?([eE][+-]?[0-9]{1,2})?", fullmatch=True),
    st.sampled_from(
        [
            "0",
            "0.000",
            "1.0",
            "10.500",
            "00.5",
            "-0",
            "1e-10",
            "1E+3",
            " 1",
            "1.",
            ".5",
            "NaN",
            "Infinity",
            "",
            "٣",
        ]
    ),
)


@given(numeric_texts)
@settings(max_examples=800)
def test_cbf_cost_by_text_is_exact_decimal(text):
    """The text shortcut gives exactly what exact_decimal gives, or declines (never a different answer)."""
    fast = cbf_cost(text)
    try:
        slow = exact_decimal(text)
    except CBFError:
        assert fast is None
        return
    assert fast in (None, slow)
    if format(Decimal(text), "f") == text and not text.startswith("-"):  # PostgreSQL's form: always by text
        assert fast == slow


staged_rows = st.fixed_dictionaries(
    {
        "hour": st.sampled_from(
            [H13, H13.replace(hour=14), datetime(2026, 11, 1, 13, 30, tzinfo=timezone.utc)]
        ),
        "dims": st.sampled_from(
            [
                {"team_id": "t1", "model": "m"},
                {"team_id": None, "model": "m"},
                {"team_id": "t\n1", "model": "x"},
                {"team_id": "t1", "model": ["unhashable"]},
                {"team_id": 5, "model": "m"},
                {"model": "m", "team_id": "t1"},  # the same values in another order: other bytes
                {"team_id": 'é"\\ 团队', "model": "\u2028</script>"},
            ]
        ),
        "spend": st.one_of(numeric_texts, decimals, st.just(None)),
        "total_tokens": st.one_of(st.integers(-2, 10**6), st.just("12"), st.just(True), st.just(10**500)),
        "requests": st.one_of(st.integers(0, 3), st.just(1.0)),
    }
)


@given(st.lists(staged_rows, max_size=12))
@settings(max_examples=400)
def test_transform_pairs_equals_row_by_row(rows):
    """Built once per combination of dimension values or row by row, every CBF row and every error is the same."""
    dims = resolve(["team_id", "model"])
    tags = {d.name: d.tag for d in dims}
    expected: list[dict[str, str]] = []
    error = None
    for index, row in enumerate(rows):
        try:
            cbf = to_cbf(row["hour"], row["dims"], spend=row["spend"], total_tokens=int(row["total_tokens"]),
                         requests=int(row["requests"]), tag_keys=tags)  # fmt: skip
        except (CBFError, KeyError, TypeError, ValueError, AttributeError) as exc:
            error = f"aggregated row {index} (hour {row['hour']:'%Y-%m-%dT%H:00:00Z'}): {exc}"
            break
        if row_errors(cbf):
            error = f"aggregated row {index} (hour {row['hour']:'%Y-%m-%dT%H:00:00Z'}): " + "; ".join(
                row_errors(cbf)
            )
            break
        expected.append(cbf)
    got: list[dict[str, str]] = []
    try:
        for _, cbf in transform_pairs(rows, dims):
            got.append(cbf)
    except CBFError as exc:
        assert str(exc) == error
    else:
        assert error is None
    assert [list(r.items()) for r in got] == [
        list(r.items()) for r in expected
    ]  # key order too: the bytes sent
    # The staged lines, built from the combination's encoded columns: the bytes encode_line writes of each row,
    # with its cost and amount as the row holds them, and the same error at the same row.
    lines: list[tuple[str, str, bytes]] = []
    try:
        for source, cost, amount, line in cbf_lines(rows, dims):
            assert source is rows[len(lines)]
            lines.append((cost, amount, line))
    except CBFError as exc:
        assert str(exc) == error
    else:
        assert error is None
    assert lines == [(r["cost/cost"], r["usage/amount"], encode_line(r)) for r in expected]


def test_lines_stay_exact_when_the_combination_cache_is_cleared(monkeypatch):
    """With room for two combinations, the cache is cleared again and again: every line is still the one its row
    built whole gives, long values cut and hashed included."""
    monkeypatch.setattr(cbf_module, "MAX_CACHED_COMBINATIONS", 2)
    dims = resolve(["team_id", "end_user"])
    rows = [
        {
            "hour": H13.replace(hour=13 + i // 20),
            "dims": {"team_id": f"t{i % 5}", "end_user": ("u" * 300 if i % 2 else 'é"\\') + str(i % 3)},
            "spend": f"{i}.50",
            "total_tokens": i,
            "requests": 1 + i % 2,
        }
        for i in range(40)
    ]
    expected = []
    for row in rows:
        cbf = to_cbf(row["hour"], row["dims"], spend=row["spend"], total_tokens=row["total_tokens"],
                     requests=row["requests"], tag_keys={d.name: d.tag for d in dims})  # fmt: skip
        assert row_errors(cbf) == []
        expected.append((cbf["cost/cost"], cbf["usage/amount"], encode_line(cbf)))
    assert [(cost, amount, line) for _, cost, amount, line in cbf_lines(rows, dims)] == expected
    assert any(len(v) == 256 and "~" in v for _, _, line in expected for v in json.loads(line).values())


def test_a_combination_too_long_to_keep_is_built_whole_each_time(monkeypatch):
    """A caller's huge value is never kept in the cache (it would hold thousands of them): each of its rows is built
    and checked whole, the short combination once, and every line is the same."""
    built: list[int] = []
    whole = cbf_module._checked_cbf
    monkeypatch.setattr(
        cbf_module, "_checked_cbf", lambda i, row, tags: built.append(i) or whole(i, row, tags)
    )
    dims = resolve(["team_id", "end_user"])
    huge = {"hour": H13, "dims": {"team_id": "t", "end_user": "u" * 5000}, "spend": "2.5", "total_tokens": 7,
            "requests": 1}  # fmt: skip
    short = {**huge, "dims": {"team_id": "t", "end_user": "u"}}
    rows = [huge, short, huge, short, huge]
    lines = [line for _, _, _, line in cbf_lines(rows, dims)]
    assert built == [0, 1, 2, 4]
    tags = {d.name: d.tag for d in dims}
    assert lines == [encode_line(whole(i, row, tags)) for i, row in enumerate(rows)]


group_rows = st.fixed_dictionaries(
    {
        # As the extract writes an hour, as a window label names it (decoded), and one a CBF row cannot start at.
        "hour": st.sampled_from(["2026-11-01T13:00:00Z", "2026-11-01T14:00:00Z", "2026-11-01T13Z"]),
        "dims": st.one_of(
            st.sampled_from(
                [
                    {"team_id": "t1", "model": "m"},
                    {"model": "m", "team_id": "t1"},  # the same values in another order: other bytes
                    {"team_id": None, "model": "m"},
                    {"team_id": 'é"\\ 团队\n', "model": "\u2028</script>"},
                    # A value spelling out the rest of a line: a line's dims end where its object does.
                    {
                        "team_id": '},"requests":1,"successes":1,"failures":0,"spend":"9","prompt_tokens":1,'
                        '"completion_tokens":1,"total_tokens":1}',
                        "model": "m",
                    },
                    {"team_id": "t" * 5000, "model": "m"},  # too long to keep: built whole each time
                    {"team_id": 5, "model": "m"},
                    {"team_id": ["t"], "model": "m"},
                ]
            ),
            st.fixed_dictionaries(
                {"team_id": st.one_of(st.none(), st.text(max_size=8)), "model": st.just("m")}
            ),
        ),
        "requests": st.one_of(st.integers(0, 3), st.just(10**30), st.just(-1)),
        "successes": st.one_of(st.none(), st.integers(0, 3)),
        "failures": st.one_of(st.none(), st.integers(0, 3)),
        "spend": st.one_of(numeric_texts, st.just(10**600 // 3).map(str), st.integers(0, 5), st.just(1.5)),
        "prompt_tokens": st.integers(-1, 9),
        "completion_tokens": st.integers(0, 9),
        "total_tokens": st.one_of(st.integers(-2, 10**6), st.just(10**500)),
    }
)


@given(st.lists(st.tuples(group_rows, numeric_texts), max_size=8), st.booleans())
@settings(max_examples=500)
def test_staged_lines_give_what_their_rows_give(pairs, small_cache):
    """A staged line read as its StagedGroup gives the CBF line, cost, amount and error its decoded row gives through
    cbf_lines, whatever its values spell out, with the cache kept or cleared again and again."""
    from cloudzero_provider.cbf import StagedCBF
    from cloudzero_provider.json_lines import decode_line
    from cloudzero_provider.staged_group import group_line, read_group
    from cloudzero_provider.windows import parse_hour

    dims = resolve(["team_id", "model"])
    keys = ["hour", "dims", "requests", "successes", "failures", "spend", "prompt_tokens", "completion_tokens",
            "total_tokens"]  # fmt: skip
    # Each row followed by its combination again in the same hour, another spend: the line read by its bytes.
    rows = [{k: r[k] for k in keys} for row, spend in pairs for r in (row, {**row, "spend": spend})]
    lines = [encode_line(row) for row in rows]
    ints = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
    for row, line in zip(rows, lines, strict=True):  # the extract's f-string writes the same bytes
        if all(type(row[k]) is int for k in ints) and type(row["spend"]) is str and type(row["dims"]) is dict:
            dims_text = encode_line(row["dims"])[:-1].decode()
            assert group_line(*(dims_text if k == "dims" else row[k] for k in keys)) == line
    decoded = [
        {**decode_line(line), "hour": parse_hour(row["hour"])} for row, line in zip(rows, lines, strict=True)
    ]
    expected: list[tuple[str, str, bytes]] = []
    error = None
    try:
        for _, cost, amount, line in cbf_lines(decoded, dims):
            expected.append((cost, amount, line))
    except CBFError as exc:
        error = str(exc)
    # Consecutive lines of one hour together, each its StagedGroup or its decoded row, as staged_groups gives them.
    groups: list[tuple[datetime, list, list[bytes]]] = []
    for line, row in zip(lines, decoded, strict=True):
        item = read_group(line) or row
        if groups and groups[-1][0] == row["hour"]:
            groups[-1][1].append(item)
            groups[-1][2].append(line)
        else:
            groups.append((row["hour"], [item], [line]))
    builder = StagedCBF(dims)
    if small_cache:
        cbf_module.MAX_CACHED_COMBINATIONS, kept = 1, cbf_module.MAX_CACHED_COMBINATIONS
    got: list[tuple[str, str, bytes]] = []
    try:
        for hour, items, hour_lines in groups:
            got.extend(builder.hour_lines(hour, items, hour_lines))
    except CBFError as exc:
        assert str(exc) == error
    else:
        assert error is None
    finally:
        if small_cache:
            cbf_module.MAX_CACHED_COMBINATIONS = kept
    assert got == expected


def test_usual_lines_are_built_from_their_bytes(monkeypatch):
    """A window's usual lines are read as their StagedGroup: only the first line of each hour and of each
    combination is decoded and built whole; every line is the one its row gives."""
    from cloudzero_provider.cbf import StagedCBF
    from cloudzero_provider.json_lines import decode_line
    from cloudzero_provider.staged_group import StagedGroup, read_group

    built: list[int] = []
    whole = cbf_module._checked_cbf
    monkeypatch.setattr(
        cbf_module, "_checked_cbf", lambda i, row, tags: built.append(i) or whole(i, row, tags)
    )
    dims = resolve(["team_id", "model"])
    hours = [H13, H13.replace(hour=14)]
    rows = [
        {"hour": hour, "dims": {"team_id": f"t{i % 10}", "model": "m"}, "requests": i % 3, "successes": 1,
         "failures": None, "spend": f"{i}.{i % 7}0", "prompt_tokens": i, "completion_tokens": 0, "total_tokens": i}
        for hour in hours
        for i in range(300)
    ]  # fmt: skip
    lines = [encode_line({**row, "hour": f"{row['hour']:%Y-%m-%dT%H:00:00Z}"}) for row in rows]
    assert all(type(read_group(line)) is StagedGroup for line in lines)
    builder = StagedCBF(dims)
    got = []
    for hour, hour_lines in ((hours[0], lines[:300]), (hours[1], lines[300:])):
        got.extend(builder.hour_lines(hour, [read_group(line) for line in hour_lines], hour_lines))
    assert built == [*range(10), 300]  # ten combinations, then the next hour's first line
    built.clear()
    expected = [(cost, amount, line) for _, cost, amount, line in cbf_lines(rows, dims)]
    assert got == expected and len(got) == 600
    assert [decode_line(line)["cost/cost"] for _, _, line in got[:3]] == ["0", "1.1", "2.2"]


def test_lines_of_another_form_give_what_their_rows_give():
    """Keys in another order, a key given twice (the last wins, as for json), an extra key, a figure of another
    type: each line, read as its StagedGroup or decoded whole, gives what its decoded row gives."""
    from cloudzero_provider.cbf import StagedCBF
    from cloudzero_provider.json_lines import decode_line
    from cloudzero_provider.staged_group import StagedGroup, read_group

    dims = resolve(["team_id", "model"])
    usual = '"hour":"2026-11-01T13:00:00Z","dims":{"team_id":"t","model":"m"},"requests":2'
    lines = [
        f'{{{usual},"spend":"1.50","total_tokens":7}}\n',
        f'{{"total_tokens":8,"spend":"2.50",{usual}}}\n',  # keys in another order
        f'{{{usual},"spend":"9","total_tokens":9,"spend":"3.0"}}\n',  # the last spend counts
        f'{{{usual},"spend":"4","total_tokens":4,"note":"x"}}\n',  # a key the CBF row does not read
        f'{{{usual},"spend":5,"total_tokens":5}}\n',  # a number, not PostgreSQL's text: decoded whole
        f'{{{usual},"spend":"6","total_tokens":6.0}}\n',
        f'{{{usual},"spend":"7","total_tokens":7,"dims":{{"model":"m","team_id":"t"}}}}\n',  # other dims bytes
    ]
    raw = [line.encode() for line in lines]
    items = [read_group(line) or {**decode_line(line), "hour": H13} for line in raw]
    # Every byte is read: a key the row does not use, or a figure of another type, makes the line decoded whole.
    assert [type(i) is StagedGroup for i in items] == [True, True, True, False, False, False, True]
    rows = [{**decode_line(line), "hour": H13} for line in raw]
    expected = [(cost, amount, line) for _, cost, amount, line in cbf_lines(rows, dims)]
    assert list(StagedCBF(dims).hour_lines(H13, items, raw)) == expected
    assert [cost for cost, _, _ in expected] == ["1.5", "2.5", "3", "4", "5", "6", "7"]
    # Bytes the CBF row does not read are still read: invalid UTF-8 there fails as decode_line fails.
    bad = f'{{{usual},"successes":"\udcff","spend":"2","total_tokens":2}}\n'.encode(
        "utf-8", "surrogateescape"
    )
    assert read_group(bad) is None

    class Stage:  # staged_groups reads only the lines
        @staticmethod
        def read_lines(name: str) -> list[bytes]:
            return [raw[0], bad]

    from cloudzero_provider.pipeline.extract import staged_groups

    with pytest.raises(UnicodeDecodeError):
        list(staged_groups(Stage()))  # type: ignore[arg-type]
