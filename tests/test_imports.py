"""Importing a submodule with its package's ``__init__`` skipped (fake packages on the path)."""

import sys

import pytest

from fedsparse.imports import import_skipping_init


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Make fake packages under ``tmp_path``; each is forgotten by ``sys.modules`` afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(name, init, sub):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(init)
        (tmp_path / name / "sub.py").write_text(sub)
        made.append(name)

    yield make
    for module in [m for m in sys.modules if m.split(".")[0] in made]:
        del sys.modules[module]


def test_the_packages_init_does_not_run_and_leaves_no_stand_in(packages):
    packages("heavy", "raise RuntimeError('the whole package was imported')\n", "VALUE = 1\n")
    sub = import_skipping_init("heavy", "heavy.sub")
    assert sub.VALUE == 1 and "heavy" not in sys.modules and sys.modules["heavy.sub"] is sub


def test_a_later_import_of_the_package_runs_its_init_and_shares_the_submodule(packages):
    packages("whole", "LOADED = True\nfrom whole import sub\n", "VALUE = 1\n")
    sub = import_skipping_init("whole", "whole.sub")
    import whole

    assert whole.LOADED and whole.sub is sub
    assert import_skipping_init("whole", "whole.sub") is sub  # loaded: a plain import


def test_a_submodule_that_needs_the_package_gets_the_whole_import(packages):
    packages("needy", "WHOLE = True\n", "from needy import WHOLE\n")
    sub = import_skipping_init("needy", "needy.sub")
    assert sub.WHOLE and sys.modules["needy"].WHOLE


def test_a_missing_package_is_pythons_own_error():
    with pytest.raises(ModuleNotFoundError):
        import_skipping_init("no_such_package_here", "no_such_package_here.sub")
