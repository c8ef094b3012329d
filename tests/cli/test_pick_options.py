"""``cryoguard pick``'s DoG options are generated from DoGParams (declared once)."""

from __future__ import annotations

import pytest

from napari_cryoguard.cli import build_parser, main
from napari_cryoguard.cli._options import options_from_args
from napari_cryoguard.params import fields_of
from napari_cryoguard.picking import DoGParams


def _pick_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, sub.choices["pick"]


def test_every_dog_parameter_is_an_option_with_its_default_in_the_help():
    _, pick = _pick_parser()
    options = {s: a for a in pick._actions for s in a.option_strings}
    for f in fields_of(DoGParams):
        assert f.option in options, f.option
        if f.default is not None:
            assert f"(default: {f.default})" in options[f.option].help, f.name
        if f.choices:
            assert tuple(options[f.option].choices) == f.choices
    assert options["--polarity"].choices == ["bright", "dark", "auto"]


def test_given_options_reach_dogparams_and_the_rest_keep_its_defaults():
    parser, _ = _pick_parser()
    args = parser.parse_args(["pick", "t.mrc", "--out", "p.star", "--sigma1", "5",
                              "--polarity", "dark", "--max-picks", "3"])
    given = options_from_args(args, DoGParams)
    assert given == {"sigma1": 5.0, "polarity": "dark", "max_picks": 3}
    params = DoGParams(**given)
    assert params.k == DoGParams().k and params.threshold == DoGParams().threshold


def test_a_bad_value_is_one_error_line(tmp_path, capsys):
    code = main(["pick", str(tmp_path / "t.mrc"), "--out", str(tmp_path / "p.star"),
                 "--k", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["cryoguard pick: error: k must be > 1, got 0.5"]


@pytest.mark.parametrize("option", ["--sigma1", "--threshold"])
def test_a_value_that_is_not_a_number_is_refused_by_argparse(option, capsys):
    parser, _ = _pick_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["pick", "t.mrc", "--out", "p.star", option, "seven"])
    assert "invalid float value" in capsys.readouterr().err
