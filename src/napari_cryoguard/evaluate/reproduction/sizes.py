"""The sizes and settings of the reproduction: :data:`FULL` (the papers' cube, reduced
sample counts and epochs) and :data:`QUICK` (a smoke run of minutes). They are part of
the resume keys of ``<out>/parts/*.json``: a change recomputes the parts it touches."""

from __future__ import annotations

from typing import Any

EPS_5_255 = 5.0 / 255.0


def _widths(conv: tuple[int, ...], stem: int, fc: int, code: int, dropout: float,
            block_dropout: float, dsrf_fc: int | None = None) -> dict[str, dict[str, Any]]:
    """Per architecture the model parameters of one size: ``conv`` the first two conv
    widths (the later ones double), ``stem`` RB3D's stem width (blocks as ``conv``,
    bottlenecks half), ``fc`` the FC widths, ``code`` the autoencoder's code size."""
    a, b = conv
    return {
        "cb3d": {"conv_widths": (a, a, b, b, b), "fc_widths": (fc, fc), "dropout": dropout},
        "dsrf3d_v2": {"conv_widths": (a, b, b), "fc_widths": (dsrf_fc or fc,) * 2,
                      "dropout": dropout},
        # the authors' block (variant "paper": concatenation, no batch norm or strides)
        "rb3d": {"variant": "paper", "stem_width": stem, "block_widths": (a, b, b, b),
                 "bottleneck_widths": (a // 2, b // 2, b // 2, b // 2), "fc_widths": (fc, fc),
                 "dropout": dropout, "block_dropout": block_dropout},
        "autoencoder": {"conv_widths": (a, a), "code_size": code, "classifier_widths": (code,)},
    }


#: narrower than the papers, with the authors' in-block dropout 0.7 in RB3D
_SMALL_WIDTHS = _widths((8, 16), stem=8, fc=64, code=32, dropout=0.2, block_dropout=0.7)
#: the models' tiny presets (napari_cryoguard.models.tiny_params) without dropout: with
#: 16-unit FC layers, 50 % dropout does not train in a few epochs
_TINY_WIDTHS = _widths((4, 8), stem=4, fc=16, code=8, dropout=0.0, block_dropout=0.0,
                       dsrf_fc=32)

#: Full reproduction at the papers' cube (28^3) near their voxel size (10 Å; the CB3D
#: paper: 9.2 Å). Natural models use Adam at lr 5e-4 (the collapse at 16^3 with lr 2e-3
#: is what the sanity check flags); defended models start from the natural model and
#: train ``robust_epochs``; part (a) uses ``n_train_per_class_a`` training samples per
#: class and ``epochs_a`` (36 models). Timed pieces on one core of a shared machine: the
#: natural CB3D of parts c-e (2000 samples, 20 epochs) 204 s, test accuracy 0.93
#: (95 % interval 0.90-0.95, n = 300); one condition of part (a) (SNR 0.1, ±60°) 253 s,
#: CB3D 0.70, DSRF3D-v2 0.71, RB3D 0.58 (n = 300, chance 0.2). Estimated whole run:
#: about 2.5 h on one thread, less with ``--threads 2`` (not run as a whole yet).
FULL: dict[str, Any] = {
    "cube": 28,
    "voxel_size": 10.0,
    "n_train_per_class": 400,
    "n_train_per_class_a": 150,
    "n_test_per_class": 60,
    "epochs": 20,
    "epochs_a": 15,
    "robust_epochs": 5,
    "lr": 5e-4,
    "lr_by_arch": {"cb3d": 5e-4, "dsrf3d_v2": 5e-4, "rb3d": 5e-4, "autoencoder": 1e-3},
    "batch_size": 16,
    "widths": _SMALL_WIDTHS,
    "snrs": [0.1, 0.05, 0.03, 0.01],
    "tilts": [60.0, 50.0, 40.0],
    "snr_robust": 0.5,
    "snr_semi": 0.3,
    "pgd_train_steps": 5,
    "ima_n_pgd": 10,
    "ima_n_binary": 4,
    "ima_adv_eps": [0.01, 0.03],
    "eval_samples": 200,
    "pgd_eval_steps": 50,
    "pgd_eval_samples": 100,
    "mirst_pgd_steps": 20,
    "mirst_cw_steps": 10,
    "deepfool_steps": 50,
    "cw_steps": 30,
    "cw_search": 3,
    "noise_steps": 20,
    "margin_samples": 64,
}

#: Quick smoke reproduction (a few minutes on 2 CPU cores; numbers are not meaningful).
QUICK: dict[str, Any] = {
    "cube": 16,
    "voxel_size": 14.0,
    "n_train_per_class": 24,
    "n_test_per_class": 8,
    "epochs": 4,
    "lr": 1e-2,
    "batch_size": 16,
    "widths": _TINY_WIDTHS,
    "snrs": [0.5, 0.05],
    "tilts": [60.0, 40.0],
    "snr_robust": 0.5,
    "snr_semi": 0.3,
    "pgd_train_steps": 3,
    "ima_n_pgd": 4,
    "ima_adv_eps": [0.03],
    "eval_samples": 40,
    "pgd_eval_steps": 10,
    "pgd_eval_samples": 24,
    "mirst_pgd_steps": 5,
    "mirst_cw_steps": 3,
    "deepfool_steps": 10,
    "cw_steps": 10,
    "cw_search": 2,
    "noise_steps": 5,
    "margin_samples": 12,
}
