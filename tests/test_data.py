"""Task files: CSV/JSONL/plain-text loading, error messages that name the file and row, splits."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from continual import Task, TaskDataError
from continual.data import read_labelled, read_rows, read_texts, split_examples


def write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


# -- happy paths ----------------------------------------------------------------------------------


def test_csv_labels_are_kept_as_written(tmp_path):
    path = write(
        tmp_path / "t.csv",
        'text,label\nfine day,1\n"a, quoted\ntext",0\nlead zero,01\nspaced, yes \n',
    )
    assert read_labelled(path) == [
        ("fine day", "1"),
        ("a, quoted\ntext", "0"),
        ("lead zero", "01"),
        ("spaced", " yes "),
    ]


def test_csv_extra_columns_in_any_order_are_ignored(tmp_path):
    path = write(tmp_path / "t.csv", "id,label,text\n7,pos,good\n8,neg,bad\n")
    assert read_labelled(path) == [("good", "pos"), ("bad", "neg")]


def test_jsonl_text_numbers_become_strings_and_label_numbers_are_refused(tmp_path):
    lines = [
        {"text": 12, "label": "1"},
        {"text": "bad", "label": "0"},
        {"text": 2.5, "label": "0", "extra": [1]},
    ]
    path = write(tmp_path / "t.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert read_labelled(path) == [("12", "1"), ("bad", "0"), ("2.5", "0")]
    # 1 and "1" would become one label, 1e2 would become "100.0": labels must be strings.
    path = write(
        tmp_path / "n.jsonl", '{"text": "good", "label": "1"}\n{"text": "x", "label": 1}\n'
    )
    raises_naming(path, "row 2", "'label'", "must be a JSON string")


def test_bom_is_dropped(tmp_path):
    path = write(tmp_path / "t.csv", "\ufefftext,label\nhello,a\nbye,b\n")
    assert read_labelled(path) == [("hello", "a"), ("bye", "b")]
    path = write(tmp_path / "t.jsonl", '\ufeff{"text": "hello", "label": "a"}\n')
    assert read_labelled(path) == [("hello", "a")]


def test_crlf_line_endings_are_handled(tmp_path):
    path = write(tmp_path / "t.csv", 'text,label\r\nhello,a\r\n"two\r\nlines",b\r\n')
    assert read_labelled(path) == [("hello", "a"), ("two\r\nlines", "b")]
    path = write(
        tmp_path / "t.jsonl", '{"text": "hello", "label": "a"}\r\n{"text": "bye", "label": "b"}\r\n'
    )
    assert read_labelled(path) == [("hello", "a"), ("bye", "b")]


def test_task_from_files_keeps_file_labels_and_holds_out_splits(tmp_path):
    rows = "".join(f"text number {i},{'1' if i % 2 else '0'}\n" for i in range(40))
    train = write(tmp_path / "train.csv", "text,label\n" + rows)
    task = Task.from_files("numbers", train, seed=0)
    assert task.labels == ["0", "1"]
    assert len(task.test) == 8 and len(task.validation) == 4 and len(task.train) == 28
    assert Counter(label for _, label in task.test) == {"0": 4, "1": 4}
    everything = task.train + task.validation + task.test
    assert sorted(everything) == sorted(read_labelled(train))
    test = write(tmp_path / "test.csv", "text,label\nheld out,1\n")
    given = Task.from_files("numbers", train, test, seed=0)
    assert given.test == [("held out", "1")]
    assert len(given.train) + len(given.validation) == 40


def test_read_texts_plain_text_file(tmp_path):
    path = write(tmp_path / "inputs.txt", "first line\r\n\n   \nsecond, with comma\nthird\n")
    assert read_texts(path) == ["first line", "second, with comma", "third"]


def test_read_texts_csv_needs_only_a_text_column(tmp_path):
    path = write(tmp_path / "inputs.csv", "text\nalpha\nbeta\n")
    assert read_texts(path) == ["alpha", "beta"]


# -- errors name the file, row and field ---------------------------------------------------------


def raises_naming(path, *fragments):
    with pytest.raises(TaskDataError) as error:
        read_labelled(path)
    message = str(error.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    raises_naming(tmp_path / "absent.csv", "not found")


def test_directory_instead_of_a_file(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    raises_naming(tmp_path / "folder.csv", "directory")


def test_missing_text_column(tmp_path):
    path = write(tmp_path / "t.csv", "sentence,label\nhello,a\n")
    raises_naming(path, "row 1", "'text'")


def test_missing_label_column(tmp_path):
    path = write(tmp_path / "t.csv", "text,category\nhello,a\n")
    raises_naming(path, "row 1", "'label'")
    path = write(tmp_path / "t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n')
    raises_naming(path, "row 2", "'label'")


def test_empty_text_names_its_row(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\nhello,a\nbye,b\n   ,a\nlater,b\n")
    raises_naming(path, "row 3", "'text'", "empty")


def test_empty_label_names_its_row(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\nhello,a\nbye,\n")
    raises_naming(path, "row 2", "'label'", "empty")


def test_too_many_fields_names_its_row(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\nhello,a\nbye,b,extra\n")
    raises_naming(path, "row 2")


def test_invalid_json_line_names_its_row(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", \n',
    )
    raises_naming(path, "row 3", "invalid JSON")


def test_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n')
    raises_naming(path, "row 2", "object")


def test_non_text_field_value(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": {"nested": 1}, "label": "x"}\n')
    raises_naming(path, "row 1", "'text'")
    path = write(tmp_path / "u.jsonl", '{"text": "fine", "label": true}\n')
    raises_naming(path, "row 1", "'label'")


def test_non_utf8_bytes(tmp_path):
    path = write(tmp_path / "t.csv", b"text,label\nna\xefve caf\xe9,a\n")
    raises_naming(path, "UTF-8", "byte 13")


def test_empty_file_and_header_only(tmp_path):
    raises_naming(write(tmp_path / "empty.csv", ""), "empty file")
    raises_naming(write(tmp_path / "header.csv", "text,label\n"), "no data rows")


def test_unsupported_suffix(tmp_path):
    raises_naming(write(tmp_path / "t.tsv", "text\tlabel\nhello\ta\n"), "unsupported")


def test_task_with_a_single_label_is_refused(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"x{i},only\n" for i in range(10)))
    with pytest.raises(TaskDataError, match="at least 2 distinct labels") as error:
        Task.from_files("lonely", path)
    assert "lonely" in str(error.value) and "only" in str(error.value)
    assert str(path) in str(error.value)


def test_test_label_unknown_to_training_is_refused(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,x\nb,y\nc,x\nd,y\n")
    test = write(tmp_path / "test.csv", "text,label\ne,z\n")
    with pytest.raises(TaskDataError, match="'z'"):
        Task.from_files("t", train, test)


def test_task_validates_in_memory_examples():
    with pytest.raises(TaskDataError, match="train example 1: empty text"):
        Task("t", train=[("a", "x"), ("  ", "y")])
    with pytest.raises(TaskDataError, match="non-empty"):
        Task(" ", train=[("a", "x"), ("b", "y")])


def test_read_texts_empty_plain_file(tmp_path):
    path = write(tmp_path / "blank.txt", "\n  \n")
    with pytest.raises(TaskDataError, match="no non-empty lines") as error:
        read_texts(path)
    assert str(path) in str(error.value)


def test_read_rows_reports_the_requested_column(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\nhello,a\n")
    with pytest.raises(TaskDataError, match="'source'"):
        read_rows(path, ("text", "source"))


# -- splits --------------------------------------------------------------------------------------


def labelled(counts: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"{label} {i}", label) for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_and_a_partition():
    examples = labelled({"a": 50, "b": 30})
    train, validation, test = split_examples(examples, 0.2, 0.1, seed=0)
    assert Counter(label for _, label in test) == {"a": 10, "b": 6}
    assert Counter(label for _, label in validation) == {"a": 5, "b": 3}
    assert Counter(label for _, label in train) == {"a": 35, "b": 21}
    assert sorted(train + validation + test) == sorted(examples)


def test_split_is_deterministic_per_seed():
    examples = labelled({"a": 40, "b": 40})
    assert split_examples(examples, 0.2, 0.1, 3) == split_examples(examples, 0.2, 0.1, 3)
    assert split_examples(examples, 0.2, 0.1, 3) != split_examples(examples, 0.2, 0.1, 4)
    task_a = Task.from_pairs("t", examples, seed=5)
    task_b = Task.from_pairs("t", list(examples), seed=5)
    assert (task_a.train, task_a.validation, task_a.test) == (
        task_b.train,
        task_b.validation,
        task_b.test,
    )


def test_split_keeps_a_training_example_for_rare_labels():
    train, validation, test = split_examples(labelled({"a": 20, "rare": 1}), 0.5, 0.5, seed=0)
    assert ("rare 0", "rare") in train
    assert all(label != "rare" for _, label in validation + test)
