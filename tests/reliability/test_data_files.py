"""Reliability of the data loaders under bad input: property-based (hypothesis) tests.

Every input, however broken, must end in a result or a `TaskDataError` whose message names the
file (and the row and field where one is at fault); never in another exception. Valid rows
written by ``csv.writer`` / ``json.dumps`` / plain lines must come back exactly, as strings.

Each property counts the examples it ran (`RUNS`); the last test of the module checks that every
property that ran reached its ``max_examples`` and prints the counts (visible with ``pytest -s``).
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

import pytest
from _counted import CountedProperties
from hypothesis import HealthCheck
from hypothesis import strategies as st

from continual.data import Task, read_labelled, read_texts
from continual.errors import TaskDataError

SETTINGS = dict(
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
prop = CountedProperties(**SETTINGS)
RUNS, EXPECTED = prop.runs, prop.expected


# -- strategies --------------------------------------------------------------------------------

# Any character but NUL and surrogates (which no UTF-8 file can hold); rich in the ones that
# break naive parsers: quotes, commas, line breaks, U+2028, NEL, form feed, BOM, tabs.
TRICKY = "\",'\r\n\t\x0b\x0c\x1c\x85\u2028\u2029\ufeff;|\\{}[]: "
characters = st.one_of(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    st.sampled_from(TRICKY),
)
# Non-blank (blank texts are refused on purpose) and not starting with U+FEFF, which at the very
# start of a file is a byte-order mark and dropped.
field = st.text(characters, min_size=1, max_size=40).filter(
    lambda s: s.strip() and not s.startswith("\ufeff")
)
label = st.text(characters, min_size=1, max_size=12).filter(lambda s: s.strip())
line_text = st.text(  # one plain-text line: no CR or LF inside
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r\n"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() and not s.startswith("\ufeff"))
rows = st.lists(st.tuples(field, label), min_size=1, max_size=12)
number = st.one_of(st.integers(-(10**30), 10**30), st.floats(allow_nan=False, allow_infinity=False))
BAD_VALUES = [None, True, False, [], ["a"], {}, {"a": 1}, "", "   ", "\t\n"]
SUFFIXES = [".csv", ".jsonl", ".json", ".txt"]


# -- helpers ----------------------------------------------------------------------------------


def write(directory: Path, suffix: str, data: bytes, name: str = "data") -> Path:
    path = directory / f"{name}{suffix}"
    path.write_bytes(data)
    return path


def csv_bytes(
    header: list[str], records: list[list[str]], *, crlf: bool = True, bom: bool = False
) -> bytes:
    out = io.StringIO(newline="")
    # csv.writer leaves a lone "\r" unquoted when the line terminator is "\n": quote all then.
    writer = csv.writer(
        out,
        lineterminator="\r\n" if crlf else "\n",
        quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL,
    )
    writer.writerow(header)
    writer.writerows(records)
    return (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8")


def jsonl_bytes(
    objects: list[object],
    *,
    crlf: bool = False,
    bom: bool = False,
    ascii_only: bool = True,
    blank_lines: bool = False,
) -> bytes:
    end = "\r\n" if crlf else "\n"
    lines = []
    for obj in objects:
        lines.append(json.dumps(obj, ensure_ascii=ascii_only))
        if blank_lines:
            lines.append("  ")
    return (b"\xef\xbb\xbf" if bom else b"") + (end.join(lines) + end).encode("utf-8")


def outcome(function, path: Path, *args):
    """``function(path)``: its result, or the `TaskDataError` after checking its message.

    Any other exception propagates and fails the property.
    """
    try:
        return function(path, *args), None
    except TaskDataError as error:
        message = str(error)
        assert str(path) in message, f"message does not name the file: {message}"
        return None, message


def check_labelled(result) -> None:
    assert isinstance(result, list) and result
    for text, gold in result:
        assert isinstance(text, str) and text.strip() and "\x00" not in text
        assert isinstance(gold, str) and gold.strip()


def check_texts(result) -> None:
    assert isinstance(result, list) and result
    assert all(isinstance(text, str) and text.strip() for text in result)


def check_task(task: Task) -> None:
    assert isinstance(task, Task) and len(task.labels) >= 2
    known = set(task.labels)
    for split in (task.train, task.validation, task.test):
        assert all(gold in known for _, gold in split)


def every_loader(path: Path) -> list[str]:
    """Run read_labelled, read_texts and Task.from_files on one file; their error messages."""
    messages = []
    result, message = outcome(read_labelled, path)
    if message is None:
        check_labelled(result)
    else:
        messages.append(message)
    result, message = outcome(read_texts, path)
    if message is None:
        check_texts(result)
    else:
        messages.append(message)
    result, message = outcome(lambda p: Task.from_files("t", p), path)
    if message is None:
        check_task(result)
    else:
        messages.append(message)
    return messages


def row_of(message: str) -> int | None:
    found = re.search(r"\brow (\d+)\b", message)
    return int(found.group(1)) if found else None


# -- anything at all --------------------------------------------------------------------------


@prop(400, data=st.binary(max_size=3000), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes_give_a_result_or_a_task_data_error(tmp_path, data, suffix):
    path = write(tmp_path, suffix, data)
    for message in every_loader(path):
        row = row_of(message)
        if row is not None:  # a row number points at a row that exists
            assert 1 <= row <= data.count(b"\n") + data.count(b"\r") + 1, message


def _valid_file(draw_rows, fmt: str) -> bytes:
    if fmt == "csv":
        return csv_bytes(["text", "label"], [list(row) for row in draw_rows])
    if fmt == "jsonl":
        return jsonl_bytes([{"text": t, "label": g} for t, g in draw_rows], ascii_only=False)
    return "\n".join(t.replace("\r", " ").replace("\n", " ") for t, _ in draw_rows).encode()


@prop(
    300,
    rows=rows,
    fmt=st.sampled_from(["csv", "jsonl", "txt"]),
    suffix=st.sampled_from(SUFFIXES),
    cuts=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 8), st.binary(max_size=6)), max_size=4),
)
def test_damaged_valid_files_give_a_result_or_a_task_data_error(tmp_path, rows, fmt, suffix, cuts):
    """A valid file with bytes cut out, inserted or truncated at random places."""
    data = bytearray(_valid_file(rows, fmt))
    for where, cut, insert in cuts:
        position = int(where * len(data))
        data[position : position + cut] = insert
    every_loader(write(tmp_path, suffix, bytes(data)))


# -- encodings ----------------------------------------------------------------------------------


@prop(
    300,
    rows=rows,
    fmt=st.sampled_from(["csv", "jsonl", "txt"]),
    encoding=st.sampled_from(
        ["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8", "utf-8-sig"]
    ),
)
def test_files_in_other_encodings_are_refused_never_misread(tmp_path, rows, fmt, encoding):
    """UTF-8 (with or without BOM) reads back exactly; UTF-16/32 are always refused; a
    latin-1/cp1252 file is refused unless its bytes are valid UTF-8, pointing at the bad byte."""
    text = _valid_file(rows, fmt).decode("utf-8")
    # latin-1 and cp1252 cannot hold every character: those become "?".
    raw = text.encode(encoding, errors="strict" if encoding.startswith("utf") else "replace")
    path = write(tmp_path, "." + fmt, raw)
    reader = read_texts if fmt == "txt" else read_labelled
    result, message = outcome(reader, path)
    if encoding.startswith(("utf-16", "utf-32")):
        assert message is not None and "UTF-8" in message, (encoding, message)
    elif encoding.startswith("utf-8"):
        assert message is None, message
        expected = (
            [t.replace("\r", " ").replace("\n", " ") for t, _ in rows]
            if fmt == "txt"
            else list(rows)
        )
        assert result == expected
    else:
        try:
            raw.decode("utf-8")
            valid = True
        except UnicodeDecodeError as error:
            valid = False
            bad_byte = error.start
        if valid:  # the same characters in UTF-8: read as written
            assert message is None, message
        else:
            assert message is not None and f"not valid UTF-8 at byte {bad_byte}" in message
            assert raw[bad_byte] >= 0x80


# -- exact round trips --------------------------------------------------------------------------


@prop(
    300,
    rows=rows,
    crlf=st.booleans(),
    bom=st.booleans(),
    extra=st.lists(st.sampled_from(["id", "source", "note", "Text", "LABEL"]), unique=True),
    seed=st.integers(0, 2**16),
)
def test_csv_written_by_csv_writer_reads_back_exactly(tmp_path, rows, crlf, bom, extra, seed):
    header = ["text", "label", *extra]
    random.Random(seed).shuffle(header)
    records = [
        [{"text": t, "label": g}.get(column, f"{column}-{i}") for column in header]
        for i, (t, g) in enumerate(rows)
    ]
    path = write(tmp_path, ".csv", csv_bytes(header, records, crlf=crlf, bom=bom))
    assert read_labelled(path) == list(rows)
    assert read_texts(path) == [t for t, _ in rows]


@prop(
    300,
    pairs=st.lists(st.tuples(st.one_of(field, number), label), min_size=1, max_size=12),
    crlf=st.booleans(),
    bom=st.booleans(),
    ascii_only=st.booleans(),
    blank=st.booleans(),
    extra=st.dictionaries(
        st.sampled_from(["id", "meta", "Label"]),
        st.one_of(st.none(), st.booleans(), st.lists(st.integers())),
    ),
)
def test_jsonl_written_by_json_dumps_reads_back_as_strings(
    tmp_path, pairs, crlf, bom, ascii_only, blank, extra
):
    objects = [{**extra, "text": t, "label": g} for t, g in pairs]
    path = write(
        tmp_path,
        ".jsonl",
        jsonl_bytes(objects, crlf=crlf, bom=bom, ascii_only=ascii_only, blank_lines=blank),
    )
    expected = [(t if isinstance(t, str) else str(t), g) for t, g in pairs]
    assert read_labelled(path) == expected
    assert read_texts(path) == [t for t, _ in expected]


@prop(
    200,
    lines=st.lists(line_text, min_size=1, max_size=20),
    crlf=st.booleans(),
    bom=st.booleans(),
    trailing=st.booleans(),
    blanks=st.lists(st.integers(0, 20), max_size=4),
)
def test_plain_text_lines_read_back_exactly(tmp_path, lines, crlf, bom, trailing, blanks):
    written = list(lines)
    for position in blanks:
        written.insert(min(position, len(written)), " \t ")
    end = "\r\n" if crlf else "\n"
    data = end.join(written) + (end if trailing else "")
    path = write(tmp_path, ".txt", (b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    assert read_texts(path) == lines


# -- one bad row or field: the message names it -----------------------------------------------


@prop(
    300,
    rows=rows,
    bad_row=st.integers(0, 11),
    column=st.sampled_from(["text", "label"]),
    bad=st.one_of(
        st.sampled_from(BAD_VALUES + ["missing", "nan", "inf"]),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers()),
    ),
)
def test_jsonl_row_with_a_bad_value_is_named(tmp_path, rows, bad_row, column, bad):
    bad_row = min(bad_row, len(rows) - 1)
    objects = [{"text": t, "label": g} for t, g in rows]
    if bad == "missing":
        del objects[bad_row][column]
    elif bad in ("nan", "inf"):
        objects[bad_row][column] = float(bad)  # json.dumps writes NaN / Infinity
    else:
        objects[bad_row][column] = bad
    path = write(tmp_path, ".jsonl", jsonl_bytes(objects))
    _, message = outcome(read_labelled, path)
    assert message is not None, f"accepted {bad!r} as a {column}"
    assert f"row {bad_row + 1}" in message and repr(column) in message, message
    every_loader(path)


@prop(
    300,
    rows=rows,
    bad_row=st.integers(0, 11),
    damage=st.sampled_from(
        [
            "extra field",
            "short row",
            "empty text",
            "empty label",
            "blank text",
            "no label column",
            "no text column",
        ]
    ),
    crlf=st.booleans(),
)
def test_csv_row_with_a_bad_field_is_named(tmp_path, rows, bad_row, damage, crlf):
    bad_row = min(bad_row, len(rows) - 1)
    header = ["text", "label"]
    records = [[t, g] for t, g in rows]
    if damage == "extra field":
        records[bad_row].append("surplus")
    elif damage == "short row":
        records[bad_row] = records[bad_row][:1]
    elif damage == "empty text":
        records[bad_row][0] = ""
    elif damage == "empty label":
        records[bad_row][1] = ""
    elif damage == "blank text":
        records[bad_row][0] = " \t "
    elif damage == "no label column":
        header, bad_row = ["text", "category"], 0
    else:
        header, bad_row = ["body", "label"], 0
    path = write(tmp_path, ".csv", csv_bytes(header, records, crlf=crlf))
    _, message = outcome(read_labelled, path)
    assert message is not None, damage
    assert f"row {bad_row + 1}" in message, message
    if damage in ("empty text", "blank text", "no text column"):
        assert "'text'" in message, message
    if damage in ("empty label", "no label column"):
        assert "'label'" in message, message
    every_loader(path)


# -- tasks from files -------------------------------------------------------------------------


@prop(
    250,
    train=st.lists(
        st.tuples(field, st.sampled_from(["a", "b", "c", " a", "1"])), min_size=1, max_size=30
    ),
    test=st.one_of(
        st.none(),
        st.lists(st.tuples(field, st.sampled_from(["a", "b", "z"])), min_size=1, max_size=10),
    ),
    fmt=st.sampled_from(["csv", "jsonl"]),
    seed=st.integers(0, 100),
)
def test_task_from_files_keeps_every_row_or_names_the_file(tmp_path, train, test, fmt, seed):
    def save(name, pairs):
        data = (
            csv_bytes(["text", "label"], [list(p) for p in pairs])
            if fmt == "csv"
            else jsonl_bytes([{"text": t, "label": g} for t, g in pairs])
        )
        return write(tmp_path, "." + fmt, data, name)

    train_path = save("train", train)
    test_path = save("test", test) if test is not None else None
    try:
        task = Task.from_files("t", train_path, test_path, seed=seed)
    except TaskDataError as error:
        assert str(train_path) in str(error)
        labels = {g for _, g in train}
        unknown = test is not None and not {g for _, g in test} <= labels
        assert len(labels) < 2 or unknown, str(error)
        return
    check_task(task)
    assert task.labels == sorted({g for _, g in train})
    kept = task.train + task.validation + (task.test if test is None else [])
    assert sorted(kept) == sorted(train)  # a partition: nothing lost, nothing duplicated
    if test is not None:
        assert task.test == list(test)


# -- sizes and nesting (not generated) ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt"])
def test_huge_rows_and_many_rows_read_back(tmp_path, fmt):
    huge = "word " * 1_000_000 + "end"  # 5 MB in one field (over csv's default 128 KiB limit)
    pairs = [(huge, "big")] + [(f"row {i}", "small") for i in range(30_000)]
    path = write(tmp_path, "." + fmt, _valid_file(pairs, fmt))
    if fmt == "txt":
        assert read_texts(path) == [t for t, _ in pairs]
    else:
        assert read_labelled(path) == pairs


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("content", [b"", b"\n\n\r\n", b"   \t\n", b"\xef\xbb\xbf"])
def test_empty_files_are_refused_naming_the_file(tmp_path, suffix, content):
    path = write(tmp_path, suffix, content)
    messages = every_loader(path)
    assert len(messages) == 3 and all(str(path) in m for m in messages)


@pytest.mark.parametrize(
    "line, fault",
    [
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ('{"text": "a", "label": 1' + "0" * 5000 + "}", "long number"),
        ('{"text": "a", "label": 1e999}', "infinite number"),
        ('{"text": NaN, "label": "x"}', "NaN"),
    ],
)
def test_jsonl_that_breaks_the_json_parser_is_a_task_data_error(tmp_path, line, fault):
    path = write(tmp_path, ".jsonl", ('{"text": "ok", "label": "x"}\n' + line + "\n").encode())
    _, message = outcome(read_labelled, path)
    assert message is not None and "row 2" in message, fault


def test_utf16_plain_text_without_bom_is_refused(tmp_path):
    """UTF-16-LE of ASCII text is valid UTF-8 full of NULs: it must not be read as text."""
    path = write(tmp_path, ".txt", "hello\nworld\n".encode("utf-16-le"))
    _, message = outcome(read_texts, path)
    assert message is not None and "NUL" in message and "UTF-8" in message


def test_jsonl_with_unicode_line_separators_inside_strings(tmp_path):
    """json.dumps(ensure_ascii=False) leaves U+2028, U+2029 and NEL raw inside strings."""
    pairs = [("a\u2028b", "x\x85y"), ("c\u2029d", "x\x85y"), ("e\x0cf", "z")]
    path = write(
        tmp_path,
        ".jsonl",
        jsonl_bytes([{"text": t, "label": g} for t, g in pairs], ascii_only=False),
    )
    assert read_labelled(path) == pairs


# -- what is not a plain, bounded file: symlinks, FIFOs, devices, folders, oversized files ------

SPECIAL_KINDS = [
    "fifo",
    "symlink to fifo",
    "dev/zero",
    "symlink to dev/zero",
    "dev/null",
    "directory",
    "broken symlink",
    "symlink loop",
    "oversized",
    "symlink to good",
    "socket",
]


def make_special(directory: Path, kind: str, suffix: str, good: bytes) -> Path:
    """A path of the given kind, named like a data file."""
    import os
    import socket

    path = directory / f"special{suffix}"
    target = directory / f"target{suffix}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to fifo":
        os.mkfifo(target)
        path.symlink_to(target)
    elif kind == "dev/zero":
        path = Path("/dev/zero")
    elif kind == "symlink to dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "dev/null":
        path.symlink_to("/dev/null")
    elif kind == "directory":
        path.mkdir()
    elif kind == "broken symlink":
        path.symlink_to(directory / "nowhere")
    elif kind == "symlink loop":
        path.symlink_to(path)
    elif kind == "oversized":
        path.write_bytes(good)
    elif kind == "symlink to good":
        target.write_bytes(good)
        path.symlink_to(target)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    return path


def finishes(function, *args, seconds: float = 20.0):
    """``function(*args)`` run in a thread that must finish within ``seconds`` (a read that
    blocks on a FIFO would hang the test run otherwise); its result or exception."""
    import threading

    box: dict = {}

    def run():
        try:
            box["result"] = function(*args)
        except BaseException as error:  # handed back to the caller
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function} blocked for {seconds} s on {args}"
    if "error" in box:
        raise box["error"]
    return box.get("result")


@prop(
    120,
    kind=st.sampled_from(SPECIAL_KINDS),
    suffix=st.sampled_from(SUFFIXES),
    rows=rows,
    limit=st.integers(1, 400),
)
def test_fifos_devices_links_folders_and_oversized_files_are_refused_quickly(
    tmp_path, monkeypatch, kind, suffix, rows, limit
):
    """Never a block, never a read without bound: a TaskDataError naming the file, or (for a
    symlink to a good file, which a user may well keep) the rows."""
    import tempfile

    from continual import files

    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    good = (
        csv_bytes(["text", "label"], [list(r) for r in rows])
        if suffix == ".csv"
        else jsonl_bytes([{"text": t, "label": g} for t, g in rows])
        if suffix in (".jsonl", ".json")
        else "\n".join(t for t, _ in rows).encode()
    )
    path = make_special(directory, kind, suffix, good)
    with monkeypatch.context() as patch:  # the limit is this example's only
        if kind == "oversized":
            patch.setattr(files, "MAX_DATA_FILE_BYTES", min(limit, len(good) - 1))
        _refused_quickly(path, kind, suffix)


def _refused_quickly(path: Path, kind: str, suffix: str) -> None:
    from continual import files

    for function in (read_labelled, read_texts):
        if suffix not in (".csv", ".jsonl", ".json") and function is read_labelled:
            continue
        try:
            finishes(function, path)
        except TaskDataError as error:
            message = str(error)
            assert str(path) in message, message
            if "unsupported file type" in message:
                assert path.suffix.lower() not in (".csv", ".jsonl", ".json")
            elif kind == "oversized":
                assert "over the limit" in message and str(files.MAX_DATA_FILE_BYTES) in message
            elif "fifo" in kind:
                assert "FIFO" in message, message
            elif "dev/" in kind:
                assert "device" in message, message
            elif kind == "directory":
                assert "directory" in message, message
            else:
                assert kind != "symlink to good", message
        else:
            assert kind == "symlink to good", f"{kind} accepted"


@pytest.fixture(scope="module", autouse=True)
def every_property_ran_its_examples():
    """When the module is done: every property that ran reached its max_examples."""
    yield
    prop.check_every_property_ran("data files")
