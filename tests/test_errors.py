"""Tests of facefinder_cli.errors: messages whose hints each caller words as its own."""

from __future__ import annotations

import pickle

import pytest

from facefinder_cli.errors import Hint, InputError, Note, worded


def flag(hint):
    return f"--{hint.option} {hint.value}"


def test_a_note_is_its_text_in_the_library_s_words():
    note = Note("read s.npy as (K, H, W); pass ", Hint("layout", "hwk"), " if not")
    assert isinstance(note, str)
    assert note == "read s.npy as (K, H, W); pass layout='hwk' if not"
    assert note.startswith("read s.npy") and note.hints == (Hint("layout", "hwk"),)
    assert worded(note, flag) == "read s.npy as (K, H, W); pass --layout hwk if not"
    assert worded(note) == note


def test_an_error_keeps_its_hints_and_is_one_line_as_text():
    err = InputError("x.npy: too large; pack with ", Hint("dtype", "float64"))
    assert str(err) == "x.npy: too large; pack with dtype='float64'"
    assert err.hints == (Hint("dtype", "float64"),)
    assert worded(err, flag) == "x.npy: too large; pack with --dtype float64"
    with pytest.raises(ValueError, match="too large"):  # still a ValueError
        raise err


def test_text_that_looks_like_a_format_string_is_kept():
    note = Note("{0} and {hint} in a path: ", Hint("truth", "a{1}/t.npz", command="fit"))
    assert worded(note, lambda h: f"{h.command} --{h.option} {h.value}") == (
        "{0} and {hint} in a path: fit --truth a{1}/t.npz"
    )


def test_messages_without_hints_and_other_objects():
    assert worded(InputError("plain"), flag) == "plain"
    assert InputError("plain").hints == ()
    assert worded("a str", flag) == "a str"
    assert worded(ValueError("v"), flag) == "v"


def test_notes_and_errors_survive_pickling():
    note = Note("pass ", Hint("layout", "khw"), " maybe")
    back = pickle.loads(pickle.dumps(note))
    assert back == note and back.hints == note.hints
    err = pickle.loads(pickle.dumps(InputError("e: ", Hint("dtype", "float64"))))
    assert str(err) == "e: dtype='float64'" and err.hints == (Hint("dtype", "float64"),)


def test_outputs_and_runs_name_settings_as_hints_the_command_line_words_as_flags(tmp_path):
    from facefinder_cli import outputs, runs
    from facefinder_cli.cli.options import said
    from facefinder_cli.errors import InputError

    (tmp_path / "f.txt").write_text("mine")
    with pytest.raises(InputError) as err:
        outputs.check_file_target(str(tmp_path / "f.txt"), False)
    assert str(err.value).endswith("file exists; pass overwrite=True to replace it")
    assert said(err.value).endswith("file exists; pass --overwrite to replace it")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runs.CHECKPOINT).write_bytes(b"")
    with pytest.raises(InputError) as err:
        runs.load_run(tmp_path / "run")
    assert said(err.value).endswith(f"`facefinder fit --resume {tmp_path / 'run'}`")
    assert "resume=" in str(err.value) and "--" not in str(err.value)
