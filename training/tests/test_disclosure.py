"""What researchers see of run errors, logs and configs: no absolute server paths, no traceback frames."""
from training.disclosure import REDACTED_PATH, text_redact, value_redact

TRACEBACK = """The training process exited with code 1.
Traceback (most recent call last):
  File "/srv/app/.venv/lib/python3.11/site-packages/torch/serialization.py", line 9, in load
    raise ValueError(name)
    ^^^^^^^^^^^^^^^^^^^^^^
ValueError: first

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/srv/app/training/runner.py", line 229, in main
    return run_claimed()
OSError: no model at /srv/models/base"""


def test_a_traceback_keeps_only_its_exception_lines_without_paths():
    assert text_redact(TRACEBACK) == (
        "The training process exited with code 1.\nValueError: first\nOSError: no model at " + REDACTED_PATH)


def test_paths_are_redacted_but_ordinary_slashes_are_not():
    text = "step 3 / 10, and/or 1/2, http://host/x, </s>, ~/data/x, /etc/passwd, '/srv/m/'"
    assert text_redact(text) == (
        f"step 3 / 10, and/or 1/2, http://host/x, </s>, {REDACTED_PATH}, {REDACTED_PATH}, '{REDACTED_PATH}'")


def test_config_values_are_redacted_recursively():
    config = {"base_model": "/models/tiny", "epochs": 2, "eos": "</s>", "extra": {"dirs": ["/a/b", "rel/dir"]}}
    assert value_redact(config) == {"base_model": REDACTED_PATH, "epochs": 2, "eos": "</s>",
                                    "extra": {"dirs": [REDACTED_PATH, "rel/dir"]}}
    assert text_redact("") == "" and value_redact(None) is None
