""""Did you mean" for the three things users mistype: config keys (crnn_ray/config.py Checker.mapping), zoo ids
(crnn_ray/zoo/registry.py) and command-line flags (crnn_ray/io.py ArgumentParser.error). Each stays one line,
exit status 2, and says nothing when no known name is close."""

from __future__ import annotations

import pytest

from conftest import tiny_config, write_yaml
from crnn_ray.config import Checker, suggest_key
from crnn_ray.io import CliError, close_match
from crnn_ray.sweep.config import load_config
from crnn_ray.zoo.registry import resolve_variants


def _err(capsys, main, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


# ---------------------------------------------------------------------------------------------- config keys
@pytest.mark.parametrize("section,key,hint", [
    ("training", "learnig_rate", "lr"),          # a typo of another library's word for it
    ("training", "learning_rate", "lr"),
    ("training", "epoch", "epochs"),             # a plain typo
    ("training", "batch-size", "batch_size"),    # another spelling
    ("data", "lookbak", "lookback"),
])
def test_unknown_config_key_names_the_close_one(tmp_path, section, key, hint):
    doc = tiny_config()
    doc.setdefault(section, {})[key] = 1
    with pytest.raises(CliError) as err:
        load_config(write_yaml(tmp_path / "bad.yaml", doc))
    text = str(err.value)
    assert text.startswith(f"bad.yaml: {section}.{key}: unknown key (did you mean '{hint}'?; allowed: ")
    assert "\n" not in text


def test_no_hint_when_nothing_is_close_and_synonyms_only_where_their_key_is_allowed():
    c = Checker("x.yaml")
    with pytest.raises(CliError, match=r"^x\.yaml: s\.horizon: unknown key \(allowed: train, valid\)$"):
        c.mapping({"horizon": 1}, "s", ("train", "valid"))
    assert suggest_key("learning_rate", ("epochs", "seed")) is None  # `lr` is not a key here
    assert suggest_key("learning_rate", ("lr", "epochs")) == "lr"


def test_score_config_key_hint(tmp_path, capsys):
    from crnn_ray.score.__main__ import main as score_main

    cfg = tmp_path / "score.yaml"
    cfg.write_text("topk: 3\n")
    err = _err(capsys, score_main, ["--experiment", "x", "--out", "y", "--config", str(cfg)])
    assert err.startswith("error: score.yaml: topk: unknown key (did you mean 'top_k'?; allowed: ")


# ------------------------------------------------------------------------------------------------- zoo ids
def test_unknown_zoo_id_names_the_close_one(tmp_path):
    with pytest.raises(CliError, match=r"^unknown zoo id 'convgru/m1' \(did you mean 'convgru/m01'\?; see "):
        resolve_variants(["convgru/m1"])
    with pytest.raises(CliError, match=r"did you mean 'convlstm/m3'\?"):  # that family is not zero-padded
        resolve_variants(["convlstm/m03"])
    with pytest.raises(CliError, match=r"^unknown zoo id 'nosuch' \(see `python -m crnn_ray\.zoo list`\)$"):
        resolve_variants(["nosuch"])
    doc = tiny_config(variants=["convgru/m1"])
    with pytest.raises(CliError, match=r"^bad\.yaml: variants\[0\]: unknown zoo id 'convgru/m1' \(did you mean "
                                       r"'convgru/m01'\?"):
        load_config(write_yaml(tmp_path / "bad.yaml", doc))


def test_zoo_cli_unknown_id(capsys):
    from crnn_ray.zoo.__main__ import main as zoo_main

    err = _err(capsys, zoo_main, ["show", "convgru/m1"])
    assert err == "error: unknown zoo id 'convgru/m1' (did you mean 'convgru/m01'?; see `python -m crnn_ray.zoo list`)"


# --------------------------------------------------------------------------------------------------- flags
def test_unknown_flag_names_the_close_one(capsys):
    from crnn_ray.score.__main__ import main as score_main
    from crnn_ray.sweep.__main__ import main as sweep_main

    err = _err(capsys, score_main, ["--experiment", "x", "--out", "y", "--top_k", "3"])
    assert err == ("error: python -m crnn_ray.score: unrecognized arguments: --top_k 3 "
                   "(did you mean --top-k?; see --help)")
    err = _err(capsys, score_main, ["--experiment", "x", "--out", "y", "--top_k=3", "--methd", "mean"])
    assert err.endswith("(did you mean --top-k for --top_k, --method for --methd?; see --help)")
    err = _err(capsys, sweep_main, ["--config", "x.yaml", "--overwite"])
    assert err == ("error: python -m crnn_ray.sweep: unrecognized arguments: --overwite "
                   "(did you mean --overwrite?; see --help)")
    err = _err(capsys, sweep_main, ["--config", "x.yaml", "--zzz"])
    assert err == "error: python -m crnn_ray.sweep: unrecognized arguments: --zzz (see --help)"


def test_unknown_flag_of_a_subcommand_and_of_evaluate(capsys):
    from crnn_ray.evaluate import main as evaluate_main
    from crnn_ray.zoo.__main__ import main as zoo_main

    err = _err(capsys, zoo_main, ["check", "convgru/m01", "--look-back", "8"])
    assert "unrecognized arguments: --look-back 8 (did you mean --lookback?; see --help)" in err
    err = _err(capsys, evaluate_main, ["--signals", "s", "--labels", "l", "--json", "j.json",
                                                 "--signal_col", "x"])
    assert "(did you mean --signal-col?; see --help)" in err


def test_close_match_normalises_before_guessing():
    assert close_match("--top_k", ["--top-k", "--topk-x"], lambda s: s.replace("_", "-")) == "--top-k"
    assert close_match("zzz", ["alpha", "beta"]) is None
