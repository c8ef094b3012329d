"""The model registry: names, parameter dataclasses, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from napari_cryoguard import CryoGuardError
from napari_cryoguard.models import (
    CB3DParams,
    CryoGuardModel,
    available_models,
    build_model,
    model_params_class,
    register_model,
    tiny_params,
)
from napari_cryoguard.models import registry as registry_module


def test_unknown_name_lists_known_models():
    with pytest.raises(CryoGuardError) as err:
        build_model("resnet50", 2)
    for name in ("cb3d", "dsrf3d_v2", "rb3d", "autoencoder"):
        assert name in str(err.value)


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(CryoGuardError) as err:
        build_model("cb3d", 2, 28, widths=(1, 2))
    msg = str(err.value)
    assert "widths" in msg
    for field in dataclasses.fields(CB3DParams):
        assert field.name in msg


@pytest.mark.parametrize(
    "bad",
    [
        {"conv_widths": (4, 4)},
        {"fc_widths": (0, 8)},
        {"dropout": 1.0},
        {"conv_widths": (4, 4, 8, 8, -1)},
    ],
)
def test_invalid_parameter_values_are_clear_errors(bad):
    with pytest.raises(CryoGuardError, match="cb3d"):
        build_model("cb3d", 2, 28, **{**tiny_params("cb3d"), **bad})


def test_model_records_its_recipe_and_can_be_rebuilt_from_it():
    model = build_model("rb3d", 4, 32, drop_max=True, **tiny_params("rb3d"))
    assert model.arch_name == "rb3d"
    assert model.num_classes == 4
    assert model.cube == 32
    params = model.arch_params
    assert isinstance(params, dict)
    assert params["drop_max"] is True
    assert params["block_widths"] == (4, 8, 8, 8)
    # JSON turns tuples into lists; the registry turns them back
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    twin = build_model(model.arch_name, model.num_classes, model.cube, **as_json)
    assert twin.arch_params == params
    twin.load_state_dict(model.state_dict())  # same layout, strict


def test_names_are_forgiving_about_dashes_and_case():
    model = build_model("DSRF3D-v2", 2, 16, **tiny_params("dsrf3d_v2"))
    assert model.arch_name == "dsrf3d_v2"
    assert model_params_class("dsrf3d-v2").__name__ == "DSRF3DV2Params"


def test_register_a_new_model():
    @dataclasses.dataclass
    class LinearParams:
        hidden: int = 3
        drop_max: bool = False

    try:

        @register_model("test_linear", LinearParams)
        class Linear(CryoGuardModel):
            def __init__(self, num_classes, cube=28, params=None):
                super().__init__(num_classes, cube, params or LinearParams())
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(cube**3, num_classes))

            def forward(self, x):
                return self.net(x)

        assert "test_linear" in available_models()
        model = build_model("test_linear", 3, 16, hidden=5)
        assert isinstance(model, Linear)
        assert model.arch_params == {"hidden": 5, "drop_max": False}
        assert model(torch.zeros(2, 1, 16, 16, 16)).shape == (2, 3)
        with pytest.raises(CryoGuardError):
            register_model("test_linear", LinearParams)(type("Other", (Linear,), {}))
    finally:
        registry_module._REGISTRY.pop("test_linear", None)
    assert "test_linear" not in available_models()


def test_register_requires_a_dataclass():
    with pytest.raises(TypeError):
        register_model("nope", dict)


def test_a_new_model_declares_its_sizes_on_its_class():
    from napari_cryoguard.models.registry import SIZE_PRESETS, size_preset

    @dataclasses.dataclass
    class WideParams:
        width: int = 64
        drop_max: bool = False

    try:

        @register_model("test_wide", WideParams)
        class Wide(CryoGuardModel):
            size_presets = {"tiny (quick check)": {"width": 2}, "small (CPU-friendly)": {"width": 8}}

            def __init__(self, num_classes, cube=28, params=None):
                super().__init__(num_classes, cube, params or WideParams())
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(cube**3, self.params.width),
                                         nn.Linear(self.params.width, num_classes))

            def forward(self, x):
                return self.net(x)

        assert tiny_params("test-wide") == {"width": 2}
        assert size_preset("small (CPU-friendly)", "test_wide") == {"width": 8}
        assert size_preset("paper", "test_wide") == {}
        for preset in SIZE_PRESETS:
            build_model("test_wide", 2, 16, **size_preset(preset, "test_wide"))
        assert build_model("test_wide", 2, 16, **tiny_params("test_wide")).params.width == 2
    finally:
        registry_module._REGISTRY.pop("test_wide", None)
    with pytest.raises(CryoGuardError, match="tiny preset"):
        register_model("test_plain", WideParams)(type("Plain", (CryoGuardModel,), {}))
        try:
            tiny_params("test_plain")
        finally:
            registry_module._REGISTRY.pop("test_plain", None)
