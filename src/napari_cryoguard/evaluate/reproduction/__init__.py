"""Small-scale reproductions of the papers' tables on simulated subtomograms.

Five parts, each a reduced version of one paper's experiment, trained and evaluated on
data from :func:`napari_cryoguard.simulate.simulate_subtomograms` (5 classes, the
bundled templates):

a. Che et al. 2018 (CB3D) Table 1: accuracy of CB3D,
   DSRF3D-v2 and RB3D vs SNR and tilt range.
b. Liu et al., 3D autoencoding classifier (BMVC 2019) Tables 2-3: the
   autoencoding classifier trained semi-supervised vs the same network's classifier
   branch trained on the labelled samples only, at 5/10/20 % labels; reconstruction
   MSE vs a plain 3D autoencoder.
c. Wu et al., RAT (IEEE BIBM 2019) Tables I-II: natural vs AT
   vs TRADES vs RAT training; adversarial examples of the natural model (Table I) and
   white-box FGSM at eps 0.03/0.06/0.12 (Table II).
d. Sun et al., MIRST-DM (MICCAI 2022) Tables 1 and 3: baseline,
   RST, MIRST, each with and without drop-max, under FGSM/PGD/CW at eps 5/255 (F1 and
   sensitivity).
e. Ma & Liang, IMA (arXiv:2005.09147) Fig. 9: IMA vs AT (and
   natural training) under 100-PGD (CE and margin loss), with margin estimates.

For each comparison the paper claims a direction (A better than B); the report puts our
numbers beside the paper's and states, computed from our numbers only, whether the
direction holds on our data. Nothing is tuned to make a claim hold: the sizes and
settings are fixed in :mod:`.sizes` (``QUICK`` / ``FULL``) and listed in the report.

Resumable per part: trained checkpoints are reused when their marker file matches the
settings, the attack evaluations resume cell by cell
(:func:`napari_cryoguard.evaluate.evaluate`), and a finished part is stored in
``<out>/parts/<part>.json``.

Modules: one per part (:mod:`.part_a` ... :mod:`.part_e`), the papers' numbers as data
(:mod:`.papers`), the sizes (:mod:`.sizes`), what the parts share (:mod:`.common`), the
driver (:mod:`.driver`) and the report (:mod:`.report`). The command line is
``cryoguard reproduce`` (:mod:`napari_cryoguard.cli.reproduce`).
"""

from __future__ import annotations

from napari_cryoguard.evaluate.reproduction.driver import PARTS, reproduce
from napari_cryoguard.evaluate.reproduction.papers import (
    CB3D_T1_MODELS,
    PAPER_CB3D_T1,
    PAPER_MIRST_T1,
    PAPER_MIRST_T3,
    PAPER_SEMI_T2,
    PAPER_SEMI_T3,
    paper_cb3d_best,
)
from napari_cryoguard.evaluate.reproduction.part_a import part_a
from napari_cryoguard.evaluate.reproduction.part_b import part_b
from napari_cryoguard.evaluate.reproduction.part_c import part_c
from napari_cryoguard.evaluate.reproduction.part_d import part_d
from napari_cryoguard.evaluate.reproduction.part_e import part_e
from napari_cryoguard.evaluate.reproduction.sizes import EPS_5_255, FULL, QUICK

__all__ = [
    "CB3D_T1_MODELS",
    "EPS_5_255",
    "FULL",
    "PAPER_CB3D_T1",
    "PAPER_MIRST_T1",
    "PAPER_MIRST_T3",
    "PAPER_SEMI_T2",
    "PAPER_SEMI_T3",
    "PARTS",
    "QUICK",
    "paper_cb3d_best",
    "part_a",
    "part_b",
    "part_c",
    "part_d",
    "part_e",
    "reproduce",
]
