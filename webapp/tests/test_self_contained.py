"""A clone with nothing beside it must work: no source file may reach outside the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "var", "staticfiles", "__pycache__", ".pytest_cache", "node_modules"}
SUFFIXES = {".py", ".sh", ".toml", ".cfg", ".ini", ".yml", ".yaml"}
# "../" + "shared", or a path joined with a "shared" part (how the hh-rlhf sample used to be found)
OUTSIDE = re.compile(r"\.\./" + r"shared|[\"']" + r"shared[\"']\s*/")
HH_SAMPLE = ROOT / "data" / "hh_rlhf" / "hh_rlhf_harmless_1k.jsonl"


def source_files():
    stack = [ROOT]
    while stack:
        folder = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                if entry.name not in SKIP_DIRS and not entry.is_symlink():
                    stack.append(entry)
            elif entry.suffix in SUFFIXES:
                yield entry


def test_the_pattern_catches_both_ways_of_reaching_the_folder_beside_the_clone():
    assert OUTSIDE.search('open("../' + 'shared/data/x.jsonl")')
    assert OUTSIDE.search("Path(__file__).parents[2] / " + '"sha' + 'red" / "data"')
    assert not OUTSIDE.search("@shared_task(name='x')")


def test_no_source_file_refers_to_a_folder_beside_the_repository():
    offenders = []
    for path in source_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "files that read outside the repository:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", ["hh_rlhf_harmless_1k.jsonl", "hh_rlhf_LICENSE", "README.md"])
def test_the_hh_rlhf_sample_ships_with_its_licence_and_provenance(name):
    assert (HH_SAMPLE.parent / name).is_file()
    assert sum(1 for _ in HH_SAMPLE.open(encoding="utf-8")) == 1000
