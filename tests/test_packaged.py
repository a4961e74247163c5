"""The packaged recipes and studies: found by name from any directory, shipped in the wheel, each
one readable and described."""
import tomllib
from pathlib import Path

import pytest

from textvae.errors import TextVAEError
from textvae.packaged import FOLDERS, SUMMARY_CHARS, find_yaml, packaged_folder, packaged_names, summary

PACKAGE = Path(__file__).resolve().parent.parent / "textvae"


@pytest.mark.parametrize("spelling", ["ptb/vae", "ptb/vae.yaml", "recipes/ptb/vae.yaml", "./recipes/ptb/vae.yaml",
                                      "../recipes/ptb/vae.yaml"])
def test_every_spelling_of_a_packaged_recipe_finds_it_from_anywhere(spelling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_yaml("recipe", spelling) == PACKAGE / "recipes" / "ptb" / "vae.yaml"


def test_a_file_of_that_name_wins_over_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes" / "ptb").mkdir(parents=True)
    (tmp_path / "recipes" / "ptb" / "vae.yaml").write_text("name: mine\n")
    assert find_yaml("recipe", "recipes/ptb/vae.yaml") == Path("recipes/ptb/vae.yaml")
    assert find_yaml("recipe", "ptb/vae") == PACKAGE / "recipes" / "ptb" / "vae.yaml"


@pytest.mark.parametrize("kind,name", [("recipe", "ptb/nope"), ("recipe", "/abs/recipes/ptb/vae.yaml"),
                                       ("study", "ptb_main/x"), ("recipe", "ptb"), ("study", "recipes/ptb/vae")])
def test_an_unknown_name_is_an_error_listing_the_packaged_ones(kind, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TextVAEError, match=f"no such {kind}: .*packaged: .*{packaged_names(kind)[0]}"):
        find_yaml(kind, name)


def test_only_a_leading_parent_folder_is_dropped(tmp_path, monkeypatch):
    """``../recipes/ptb/vae.yaml`` (a study's base, copied out) names the packaged recipe; a ``..``
    further in is a path of its own, not a packaged name."""
    monkeypatch.chdir(tmp_path)
    assert find_yaml("recipe", "../../recipes/ptb/vae.yaml") == PACKAGE / "recipes" / "ptb" / "vae.yaml"
    with pytest.raises(TextVAEError, match="no such recipe"):
        find_yaml("recipe", "recipes/yelp/../ptb/lm.yaml")


def test_a_local_file_shadowing_a_packaged_name_is_said(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "vae.yaml").write_text("name: mine\n")
    with caplog.at_level("INFO", logger="textvae"):
        assert find_yaml("recipe", "ptb/vae.yaml") == Path("ptb/vae.yaml")
    assert "not the packaged one" in caplog.text


def test_the_wheel_ships_every_recipe_and_study():
    """pyproject's package-data patterns match every YAML under textvae/ (a non-editable install has
    nothing else)."""
    patterns = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pattern in patterns["textvae"] for p in PACKAGE.glob(pattern)}
    assert set(PACKAGE.rglob("*.yaml")) <= shipped
    assert {p.parent.name for p in shipped if p.suffix == ".yaml"} >= {"recipes", "studies", "ptb"}


@pytest.mark.parametrize("kind,name", [(k, n) for k in FOLDERS for n in packaged_names(k)])
def test_each_packaged_file_says_what_it_is(kind, name):
    text = summary(find_yaml(kind, name))
    assert text.endswith((".", " ...")) and 10 < len(text) <= SUMMARY_CHARS + 4, text


def test_summary_takes_the_first_sentence_of_the_opening_comment(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("# Free bits (Kingma et al. 2016), e.g. the\n# per-dimension floor. More here.\nname: r\n# late\n")
    assert summary(path) == "Free bits (Kingma et al. 2016), e.g. the per-dimension floor."
    path.write_text("# " + "word, " * 50 + "end.\n")
    assert summary(path) == "word, " * 32 + "word ..."
    path.write_text("# " + "word " * 50 + "end.\n")
    assert summary(path) == ("word " * 40).strip() + " ..."
    path.write_text("name: r\n# a comment after a key is not the summary.\n")
    assert summary(path) == ""


def test_recipes_and_studies_live_in_the_package_only():
    """One copy of each: the checkout has no top-level recipes/ or studies/ beside the packaged ones."""
    assert not (PACKAGE.parent / "recipes").exists() and not (PACKAGE.parent / "studies").exists()
    assert packaged_folder("recipe") == PACKAGE / "recipes"


def test_train_and_study_take_packaged_names(tmp_path, monkeypatch, capsys):
    from textvae.study.spec import load_study
    from textvae.tasks.runconfig import parse_run_config

    monkeypatch.chdir(tmp_path)
    cfg, _ = parse_run_config(["ptb/lm", "--name", "x"])
    assert cfg.model.latent_dim == 0 and cfg.name == "x"
    study = load_study("ptb_reproduce")
    assert study.path == PACKAGE / "studies" / "ptb_reproduce.yaml"
    assert study.base == PACKAGE / "recipes" / "ptb" / "vae.yaml"


def test_a_copied_study_file_finds_its_base_recipe_in_the_package(tmp_path, monkeypatch):
    from textvae.study.spec import load_study

    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "mine.yaml"
    copy.write_text((PACKAGE / "studies" / "cpu_smoke.yaml").read_text().replace(
        "base: default", "base: ../recipes/synthetic.yaml"))
    assert load_study(str(copy)).base == PACKAGE / "recipes" / "synthetic.yaml"
    copy.write_text("base: ../recipes/ptb/nope.yaml\nvariants: {a: {}}\n")
    with pytest.raises(TextVAEError, match="base recipe '../recipes/ptb/nope.yaml' not found.*ptb/vae"):
        load_study(str(copy))


def test_list_shows_the_packaged_recipes_and_one_whole(capsys):
    from textvae.cli import main

    main(["list", "recipe"])
    listed = capsys.readouterr().out
    assert all(f"\n{name}: " in listed for name in packaged_names("recipe"))
    main(["list", "studies", "cpu_smoke"])
    assert capsys.readouterr().out.endswith((PACKAGE / "studies" / "cpu_smoke.yaml").read_text())
    main(["list"])
    assert "\nstudy: " + ", ".join(packaged_names("study")) in capsys.readouterr().out
