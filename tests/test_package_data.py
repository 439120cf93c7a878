"""What a wheel install ships besides the code: the model-file reference the command line
points to (docs/model-files.md, as package data under dynlearn/bundled/docs/), found through
importlib.resources as an installed package finds it."""

import configparser
import fnmatch
import importlib.resources
from pathlib import Path

from dynlearn.cli import MODEL_FILES_DOC, main, model_files_reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_package_finds_the_model_file_reference():
    doc = importlib.resources.files("dynlearn").joinpath(MODEL_FILES_DOC)
    assert doc.is_file()
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# ") and "[model.params]" in text and "[fit]" in text
    assert Path(model_files_reference()).read_text(encoding="utf-8") == text


def test_the_shipped_copy_is_docs_model_files_md():
    """The package's file is the document itself (a symbolic link to docs/model-files.md,
    which a wheel build copies), so there is one text to keep up to date."""
    shipped = importlib.resources.files("dynlearn").joinpath(MODEL_FILES_DOC)
    assert shipped.read_text(encoding="utf-8") == \
        (ROOT / "docs" / "model-files.md").read_text(encoding="utf-8"), \
        "dynlearn/bundled/docs/model-files.md differs from docs/model-files.md: it should be " \
        "a link to it (ln -sf ../../../docs/model-files.md dynlearn/bundled/docs/)"


def test_setup_cfg_ships_it_as_package_data():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    patterns = cfg["options.package_data"]["dynlearn"].split()
    assert any(fnmatch.fnmatch(MODEL_FILES_DOC, p) for p in patterns)


def test_help_says_where_the_installed_reference_is(capsys):
    assert main(["--help"]) == 0
    assert main(["fit", "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())     # argparse wraps long paths
    where = "".join(model_files_reference().split())
    assert text.count(f"docs/model-files.md(installedwithdynlearnas{where})") == 2
