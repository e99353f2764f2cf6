"""The import boundaries in pyproject.toml ([tool.importlinter]) hold: ``lint-imports`` passes on this tree, and
the same contracts fail on a small tree that breaks each of them (so a broken boundary fails the suite)."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    return subprocess.run([*command, "--no-cache", str(cwd / "pyproject.toml")], cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)}, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_contracts_fail_when_annotation_imports_lab_or_training_ml_or_preferences_import_django(tmp_path):
    files = {
        "preferences/__init__.py": "",
        "preferences/tiers.py": "from django.conf import settings\n",  # broken: the ranking rules → Django
        "annotation/__init__.py": "",
        "annotation/tests/__init__.py": "",
        "annotation/tests/test_x.py": "import training.models\nimport lab.arena\n",
        "annotation/quality_views.py": "from lab.active import round_select\n",  # broken: annotation → lab
        "training/__init__.py": "",
        "training/models.py": "import annotation.models\nimport django.db\n",
        "training/tests/__init__.py": "",
        "training/tests/test_x.py": "import lab.arena\n",
        "training/ml/__init__.py": "",
        "training/ml/losses.py": "import torch\nfrom django.conf import settings\n",  # broken: ml → Django
        "lab/__init__.py": "",
        "lab/arena.py": "import training.models\nimport annotation.models\n",
        "lab/active.py": "",
        "webapp/__init__.py": "",
        "webapp/urls.py": "import lab.arena\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "annotation/models.py").write_text("")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 3 broken" in result.stdout, result.stdout
    assert "preferences.tiers -> django" in result.stdout
    assert "annotation.quality_views -> lab.active" in result.stdout
    assert "training.ml.losses -> django" in result.stdout
